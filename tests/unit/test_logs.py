"""Logging never stops a process (LogStream), and files sqsd writes are never reached
through a symbolic link (open_for_append)."""

import errno
import fcntl
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from sqsd import logs

F_SETPIPE_SZ = 1031


def test_a_pipe_without_reader_is_given_up_without_raising() -> None:
    reader, writer = os.pipe()
    stream = logs.LogStream(writer)
    os.close(reader)

    for _ in range(3):
        assert stream.write("a line\n") == len("a line\n")

    assert stream.gone and stream.dropped == 3
    os.close(writer)


def test_a_closed_journal_socket_is_given_up_without_raising() -> None:
    ours, journal = socket.socketpair()
    stream = logs.LogStream(ours.fileno())
    journal.close()

    stream.write("a line\n")

    assert stream.gone
    ours.close()


def test_a_full_pipe_drops_lines_at_once_then_says_how_many() -> None:
    reader, writer = os.pipe()
    fcntl.fcntl(writer, F_SETPIPE_SZ, 4096)
    stream = logs.LogStream(writer)
    started = time.monotonic()
    for n in range(200):
        stream.write(f"line {n} " + "x" * 100 + "\n")
    assert time.monotonic() - started < 1, "writing to a full pipe blocked"
    assert stream.dropped > 0 and not stream.gone

    assert os.read(reader, 65536).startswith(b"line 0 ")  # the reader catches up
    stream.write("after\n")
    after = os.read(reader, 65536)

    assert b"log lines dropped" in after and after.endswith(b"after\n")
    os.close(reader)
    os.close(writer)


def test_a_closed_descriptor_is_given_up() -> None:
    reader, writer = os.pipe()
    os.close(reader)
    os.close(writer)
    stream = logs.LogStream(writer)
    stream.write("nowhere\n")
    assert stream.gone


def test_a_character_device_is_allowed() -> None:
    os.close(logs.open_for_append("/dev/null"))


def test_files_are_created_0640_and_appended(tmp_path: Path) -> None:
    path = tmp_path / "failed.jsonl"
    umask = os.umask(0o022)
    try:
        for text in (b"one\n", b"two\n"):
            fd = logs.open_for_append(str(path))
            os.write(fd, text)
            os.close(fd)
    finally:
        os.umask(umask)
    assert path.read_bytes() == b"one\ntwo\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.parametrize("kind", ["symlink", "fifo", "hard link", "directory"])
def test_anything_but_a_plain_file_of_its_own_is_refused(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "target"
    target.write_text("precious")
    path = tmp_path / "failed.jsonl"
    if kind == "symlink":
        path.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "hard link":
        os.link(target, path)
    else:
        path.mkdir()

    with pytest.raises(OSError) as raised:
        logs.open_for_append(str(path))

    assert raised.value.errno in (errno.ELOOP, errno.EINVAL, errno.EMLINK, errno.ENXIO,
                                  errno.EISDIR)
    assert target.read_text() == "precious"
