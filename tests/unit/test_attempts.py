"""The attempts table: handler starts per message id, in a file that outlives the master."""

from __future__ import annotations

import os
import stat
import uuid

import pytest

from sqsd.attempts import AttemptTable, default_path


def ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def test_counts_starts_per_message_and_forgets_finished_ones():
    table = AttemptTable()
    first, second = ids(2)
    assert table.start(first) == 1
    assert table.start(first) == 2
    assert table.start(second) == 1
    assert (table.starts(first), table.starts(second), table.starts("unknown")) == (2, 1, 0)
    table.forget(first)
    assert (table.starts(first), table.starts(second)) == (0, 1)
    assert table.start(first) == 1


def test_a_finished_message_keeps_its_starts_and_frees_its_slot():
    table = AttemptTable(slots=1)
    done, other = ids(2)
    table.start(done)
    assert not table.finished(done)
    table.finish(done)
    table.finish("unknown")  # nothing to mark
    assert (table.finished(done), table.starts(done), table.finished("unknown")) == (True, 1, False)
    assert table.start(other) == 1  # the one slot is taken over, no eviction of a live entry
    assert (table.finished(done), table.starts(done)) == (False, 0)


def test_long_empty_and_odd_ids_are_counted_apart():
    table = AttemptTable()
    long_a, long_b = "a" * 100 + "1", "a" * 100 + "2"
    for message_id in (long_a, "", "\0x", "\udcff", "\xff" * 40):
        table.start(message_id)
    table.start(long_a)
    assert table.starts(long_a) == 2
    assert table.starts(long_b) == 0
    assert table.starts("") == table.starts("\0x") == table.starts("\udcff") == 1


def test_starts_survive_closing_and_reopening_the_file(tmp_path):
    path = str(tmp_path / "attempts")
    message_id, other = ids(2)
    table = AttemptTable(path)
    table.start(message_id)
    table.start(message_id)
    table.start(other)
    table.forget(other)
    table.close()

    reopened = AttemptTable.open(path)
    assert reopened.fd >= 0
    assert (reopened.starts(message_id), reopened.starts(other)) == (2, 0)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("damage", ["short", "long", "bad header"])
def test_a_file_of_the_wrong_size_or_with_a_bad_header_is_recreated_empty(tmp_path, damage):
    path = str(tmp_path / "attempts")
    message_id = str(uuid.uuid4())
    table = AttemptTable(path, slots=64)
    table.start(message_id)
    size = table.size
    table.close()
    with open(path, "r+b") as fh:
        if damage == "short":
            fh.truncate(size - 1)
        elif damage == "long":
            fh.truncate(size + 4096)
        else:
            fh.write(b"NOTSQSD!")

    table = AttemptTable(path, slots=64)
    assert os.path.getsize(path) == size
    assert table.starts(message_id) == 0
    assert table.start(message_id) == 1


def test_another_slot_count_recreates_the_file(tmp_path):
    path = str(tmp_path / "attempts")
    message_id = str(uuid.uuid4())
    AttemptTable(path, slots=64).start(message_id)
    table = AttemptTable(path, slots=128)
    assert table.starts(message_id) == 0
    assert os.path.getsize(path) == table.size


def test_a_symbolic_link_is_refused_and_open_falls_back_to_memory(tmp_path, caplog):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    link = tmp_path / "attempts"
    link.symlink_to(target)

    with pytest.raises(OSError):
        AttemptTable(str(link))
    table = AttemptTable.open(str(link))

    assert table.fd == -1  # anonymous memory
    message_id = str(uuid.uuid4())
    assert table.start(message_id) == 1
    assert target.read_bytes() == b"precious"


def test_a_directory_or_a_file_with_two_links_is_refused(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError):
        AttemptTable(str(tmp_path / "dir"))
    first = tmp_path / "first"
    first.write_bytes(b"")
    os.link(first, tmp_path / "second")
    with pytest.raises(OSError, match="links"):
        AttemptTable(str(first))


def test_an_unwritable_directory_falls_back_to_memory(tmp_path):
    table = AttemptTable.open(str(tmp_path / "missing" / "attempts"))
    assert table.fd == -1
    assert table.start("m") == 1


def test_a_full_table_evicts_the_oldest_entry_and_never_fails():
    table = AttemptTable(slots=8)
    messages = ids(20)
    for message_id in messages:
        assert table.start(message_id) == 1
    counts = [table.starts(message_id) for message_id in messages]
    assert sum(counts) == 8  # eight slots, each holding one recent message
    assert table.starts(messages[-1]) == 1  # the newest start is always recorded
    assert table.start(messages[-1]) == 2


def test_the_table_lives_beside_the_socket_and_is_named_after_it():
    assert default_path("/run/sqsd/sqsd.sock") == "/run/sqsd/sqsd.attempts"
    assert default_path("/run/sqsd/orders.sock") == "/run/sqsd/orders.attempts"
    assert default_path("/tmp/x/control") == "/tmp/x/control.attempts"


def test_processes_sharing_the_file_count_every_start(tmp_path):
    path = str(tmp_path / "attempts")
    shared, *own = ids(5)
    table = AttemptTable(path)
    rounds = 200
    pids = []
    for message_id in own:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's coverage is not collected
            code = 1
            try:
                child = AttemptTable(path)  # its own mapping, as after a master restart
                for _ in range(rounds):
                    child.start(message_id)
                    table.start(shared)  # the inherited mapping, as in a worker
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]

    assert codes == [0] * len(own)
    for pid in pids:  # every child reaped: none is left
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    assert [table.starts(message_id) for message_id in own] == [rounds] * len(own)
    assert table.starts(shared) == rounds * len(own)


def test_entries_written_by_a_forked_child_are_seen_by_the_parent_in_memory():
    table = AttemptTable()
    message_id = str(uuid.uuid4())
    pid = os.fork()
    if pid == 0:  # pragma: no cover
        table.start(message_id)
        os._exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert table.starts(message_id) == 1
