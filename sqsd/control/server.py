"""The master's side of the control socket: listen, accept, frame, dispatch, reply.

Everything runs on the master's one selector and never blocks. Each registered
key's ``data`` is a zero-argument callable that the loop calls when the key is
ready. Commands themselves live behind ``dispatch``; this module only moves lines.
"""

import contextlib
import functools
import grp
import logging
import os
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable
from typing import Any

from sqsd_client import protocol

log = logging.getLogger("sqsd.control")

MAX_OUTPUT = 1024 * 1024
_ACCEPT_BATCH = 64
_RECV_SIZE = 65536
_PEERCRED = struct.Struct("3i")
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)

Dispatch = Callable[[dict[str, Any], "Connection"], dict[str, Any] | None]


class SocketInUse(Exception):
    """Another process is already listening on the control socket path."""


def open_listener(
    path: str, mode: int = 0o660, group: str | None = None
) -> tuple[socket.socket, bool]:
    """Return a non-blocking listening socket and whether this call created its file.

    A socket passed by systemd (``LISTEN_FDS``) is used as is. Otherwise a stale
    socket file is replaced and a live one raises ``SocketInUse``. The file
    appears at ``path`` already with ``mode`` and ``group``, never looser.
    """
    inherited = _inherited_listener()
    if inherited is not None:
        return inherited, False

    gid = _group_id(group) if group else None
    _remove_stale(path)
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(temp)
        finally:
            os.umask(old_umask)
        os.chmod(temp, mode)
        if gid is not None:
            os.chown(temp, -1, gid)
        # Listen before the rename: once the name is visible, connects must succeed.
        sock.listen(1024)  # as sqsd.socket's Backlog: a burst of wake-ups waits, not fails
        sock.setblocking(False)
        os.rename(temp, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return sock, True


def _inherited_listener() -> socket.socket | None:
    try:
        ours = int(os.environ.get("LISTEN_PID", "")) == os.getpid()
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        ours, count = False, 0
    # Like sd_listen_fds(unset=1): the variables must not leak to children.
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    if not ours or count < 1:
        return None
    sock = socket.socket(fileno=3)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise OSError("socket passed by systemd (fd 3) is not a Unix stream socket")
    sock.setblocking(False)
    return sock


def _group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"socket group {group!r} does not exist") from None


def _remove_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path}: exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except FileNotFoundError:
            return
        except ConnectionRefusedError:
            os.unlink(path)
            return
        except (BlockingIOError, TimeoutError):
            pass  # a full backlog: someone is listening
    raise SocketInUse(f"{path}: another sqsd is already listening")


class ControlServer:
    """Serves control connections on ``listener`` from the caller's ``selector``.

    ``dispatch(request, conn)`` returns the reply, or None when it will call
    ``conn.reply()`` later; a connection's next request waits for that reply.
    Call ``tick(time.monotonic())`` now and then to drop idle clients.
    """

    def __init__(
        self,
        listener: socket.socket,
        selector: selectors.BaseSelector,
        dispatch: Dispatch,
        *,
        unlink_path: str | None = None,
        max_connections: int = 256,
        idle_timeout: float = 30.0,
    ) -> None:
        self._listener = listener
        self._selector = selector
        self._dispatch = dispatch
        self._unlink_path = unlink_path
        self._max_connections = max_connections
        self._idle_timeout = idle_timeout
        self._connections: dict[Connection, None] = {}  # in order of arrival
        self._accepting = False
        self._start_accepting()

    def tick(self, now: float) -> None:
        """Close connections idle since before ``now - idle_timeout``; resume accepting."""
        self._start_accepting()
        for conn in list(self._connections):
            if not conn.busy and now - conn.last_active > self._idle_timeout:
                conn.close()

    def close(self) -> None:
        """Close every connection and the listener; remove the socket file if ours.

        Replies already queued (e.g. "daemon stopping") get one non-blocking try.
        """
        for conn in list(self._connections):
            conn.flush_and_close()
        self._stop_accepting()
        self._listener.close()
        if self._unlink_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._unlink_path)

    def close_in_child(self) -> None:
        """Drop inherited descriptors in a forked child.

        Leaves the selector and the socket file alone: the parent still uses both,
        and unregistering from an inherited epoll would unregister the parent.
        """
        for conn in self._connections:
            conn.sock.close()
        self._connections.clear()
        self._listener.close()

    def _start_accepting(self) -> None:
        if not self._accepting:
            self._selector.register(self._listener, selectors.EVENT_READ, self._accept)
            self._accepting = True

    def _stop_accepting(self) -> None:
        if self._accepting:
            self._selector.unregister(self._listener)
            self._accepting = False

    def _accept(self) -> None:
        # Bounded, so a flood of connects cannot starve the rest of the loop.
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                # Out of descriptors: the listener stays readable, so stop watching
                # it until the next tick rather than spin.
                log.warning("control: accept failed: %s", exc)
                self._stop_accepting()
                return
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if len(self._connections) >= self._max_connections and not self._evict_oldest_idle():
            with contextlib.suppress(OSError):
                sock.send(protocol.encode(protocol.error("too many connections")), _SEND_FLAGS)
            sock.close()
            return
        conn = Connection(self, sock)
        self._connections[conn] = None
        # A client usually sends its request right after connecting: answer it now.
        conn.on_ready()

    def _evict_oldest_idle(self) -> bool:
        """At the cap, make room by closing the oldest connection with no request in
        progress, so idle clients can never lock out a new one. Oldest first keeps this
        O(1) in a connection flood."""
        for conn in self._connections:
            if not conn.busy:
                conn.close()
                return True
        return False

    def _forget(self, conn: "Connection") -> None:
        self._connections.pop(conn, None)


