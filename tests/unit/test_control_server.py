import contextlib
import grp
import json
import os
import selectors
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sqsd.control.server import (
    Connection,
    ControlServer,
    SocketInUse,
    SocketPathError,
    open_listener,
)
from sqsd_client import protocol

BIG = "x" * 100_000


class Harness:
    """A ControlServer on a real socket, its selector stepped by the test itself."""

    def __init__(self, path: Path, **options: Any) -> None:
        self.path = path
        listener, created = open_listener(str(path))
        self.selector = selectors.DefaultSelector()
        self.server = ControlServer(
            listener,
            self.selector,
            self.dispatch,
            unlink_path=str(path) if created else None,
            **options,
        )
        self.seen: list[Connection] = []
        self.deferred: list[Connection] = []
        self.peers: list[Peer] = []

    def dispatch(self, request: dict[str, Any], conn: Connection) -> dict[str, Any] | None:
        self.seen.append(conn)
        cmd = request["cmd"]
        if cmd == "ping":
            return {"ok": True, "pong": True, "uid": conn.peer_uid, "pid": conn.peer_pid}
        if cmd == "later":
            self.deferred.append(conn)
            return None
        if cmd == "big":
            return {"ok": True, "data": BIG}
        if cmd == "boom":
            raise RuntimeError("kaboom")
        if cmd == "leak":
            return protocol.error("http://user:s3cret@host:1/ is down")
        return protocol.error(f"unknown command {cmd!r}")

    def step(self) -> None:
        for key, _ in self.selector.select(0.01):
            key.data()

    def until(self, condition: Callable[[], Any], timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while not (result := condition()):
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            self.step()
        return result

    def connect(self) -> "Peer":
        peer = Peer(self)
        self.peers.append(peer)
        return peer

    def close(self) -> None:
        for peer in self.peers:
            peer.sock.close()
        self.server.close()
        self.selector.close()


class Peer:
    """A client socket whose reads step the server until data arrives."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(harness.path))
        self.sock.setblocking(False)
        self.buf = b""
        self.eof = False

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                self.harness.step()

    def pull(self) -> None:
        while not self.eof:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                return
            except ConnectionResetError:
                chunk = b""
            self.buf += chunk
            self.eof = not chunk

    def read_line(self) -> dict[str, Any]:
        def arrived() -> bool:
            self.pull()
            return b"\n" in self.buf or self.eof

        self.harness.until(arrived)
        assert b"\n" in self.buf, f"closed without a reply, got {self.buf!r}"
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.send(protocol.encode(msg))
        return self.read_line()

    def wait_closed(self) -> None:
        def closed() -> bool:
            self.pull()
            return self.eof

        self.harness.until(closed)

    def has_nothing(self) -> bool:
        self.pull()
        return not self.buf and not self.eof


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path / "sqsd.sock")
    yield h
    h.close()


@pytest.fixture
def make_harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**options: Any) -> Harness:
        made.append(Harness(tmp_path / "sqsd.sock", **options))
        return made[-1]

    yield make
    for h in made:
        h.close()


def test_ping_roundtrip_with_peer_credentials(harness: Harness) -> None:
    reply = harness.connect().request({"cmd": "ping"})
    assert reply == {"ok": True, "pong": True, "uid": os.getuid(), "pid": os.getpid()}


def test_pipelined_requests_are_answered_in_order(harness: Harness) -> None:
    peer = harness.connect()
    peer.send(b'{"cmd":"ping"}\n{"cmd":"nope"}\n{"cmd":"big"}\n{"cmd":"ping"}\n')
    assert peer.read_line()["pong"]
    assert peer.read_line() == {"ok": False, "error": "unknown command 'nope'"}
    assert peer.read_line()["data"] == BIG
    assert peer.read_line()["pong"]


@pytest.mark.parametrize(
    "line",
    [
        b"{not json\n",
        b"\xff\x00\xfe\x80garbage\n",
        b"\n",
        b"[1, 2]\n",
        b'"ping"\n',
        b'{"cmd": 7}\n',
        b'{"command": "ping"}\n',
        b"[" * 50_000 + b"\n",
        b'{"cmd": "nope"}\n',
    ],
)
def test_bad_requests_get_errors_and_serving_goes_on(harness: Harness, line: bytes) -> None:
    peer = harness.connect()
    peer.send(line)
    reply = peer.read_line()
    assert reply["ok"] is False and reply["error"]
    assert peer.request({"cmd": "ping"})["pong"]
    assert harness.connect().request({"cmd": "ping"})["pong"]


def test_dispatch_exception_becomes_an_error_reply(harness: Harness) -> None:
    peer = harness.connect()
    assert peer.request({"cmd": "boom"}) == {
        "ok": False,
        "error": "internal error: RuntimeError: kaboom",
    }
    assert peer.request({"cmd": "ping"})["pong"]


def test_last_request_without_newline_is_answered_at_eof(harness: Harness) -> None:
    peer = harness.connect()
    peer.send(b'{"cmd":"ping"}')
    peer.sock.shutdown(socket.SHUT_WR)
    assert peer.read_line()["pong"]
    peer.wait_closed()


@pytest.mark.parametrize("newline", [b"", b"\n"])
def test_oversized_request_gets_an_error_and_is_closed(harness: Harness, newline: bytes) -> None:
    peer = harness.connect()
    peer.send(b'{"cmd":"ping","pad":"' + b"x" * protocol.MAX_LINE + b'"}' + newline)
    assert peer.read_line() == {
        "ok": False,
        "error": f"request longer than {protocol.MAX_LINE} bytes",
    }
    peer.wait_closed()
    assert harness.connect().request({"cmd": "ping"})["pong"]


def test_client_that_does_not_read_is_closed(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    peer = harness.connect()
    assert peer.request({"cmd": "ping"})["pong"]
    conn = harness.seen[-1]
    requests = b'{"cmd":"big"}\n' * 10

    def flooded() -> bool:
        with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
            peer.sock.send(requests)
        return conn.closed

    harness.until(flooded, timeout=10)
    assert "does not read its replies" in caplog.text
    assert harness.connect().request({"cmd": "ping"})["pong"]


def test_at_the_limit_the_longest_idle_connection_makes_room(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(max_connections=2)
    first, second = h.connect(), h.connect()
    assert first.request({"cmd": "ping"})["pong"]
    assert second.request({"cmd": "ping"})["pong"]
    first_conn = h.seen[0]

    third = h.connect()
    assert third.request({"cmd": "ping"})["pong"]
    assert first_conn.closed
    first.wait_closed()
    assert second.request({"cmd": "ping"})["pong"]


def test_connections_over_the_limit_are_refused_when_none_is_idle(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(max_connections=2)
    first, second = h.connect(), h.connect()
    first.send(b'{"cmd":"later"}\n')
    second.send(b'{"cmd":"later"}\n')
    h.until(lambda: len(h.seen) == 2 and all(conn.busy for conn in h.seen))

    third = h.connect()
    assert third.read_line() == {"ok": False, "error": "too many connections"}
    third.wait_closed()


def test_idle_connections_are_closed_on_tick(harness: Harness) -> None:
    peer = harness.connect()
    assert peer.request({"cmd": "ping"})["pong"]
    conn = harness.seen[-1]
    harness.server.tick(time.monotonic() + 1)
    assert not conn.closed and peer.has_nothing()
    harness.server.tick(time.monotonic() + 31)
    assert conn.closed
    peer.wait_closed()


def test_deferred_reply_holds_back_the_next_request(harness: Harness) -> None:
    peer = harness.connect()
    peer.send(b'{"cmd":"later"}\n{"cmd":"ping"}\n')
    harness.until(lambda: harness.deferred)
    for _ in range(5):
        harness.step()
    assert peer.has_nothing()

    conn = harness.deferred[0]
    harness.server.tick(time.monotonic() + 1000)
    assert not conn.closed, "a connection awaiting a deferred reply is not idle"

    conn.reply({"ok": True, "done": "later"})
    assert peer.read_line() == {"ok": True, "done": "later"}
    assert peer.read_line()["pong"]
    conn.reply({"ok": True, "done": "twice"})  # no pending request: dropped
    assert peer.request({"cmd": "ping"})["pong"]


def test_deferred_reply_to_a_client_that_left(harness: Harness) -> None:
    peer = harness.connect()
    peer.send(b'{"cmd":"later"}\n')
    harness.until(lambda: harness.deferred)
    peer.sock.close()
    conn = harness.deferred[0]
    conn.reply({"ok": True})
    harness.until(lambda: conn.closed)
    conn.reply({"ok": True})
    assert harness.connect().request({"cmd": "ping"})["pong"]


def test_close_sends_queued_replies(harness: Harness) -> None:
    peer = harness.connect()
    peer.send(b'{"cmd":"later"}\n')
    harness.until(lambda: harness.deferred)
    harness.deferred[0].reply(protocol.error("daemon stopping"))
    harness.server.close()
    assert peer.read_line() == {"ok": False, "error": "daemon stopping"}
    peer.wait_closed()


def test_close_removes_only_our_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "sqsd.sock"
    h = Harness(path)
    peer = h.connect()
    assert peer.request({"cmd": "ping"})["pong"]
    h.server.close()
    assert not path.exists()
    peer.wait_closed()
    h.close()

    listener, _ = open_listener(str(path))
    with selectors.DefaultSelector() as selector:
        ControlServer(listener, selector, lambda request, conn: None).close()
    assert path.exists()


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
def test_socket_file_has_exactly_the_mode(tmp_path: Path, mode: int) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    path = tmp_path / "run" / "sqsd.sock"
    listener, created = open_listener(str(path), mode=mode)
    with listener:
        assert created
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == mode
        assert os.listdir(path.parent) == ["sqsd.sock"]
        assert os.umask(umask) == umask


def test_socket_file_group(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    listener, _ = open_listener(str(tmp_path / "sqsd.sock"), group=group)
    with listener:
        assert (tmp_path / "sqsd.sock").stat().st_gid == os.getgid()
    with pytest.raises(SocketPathError, match="does not exist") as raised:
        open_listener(str(tmp_path / "other.sock"), group="no-such-group-sqsd")
    assert raised.value.key == "socket_group"


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "sqsd.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))
    listener, created = open_listener(str(path))
    with listener, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        assert created
        client.connect(str(path))


def test_live_socket_raises_socket_in_use(tmp_path: Path) -> None:
    path = tmp_path / "sqsd.sock"
    listener, _ = open_listener(str(path))
    with listener:
        with pytest.raises(SocketInUse, match="another sqsd is already listening"):
            open_listener(str(path))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))


def test_other_file_at_the_path_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "sqsd.sock"
    path.write_text("precious")
    with pytest.raises(SocketPathError, match="exists and is not a socket") as raised:
        open_listener(str(path))
    assert raised.value.key == "socket"
    assert path.read_text() == "precious"


SOCKET_ACTIVATED_CHILD = r"""
import json, os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
from sqsd.control.server import open_listener
sock, created = open_listener(sys.argv[2])
env = sorted(v for v in ("LISTEN_PID", "LISTEN_FDS") if v in os.environ)
report = {"created": created, "fd": sock.fileno(), "blocking": sock.getblocking(), "env": env}
sock.setblocking(True)
conn, _ = sock.accept()
conn.sendall(json.dumps(report).encode() + b"\n")
conn.close()
"""


def test_systemd_socket_activation_uses_fd_3(tmp_path: Path) -> None:
    path, unused = tmp_path / "activated.sock", tmp_path / "unused.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        fd = listener.fileno()
        child = subprocess.Popen(
            [sys.executable, "-c", SOCKET_ACTIVATED_CHILD, str(fd), str(unused)],
            pass_fds=[fd],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(30)
                client.connect(str(path))
                with client.makefile("rb") as reader:
                    report = json.loads(reader.readline())
            _, stderr = child.communicate(timeout=30)
        finally:
            child.kill()
            child.wait()
    assert child.returncode == 0, stderr.decode()
    assert report == {"created": False, "fd": 3, "blocking": False, "env": []}
    assert not unused.exists()


def test_client_that_hangs_up_during_a_deferred_request_is_dropped_at_once(
    harness: Harness,
) -> None:
    peer = harness.connect()
    peer.send(b'{"cmd":"later"}\n')
    harness.until(lambda: harness.deferred)
    conn = harness.deferred[0]
    dropped: list[str] = []
    conn.when_closed(lambda: dropped.append("waiter"))

    peer.sock.close()
    harness.until(lambda: conn.closed)

    assert dropped == ["waiter"]
    conn.reply({"ok": True})  # the answer that comes later goes nowhere
    conn.when_closed(lambda: dropped.append("late"))
    assert dropped == ["waiter", "late"]


def test_half_closed_client_still_gets_its_deferred_reply(harness: Harness) -> None:
    peer = harness.connect()
    peer.send(b'{"cmd":"later"}')
    peer.sock.shutdown(socket.SHUT_WR)  # printf '{"cmd": "wait"}' | nc -U
    harness.until(lambda: harness.deferred)
    conn = harness.deferred[0]
    for _ in range(5):
        harness.step()
    harness.server.tick(time.monotonic())
    assert not conn.closed

    conn.reply({"ok": True, "done": "later"})
    assert peer.read_line() == {"ok": True, "done": "later"}
    peer.wait_closed()


def test_half_closed_client_that_then_hangs_up_is_dropped_on_tick(harness: Harness) -> None:
    peer = harness.connect()
    peer.send(b'{"cmd":"later"}\n')
    peer.sock.shutdown(socket.SHUT_WR)
    harness.until(lambda: harness.deferred)
    conn = harness.deferred[0]
    harness.until(lambda: conn.half_closed)

    peer.sock.close()
    harness.server.tick(time.monotonic())

    assert conn.closed


def test_input_piled_up_behind_a_deferred_request_closes_the_connection(
    harness: Harness,
) -> None:
    peer = harness.connect()
    peer.send(b'{"cmd":"later"}\n')
    harness.until(lambda: harness.deferred)
    conn = harness.deferred[0]

    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        peer.send(b'{"cmd":"ping"}\n' * (protocol.MAX_LINE // 15 + 10))
    harness.until(lambda: conn.closed)
    assert harness.connect().request({"cmd": "ping"})["pong"]


def test_another_users_share_is_full_without_touching_the_privileged_one(
    make_harness: Callable[..., Harness],
) -> None:
    # This process plays "another user": privileged is only a uid nobody here has.
    h = make_harness(per_uid_connections=2, privileged_uids=frozenset({2**31 - 2}))
    first, second = h.connect(), h.connect()
    first.send(b'{"cmd":"later"}\n')
    second.send(b'{"cmd":"later"}\n')
    h.until(lambda: len(h.deferred) == 2)

    third = h.connect()

    assert third.read_line() == {"ok": False, "error": "too many connections"}
    assert not any(conn.privileged for conn in h.seen)


def test_privileged_peers_are_counted_apart(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(per_uid_connections=1)
    peers = [h.connect() for _ in range(3)]
    for peer in peers:
        peer.send(b'{"cmd":"later"}\n')
    h.until(lambda: len(h.deferred) == 3)

    assert all(conn.privileged and conn.peer_uid == os.getuid() for conn in h.deferred)
    assert h.connect().request({"cmd": "ping"})["pong"]


def test_replies_are_redacted(harness: Harness) -> None:
    reply = harness.connect().request({"cmd": "leak"})

    assert reply == {"ok": False, "error": "http://***@host:1/ is down"}


def test_long_socket_path_without_room_for_a_temporary_name(tmp_path: Path) -> None:
    base = str(tmp_path) + "/"
    if len(base) > 90:
        pytest.skip("temporary directory path too long for this test")
    path = base + "s" * (100 - len(base))
    listener, created = open_listener(path, mode=0o600)
    with listener, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        assert created
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        client.connect(path)


@pytest.mark.parametrize("kind", ["symlink", "too long", "parent is a file"])
def test_socket_path_problems_name_the_key(tmp_path: Path, kind: str) -> None:
    if kind == "symlink":
        path = tmp_path / "sqsd.sock"
        path.symlink_to(tmp_path / "elsewhere.sock")
    elif kind == "too long":
        path = tmp_path / ("s" * 120)
    else:
        (tmp_path / "file").write_text("")
        path = tmp_path / "file" / "sqsd.sock"
    with pytest.raises(SocketPathError) as raised:
        open_listener(str(path))
    assert raised.value.key == "socket"
