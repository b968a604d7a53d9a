"""The master's side of the control socket: listen, accept, frame, dispatch, reply.

Everything runs on the master's one selector and never blocks. Each registered
key's ``data`` is a zero-argument callable that the loop calls when the key is
ready. Commands themselves live behind ``dispatch``; this module only moves lines.
"""

import contextlib
import grp
import logging
import os
import select
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

from sqsd.redact import redact
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


class SocketPathError(ValueError):
    """The control socket cannot be made at its path; ``key`` is the configuration key to
    fix ("socket" or "socket_group") and ``str()`` says what is wrong, in one line."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


# sun_path holds 108 bytes with its terminating NUL.
MAX_SOCKET_PATH = 107


def check_socket_path(path: str, group: str | None = None) -> None:
    """Raise SocketPathError when a socket cannot be created at ``path`` (with ``group``):
    a path too long for a Unix socket, a symbolic link or a file other than a socket at
    it, a parent that is not a directory or cannot be created, or no such group. Binds
    nothing: ``sqsd check`` runs it as it is."""
    if group:
        _group_id(group)
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise SocketPathError(
            "socket",
            f"{path} is {size} bytes long; a Unix socket path may have at most "
            f"{MAX_SOCKET_PATH}: choose a shorter one",
        )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        raise SocketPathError("socket", f"{_file_among_parents(path)} is not a directory") from None
    except OSError as exc:
        raise SocketPathError("socket", f"{path}: {exc.strerror}") from None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise SocketPathError(
            "socket", f"{path} is a symbolic link; remove it (sqsd never binds through one)"
        )
    if st is not None and not stat.S_ISSOCK(st.st_mode):
        raise SocketPathError(
            "socket", f"{path} exists and is not a socket; remove it or choose another path"
        )
    directory = os.path.dirname(os.path.abspath(path))
    existing = directory
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise SocketPathError("socket", f"{_file_among_parents(path)} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK) and (st is None or existing != directory):
        what = f"the directory {directory}" if existing != directory else path
        raise SocketPathError(
            "socket",
            f"cannot create {what} (no write access to {existing}); create it for the "
            "daemon's user, or set socket to a path in a directory it owns (such as "
            "$XDG_RUNTIME_DIR)",
        )


def _file_among_parents(path: str) -> str:
    """The first ancestor of ``path`` that exists and is not a directory."""
    current = ""
    for part in os.path.abspath(path).split(os.sep)[1:]:
        current = f"{current}{os.sep}{part}"
        if os.path.lexists(current) and not os.path.isdir(current):
            return current
    return os.path.dirname(os.path.abspath(path))


def open_listener(
    path: str, mode: int = 0o660, group: str | None = None
) -> tuple[socket.socket, bool]:
    """Return a non-blocking listening socket and whether this call created its file.

    A socket passed by systemd (``LISTEN_FDS``) is used as is. Otherwise a stale
    socket file is replaced and a live one raises ``SocketInUse``; a path where no socket
    can be made raises ``SocketPathError``. The file appears at ``path`` already with
    ``mode`` and ``group``, never looser.
    """
    inherited = _inherited_listener()
    if inherited is not None:
        return inherited, False

    check_socket_path(path, group)
    gid = _group_id(group) if group else None
    try:
        _remove_stale(path)
    except OSError as exc:
        raise SocketPathError("socket", f"cannot replace {path}: {exc.strerror}") from None
    directory, name = os.path.split(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise SocketPathError(
            "socket", f"cannot create the directory {directory}: {exc.strerror}"
        ) from None
    temp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    if len(os.fsencode(temp)) > MAX_SOCKET_PATH:
        # No room for a temporary name: bind at the path itself, owner-only until the
        # group and mode are set (connects in that instant are refused, never let in).
        return _bind(path, path, mode, gid, strict_until_set=True), True
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
    return _bind(temp, path, mode, gid), True


def _bind(
    temp: str, path: str, mode: int, gid: int | None, strict_until_set: bool = False
) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        old_umask = os.umask(0o177 if strict_until_set else 0o777 & ~mode)
        try:
            sock.bind(temp)
            bound = True
        finally:
            os.umask(old_umask)
        if gid is not None:
            os.chown(temp, -1, gid)
        os.chmod(temp, mode)
        # Listen before the rename: once the name is visible, connects must succeed.
        sock.listen(1024)  # as sqsd.socket's Backlog: a burst of wake-ups waits, not fails
        sock.setblocking(False)
        if temp != path:
            os.rename(temp, path)
    except BaseException as exc:
        sock.close()
        if bound:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        if isinstance(exc, OSError) and not isinstance(exc, SocketPathError):
            raise SocketPathError("socket", f"cannot create {path}: {exc.strerror}") from None
        raise
    return sock


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
        raise SocketPathError("socket_group", f"group {group!r} does not exist") from None


def _remove_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathError("socket", f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except FileNotFoundError:
            return
        except ConnectionRefusedError:
            os.unlink(path)
            return
        except PermissionError:
            raise SocketPathError(
                "socket", f"{path} is a socket this user may neither use nor replace"
            ) from None
        except (BlockingIOError, TimeoutError):
            pass  # a full backlog: someone is listening
    raise SocketInUse(f"{path}: another sqsd is already listening")


class ControlServer:
    """Serves control connections on ``listener`` from the caller's ``selector``.

    ``dispatch(request, conn)`` returns the reply, or None when it will call
    ``conn.reply()`` later; a connection's next request waits for that reply.
    Call ``tick(time.monotonic())`` now and then to drop idle and hung-up clients.

    Connections are counted per peer: root and the daemon's own user share up to
    ``max_connections``; every other user has ``per_uid_connections`` of its own, and all
    of them together at most ``max_connections``. A full share makes room by closing its
    oldest idle connection, else refuses the newcomer. So whatever another user holds open
    (say, hundreds of ``wait`` requests) locks out that user alone: root's and the
    daemon's ping, status and wake are always let in.
    """

    def __init__(
        self,
        listener: socket.socket,
        selector: selectors.BaseSelector,
        dispatch: Dispatch,
        *,
        unlink_path: str | None = None,
        max_connections: int = 256,
        per_uid_connections: int = 32,
        idle_timeout: float = 30.0,
        privileged_uids: frozenset[int] | None = None,
    ) -> None:
        self._listener = listener
        self._selector = selector
        self._dispatch = dispatch
        self._unlink_path = unlink_path
        self._max_connections = max_connections
        self._per_uid = per_uid_connections
        self._idle_timeout = idle_timeout
        self.privileged_uids = privileged_uids or frozenset({0, os.getuid()})
        self._connections: dict[Connection, None] = {}  # in order of arrival
        self._shares: dict[int | None, dict[Connection, None]] = {}  # None: the privileged
        self._unprivileged = 0  # connections of other users, all shares together
        self._accepting = False
        self._start_accepting()

    def tick(self, now: float) -> None:
        """Close connections idle since before ``now - idle_timeout`` and those whose
        client hung up after half-closing; resume accepting."""
        self._start_accepting()
        for conn in list(self._connections):
            if conn.busy:
                if conn.half_closed and conn.hung_up():
                    conn.close()
            elif now - conn.last_active > self._idle_timeout:
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
        self._shares.clear()
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
        pid, uid = _peer_credentials(sock)
        privileged = uid in self.privileged_uids
        share = self._shares.setdefault(None if privileged else uid, {})
        if privileged:
            room = len(share) < self._max_connections or self._close_oldest_idle(share)
        elif len(share) >= self._per_uid:
            room = self._close_oldest_idle(share)
        elif self._unprivileged >= self._max_connections:
            room = self._close_oldest_idle(c for c in self._connections if not c.privileged)
        else:
            room = True
        if not room:
            if not share:
                del self._shares[None if privileged else uid]
            with contextlib.suppress(OSError):
                sock.send(protocol.encode(protocol.error("too many connections")), _SEND_FLAGS)
            sock.close()
            return
        conn = Connection(self, sock, pid, uid, privileged)
        self._connections[conn] = None
        share[conn] = None
        self._unprivileged += not privileged
        # A client usually sends its request right after connecting: answer it now.
        conn.on_ready()

    def _close_oldest_idle(self, connections: Iterable["Connection"]) -> bool:
        """Make room by closing the oldest connection with no request in progress, so
        idle clients can never lock out a new one. Oldest first keeps this O(1) in a
        connection flood."""
        for conn in connections:
            if not conn.busy:
                conn.close()
                return True
        return False

    def _forget(self, conn: "Connection") -> None:
        self._connections.pop(conn, None)
        key = None if conn.privileged else conn.peer_uid
        share = self._shares.get(key)
        if share is not None and conn in share:
            del share[conn]
            self._unprivileged -= not conn.privileged
            if not share:
                del self._shares[key]


def _peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end, (-1, -1) when unknown."""
    try:
        pid, uid, _gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
    except OSError:
        return -1, -1
    return pid, uid


