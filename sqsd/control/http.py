"""``[sqsd] metrics_listen``: ``GET /metrics`` over HTTP, served from the master's one
selector loop beside the control socket.

Like the control socket it never blocks the loop and bounds what a client may cost: a
request head of at most 8 KiB, one response per connection (``Connection: close``), at
most ``MAX_CONNECTIONS`` at once (a newcomer closes the oldest one still sending its
request, else it is turned away), and every connection closed ``TIMEOUT`` seconds after it
was accepted, answered or not. A slow or hostile client costs a descriptor and a reply's
bytes for a few seconds, never the supervision loop. Anything but ``GET /metrics`` is a
404. The body comes later (``render`` works over several turns of the loop); it is
redacted by whoever renders it, as every control reply is.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import time
from collections.abc import Callable

log = logging.getLogger("sqsd.control")

MAX_HEAD = 8192
MAX_CONNECTIONS = 32
TIMEOUT = 10.0
_ACCEPT_BATCH = 16
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)

# (accept header, done): renders the metrics, then calls done(body, content type)
Render = Callable[[str, Callable[[bytes, str], None]], None]


class ListenError(OSError):
    """``metrics_listen`` cannot be listened on; ``str()`` says why, in one line."""


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9640`` for IPv6) as (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsListener:
    """Listens on ``address`` and answers ``GET /metrics`` with ``render(accept)``."""

    def __init__(self, address: str, selector: selectors.BaseSelector, render: Render):
        self.address = address
        self._selector = selector
        self._render = render
        self._connections: dict[HttpConnection, None] = {}  # in order of arrival
        self._listener = _listen(address)
        self.port = self._listener.getsockname()[1]
        selector.register(self._listener, selectors.EVENT_READ, self._accept)

    def tick(self, now: float) -> None:
        """Close connections accepted more than TIMEOUT seconds before ``now``."""
        for conn in list(self._connections):
            if now - conn.accepted > TIMEOUT:
                conn.close()

    def close(self) -> None:
        for conn in list(self._connections):
            conn.close()
        self._selector.unregister(self._listener)
        self._listener.close()

    def close_in_child(self) -> None:
        """In a forked child: close the inherited sockets, leave the selector alone."""
        for conn in self._connections:
            conn.sock.close()
        self._connections.clear()
        self._listener.close()

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):  # bounded: a connect flood cannot starve the loop
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("metrics: accept failed: %s", exc)
                return
            if len(self._connections) >= MAX_CONNECTIONS and not self._make_room():
                sock.close()
                continue
            sock.setblocking(False)
            conn = HttpConnection(self, sock)
            self._connections[conn] = None
            conn.on_ready()  # the request may be there already

    def _make_room(self) -> bool:
        for conn in self._connections:
            if not conn.answered:
                conn.close()
                return True
        return False

    def _forget(self, conn: HttpConnection) -> None:
        self._connections.pop(conn, None)


def _listen(address: str) -> socket.socket:
    try:
        host, port = split_address(address)
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, sockaddr = found[0]
    except (OSError, ValueError) as exc:
        raise ListenError(f"cannot listen on {address}: {exc}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(64)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    return sock


class HttpConnection:
    """One scrape: read the request head, answer it once, close."""

    def __init__(self, listener: MetricsListener, sock: socket.socket):
        self.sock = sock
        self.accepted = time.monotonic()
        self.answered = False
        self._listener = listener
        self._inbuf = bytearray()
        self._outbuf = b""
        self._sent = 0
        self._closed = False
        self._events = 0
        self._watch(selectors.EVENT_READ)

    def on_ready(self) -> None:
        try:
            if self._outbuf:
                self._send()
            elif not self.answered:
                self._receive()
        except Exception:
            log.exception("metrics: connection failed")
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._watch(0)
        self.sock.close()
        self._listener._forget(self)

    def _watch(self, events: int) -> None:
        selector = self._listener._selector
        if events == self._events:
            return
        if not self._events:
            selector.register(self.sock, events, self.on_ready)
        elif not events:
            selector.unregister(self.sock)
        else:
            selector.modify(self.sock, events, self.on_ready)
        self._events = events

    def _receive(self) -> None:
        try:
            data = self.sock.recv(MAX_HEAD)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()  # gone before asking anything
            return
        self._inbuf += data
        end = self._inbuf.find(b"\r\n\r\n")
        if end < 0:
            end = self._inbuf.find(b"\n\n")
        if end < 0:
            if len(self._inbuf) > MAX_HEAD:
                self._answer(431, "Request Header Fields Too Large", b"request head too long\n")
            return
        self._respond(bytes(self._inbuf[:end]))

    def _respond(self, head: bytes) -> None:
        lines = head.decode("latin-1").splitlines()
        parts = lines[0].split() if lines else []
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self._answer(400, "Bad Request", b"bad request\n")
            return
        method, target, _ = parts
        if method != "GET" or target.partition("?")[0] != "/metrics":
            self._answer(404, "Not Found", b"only GET /metrics here\n")
            return
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        self.answered = True  # no longer evicted to make room; TIMEOUT still applies
        self._watch(0)  # nothing to read or write until the body is ready
        self._listener._render(accept, self._rendered)

    def _rendered(self, body: bytes, content_type: str) -> None:
        if not self._closed:
            self._answer(200, "OK", body, content_type)

    def _answer(
        self, code: int, reason: str, body: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        self.answered = True
        head = (
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        self._outbuf = head.encode() + body
        self._send()
        if not self._closed:
            self._watch(selectors.EVENT_WRITE)

    def _send(self) -> None:
        while self._sent < len(self._outbuf):
            try:
                sent = self.sock.send(memoryview(self._outbuf)[self._sent :], _SEND_FLAGS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            self._sent += sent
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        self.close()
