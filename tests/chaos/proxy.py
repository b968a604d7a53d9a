"""A loopback HTTP proxy between sqsd and the SQS emulator that fails on purpose.

``FaultProxy(upstream)`` listens on 127.0.0.1 and forwards each HTTP/1.1 request to the
emulator, unless its ``mode`` says otherwise:

``pass``      forward
``503``       answer 503 Service Unavailable (never forwarded)
``throttle``  answer 400 ThrottlingException, as SQS does when rate limited
``reset``     reset the connection (RST): half of the time before forwarding, half of the
              time after, so the request took effect but its response is lost
``stall``     forward, then hold the response ``stall_seconds`` before sending it
``mixed``     any of the four above, at random, per request

Every request is logged as a :class:`Call` with the pid of the process that made it
(found from its TCP port among ``candidates()``), its SQS action and the fault applied,
so a test can count what each worker did during an outage.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

FAULTS = ("503", "throttle", "reset", "stall")
MODES = ("pass", "mixed", *FAULTS)
_HOP_HEADERS = {"connection", "content-length", "transfer-encoding", "keep-alive"}


@dataclass(frozen=True)
class Call:
    at: float  # time.monotonic() when the request arrived
    pid: int | None
    action: str
    fault: str  # "pass" or one of FAULTS


class FaultProxy:
    def __init__(self, upstream: str, candidates: Callable[[], Iterable[int]] = tuple,
                 stall_seconds: float = 3.0, seed: int | None = None):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.candidates = candidates
        self.stall_seconds = stall_seconds
        self.mode = "pass"
        self.calls: list[Call] = []
        self.random = random.Random(seed)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._clients: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._acceptor = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._acceptor.start()

    # -- control ------------------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        self.mode = mode

    def calls_between(self, start: float, end: float) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if start <= c.at < end]

    def close(self) -> None:
        """Stop accepting, end stalls, close every connection and join the threads."""
        self._closing.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(timeout=5)
        for thread in list(self._threads):
            thread.join(timeout=5)

    # -- serving ------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True,
                                      name="proxy-conn")
            with self._lock:
                self._clients.add(client)
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        port = client.getpeername()[1]
        pid = None
        upstream: http.client.HTTPConnection | None = None
        reader = client.makefile("rb")
        try:
            while not self._closing.is_set():
                request = read_request(reader)
                if request is None:
                    return
                method, path, headers, body = request
                if pid is None:  # connections opened before candidates were known
                    pid = pid_of_peer(port, self.candidates())
                fault = self.mode
                if fault == "mixed":
                    fault = self.random.choice(FAULTS)
                with self._lock:
                    self.calls.append(Call(time.monotonic(), pid, sqs_action(headers, body),
                                           fault))
                if fault == "503":
                    client.sendall(error_response(503, "ServiceUnavailable", headers,
                                                  "Service Unavailable"))
                    continue
                if fault == "throttle":
                    client.sendall(error_response(400, "ThrottlingException", headers,
                                                  "Rate exceeded"))
                    continue
                reset_after = fault == "reset" and self.random.random() < 0.5
                if fault == "reset" and not reset_after:
                    reset(client)
                    return
                if upstream is None:
                    upstream = http.client.HTTPConnection(*self.upstream, timeout=60)
                response = forward(upstream, method, path, headers, body)
                if reset_after:
                    reset(client)
                    return
                if fault == "stall" and self._closing.wait(self.stall_seconds):
                    return
                client.sendall(response)
        except OSError:
            return
        finally:
            with self._lock:
                self._clients.discard(client)
            reader.close()
            with contextlib.suppress(OSError):
                client.close()
            if upstream is not None:
                upstream.close()


def read_request(reader) -> tuple[str, str, dict[str, str], bytes] | None:
    """One HTTP/1.1 request (Content-Length framed, as botocore sends), or None at EOF."""
    line = reader.readline(65537)
    if not line:
        return None
    method, path, _version = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        line = reader.readline(65537)
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", "0")))
    return method, path, headers, body


def forward(upstream: http.client.HTTPConnection, method: str, path: str,
            headers: dict[str, str], body: bytes) -> bytes:
    """Send the request to the emulator and return its response, re-framed."""
    upstream.request(method, path, body=body,
                     headers={k: v for k, v in headers.items() if k not in _HOP_HEADERS})
    response = upstream.getresponse()
    payload = response.read()
    head = [f"HTTP/1.1 {response.status} {response.reason}"]
    head += [f"{k}: {v}" for k, v in response.getheaders() if k.lower() not in _HOP_HEADERS]
    head.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


def error_response(status: int, code: str, headers: dict[str, str], message: str) -> bytes:
    """An SQS error in the request's protocol (JSON or query/XML)."""
    if "json" in headers.get("content-type", ""):
        payload = json.dumps({"__type": f"com.amazonaws.sqs#{code}", "message": message}).encode()
        content_type = "application/x-amz-json-1.0"
    else:
        payload = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
                   f"<Message>{message}</Message></Error><RequestId>chaos</RequestId>"
                   "</ErrorResponse>").encode()
        content_type = "text/xml"
    reason = {503: "Service Unavailable", 400: "Bad Request"}.get(status, "Error")
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"x-amzn-query-error: {code};Sender\r\nx-amzn-RequestId: chaos\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n")
    return head.encode() + payload


def reset(client: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN."""
    with contextlib.suppress(OSError):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def sqs_action(headers: dict[str, str], body: bytes) -> str:
    target = headers.get("x-amz-target", "")
    if target:
        return target.rpartition(".")[2]
    with contextlib.suppress(ValueError):
        return parse_qs(body.decode()).get("Action", ["?"])[0]
    return "?"


def pid_of_peer(port: int, candidates: Iterable[int]) -> int | None:
    """The pid among ``candidates`` that owns the loopback TCP socket bound to ``port``."""
    inode = _socket_inode(port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in candidates:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
    return None


def _socket_inode(port: int) -> str | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if int(parts[1].rpartition(":")[2], 16) == port:
                        return parts[9]
        except OSError:
            continue
    return None