class Connection:
    """One control client. Its requests are answered one at a time, in order.

    While a request is in progress (a deferred reply: wait, clear, status --fresh) the
    connection is still read, so a client that hangs up is seen at once: the connection
    closes and its ``when_closed`` callbacks drop the work done for it.
    """

    def __init__(
        self, server: ControlServer, sock: socket.socket, pid: int, uid: int, privileged: bool
    ) -> None:
        self.sock = sock
        self.last_active = time.monotonic()
        self.peer_pid = pid  # process id of the client when it connected (-1 if unknown)
        self.peer_uid = uid  # user id of the client (-1 if unknown)
        self.privileged = privileged  # root or the daemon's own user
        self._server = server
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        self._busy = False  # a deferred request awaits its reply
        self._eof = False  # the client will send nothing more
        self._closing = False  # close once the output is sent
        self._closed = False
        self._events = 0
        self._on_close: list[Callable[[], None]] = []
        self._watch()

    @property
    def closed(self) -> bool:
        """True once the connection is closed; a deferred reply is then dropped."""
        return self._closed

    @property
    def busy(self) -> bool:
        """True while a deferred request awaits its reply."""
        return self._busy

    @property
    def half_closed(self) -> bool:
        """The client shut down its sending side (it may still read a reply)."""
        return self._eof

    def hung_up(self) -> bool:
        """True when the client closed its end completely (POLLHUP), not only its sending
        side as ``printf ... | nc -U`` does."""
        poller = select.poll()
        try:
            poller.register(self.sock, 0)  # POLLHUP and POLLERR are always reported
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    def when_closed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the connection closes (at once if it is closed)."""
        if self._closed:
            callback()
        else:
            self._on_close.append(callback)

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
        """Close the connection, dropping unsent output and the work done for it."""
        if self._closed:
            return
        self._closed = True
        if self._events:
            self._server._selector.unregister(self.sock)
            self._events = 0
        self.sock.close()
        self._server._forget(self)
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("control: clean-up after a closed connection failed")

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
        return not (self._eof or self._closing or self._closed)

    def _receive(self) -> None:
        try:
            data = self.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self._eof = True
            if self._busy and self.hung_up():
                self.close()  # nobody left to answer: drop the request now
            return
        self._inbuf += data
        self.last_active = time.monotonic()
        if self._busy and len(self._inbuf) > protocol.MAX_LINE:
            log.warning(
                "control: client pid %s sent more than %d bytes behind a pending request; "
                "closing", self.peer_pid, protocol.MAX_LINE,
            )
            self.close()

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
        self._outbuf += redact(data.decode()).encode()  # every reply, whoever asks

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