class Connection:
    """One control client. Its requests are answered one at a time, in order."""

    def __init__(self, server: ControlServer, sock: socket.socket) -> None:
        self.sock = sock
        self.last_active = time.monotonic()
        self._server = server
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        self._busy = False  # a deferred request awaits its reply
        self._eof = False  # the client will send nothing more
        self._closing = False  # close once the output is sent
        self._closed = False
        self._events = 0
        self._watch()

    @functools.cached_property
    def _peer(self) -> tuple[int, int]:
        # Asked for lazily: most connections are wake-ups that never need it.
        try:
            pid, uid, _gid = _PEERCRED.unpack(
                self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
        except OSError:
            return -1, -1
        return pid, uid

    @property
    def peer_pid(self) -> int:
        """Process id of the client when it connected (-1 if unknown)."""
        return self._peer[0]

    @property
    def peer_uid(self) -> int:
        """User id of the client (-1 if unknown)."""
        return self._peer[1]

    @property
    def closed(self) -> bool:
        """True once the connection is closed; a deferred reply is then dropped."""
        return self._closed

    @property
    def busy(self) -> bool:
        """True while a deferred request awaits its reply."""
        return self._busy

    def reply(self, obj: dict[str, Any]) -> None:
        """Answer the request that dispatch deferred. Safe to call on a closed connection."""
        if self._closed:
            return
        if not self._busy:
            log.warning("control: reply without a pending request dropped: %r", obj)
            return
        self._busy = False
        self._queue(obj)
        # Sending is left to the loop, which then goes on with pipelined requests,
        # so dispatch never runs inside the caller of reply().
        self._watch()

    def flush_and_close(self) -> None:
        """Send what the socket takes without blocking, then close."""
        self._send()
        self.close()

    def close(self) -> None:
        """Close the connection, dropping unsent output."""
        if self._closed:
            return
        self._closed = True
        if self._events:
            self._server._selector.unregister(self.sock)
            self._events = 0
        self.sock.close()
        self._server._forget(self)

    def on_ready(self) -> None:
        """Selector callback: send what is pending, read, and answer complete requests."""
        try:
            self._send()
            if self._wants_input():
                self._receive()
            self._answer()
            self._send()
            if not self._closed:
                self._watch()
        except Exception:
            log.exception("control: connection from pid %s failed", self.peer_pid)
            self.close()

    def _wants_input(self) -> bool:
        return not (self._busy or self._eof or self._closing or self._closed)

    def _receive(self) -> None:
        try:
            data = self.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if data:
            self._inbuf += data
            self.last_active = time.monotonic()
        else:
            self._eof = True

    def _answer(self) -> None:
        while not (self._busy or self._closing or self._closed):
            end = self._inbuf.find(b"\n")
            if end >= 0:
                line = bytes(self._inbuf[:end])
                del self._inbuf[: end + 1]
            elif len(self._inbuf) > protocol.MAX_LINE or (self._eof and self._inbuf):
                # Oversized, or a last request without its newline (``printf ... | nc -U``).
                line = bytes(self._inbuf)
                self._inbuf.clear()
            else:
                self._closing = self._eof
                return
            self._answer_line(line)

    def _answer_line(self, line: bytes) -> None:
        try:
            request = protocol.decode(line)
        except protocol.ProtocolError as exc:
            self._queue(protocol.error(str(exc)))
            if len(line) > protocol.MAX_LINE:
                self._closing = True
            return
        self._busy = True
        try:
            result = self._server._dispatch(request, self)
        except Exception as exc:
            log.exception("control: %r failed", request["cmd"])
            result = protocol.error(f"internal error: {type(exc).__name__}: {exc}")
        if result is None or self._closed:
            return
        if self._busy:
            self._busy = False
            self._queue(result)
        else:
            log.warning("control: %r answered twice; second reply dropped", request["cmd"])

    def _queue(self, obj: dict[str, Any]) -> None:
        try:
            data = protocol.encode(obj)
        except Exception as exc:
            log.error("control: reply cannot be encoded: %r", obj)
            data = protocol.encode(protocol.error(f"internal error: {type(exc).__name__}: {exc}"))
        self._outbuf += data

    def _send(self) -> None:
        while self._outbuf and not self._closed:
            try:
                sent = self.sock.send(self._outbuf, _SEND_FLAGS)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close()
                return
            del self._outbuf[:sent]
            self.last_active = time.monotonic()
        if self._closed:
            return
        if len(self._outbuf) > MAX_OUTPUT:
            log.warning("control: client pid %s does not read its replies; closing", self.peer_pid)
            self.close()
        elif self._closing and not self._outbuf:
            self.close()

    def _watch(self) -> None:
        events = selectors.EVENT_READ if self._wants_input() else 0
        if self._outbuf:
            events |= selectors.EVENT_WRITE
        if events == self._events:
            return
        selector = self._server._selector
        if not self._events:
            selector.register(self.sock, events, self.on_ready)
        elif not events:
            selector.unregister(self.sock)
        else:
            selector.modify(self.sock, events, self.on_ready)
        self._events = events
