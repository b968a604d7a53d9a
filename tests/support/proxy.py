"""A loopback HTTP proxy between sqsd and an SQS endpoint that counts every call and fails
on purpose when told to. The chaos suite and the benchmarks share it.

``SQSProxy(upstream)`` listens on 127.0.0.1 (``proxy.url``) and forwards each HTTP/1.1
request to the plain-HTTP ``upstream``, unless its ``mode`` says otherwise:

``pass``      forward
``503``       answer 503 Service Unavailable (never forwarded)
``throttle``  answer 400 ThrottlingException, as SQS does when rate limited
``reset``     reset the connection (RST): half of the time before forwarding, half of the
              time after, so the request took effect but its response is lost
``stall``     forward, then hold the response ``stall_seconds`` before sending it
``mixed``     any of the four above, at random, per request

``action_faults`` overrides the mode for single actions (``{"DeleteMessageBatch":
"stall"}``: deletes are slow, everything else passes), and ``fail_batch_entries(action,
times)`` answers the next ``times`` calls of a batch action (DeleteMessageBatch,
ChangeMessageVisibilityBatch, ...) with every entry ``Failed`` (a transient, server-side
``InternalError`` by default), without forwarding them: the call itself succeeds.

Every request is recorded as a :class:`Call`: when it arrived, its SQS action and queue,
the fault applied, whether a ReceiveMessage came back empty and, when ``candidates()``
names the processes to look among, the pid of the process that made it (found from its
TCP port). Against real SQS (https) no proxy can sit in between: SigV4 signs the Host.
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
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import parse_qs, urlsplit

FAULTS = ("503", "throttle", "reset", "stall")
MODES = ("pass", "mixed", *FAULTS)
_HOP_HEADERS = {
    "connection",
    "content-length",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}


@dataclass
class Call:
    """One SQS request, recorded when it arrived."""

    at: float  # time.monotonic() when the request arrived
    pid: int | None
    action: str
    queue: str  # the last path segment of its QueueUrl, "" when it has none
    fault: str  # "pass" or one of FAULTS
    empty: bool = False  # set once answered: a ReceiveMessage that returned no message


class SQSProxy:
    """Serves on ``url`` until ``close()`` (or the end of a ``with`` block)."""

    def __init__(
        self,
        upstream: str,
        candidates: Callable[[], Iterable[int]] = tuple,
        stall_seconds: float = 3.0,
        seed: int | None = None,
    ):
        parts = urlsplit(upstream)
        if parts.scheme != "http":
            raise ValueError(f"the proxy needs a plain http:// upstream, not {upstream!r}")
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.candidates = candidates
        self.stall_seconds = stall_seconds
        self.mode = "pass"
        self.action_faults: dict[str, str] = {}  # action -> a mode, over ``mode``
        self._entry_failures: dict[str, tuple[int, str]] = {}  # action -> (times left, code)
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

    # -- control and figures -------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        self.mode = mode

    def fail_batch_entries(self, action: str, times: int = 1, code: str = "InternalError") -> None:
        """Answer the next ``times`` ``action`` calls with every entry Failed (``code``,
        SenderFault false), without forwarding them to the upstream."""
        with self._lock:
            self._entry_failures[action] = (times, code)

    def _take_entry_failure(self, action: str) -> str | None:
        with self._lock:
            times, code = self._entry_failures.get(action, (0, ""))
            if times <= 0:
                return None
            self._entry_failures[action] = (times - 1, code)
            return code

    def calls_between(self, start: float = 0.0, end: float = float("inf")) -> list[Call]:
        """The calls that arrived in [start, end) (time.monotonic())."""
        with self._lock:
            return [c for c in self.calls if start <= c.at < end]

    def counts(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        """Calls per action that arrived in [since, until)."""
        return Counter(c.action for c in self.calls_between(since, until))

    def empty_receives(self, since: float = 0.0, until: float = float("inf")) -> int:
        """Empty ReceiveMessage calls that arrived in [since, until)."""
        return sum(1 for c in self.calls_between(since, until) if c.empty)

    def receive_times(self, queue: str) -> list[float]:
        """Arrival times of the ReceiveMessage calls for one queue name, in order."""
        return sorted(
            c.at for c in self.calls_between() if c.action == "ReceiveMessage" and c.queue == queue
        )

    def clear(self) -> None:
        """Forget every call recorded so far."""
        with self._lock:
            self.calls.clear()

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

    def __enter__(self) -> SQSProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- serving -------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(
                target=self._serve, args=(client,), daemon=True, name="proxy-conn"
            )
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
                action, queue = parse_call(headers, body)
                fault = self.action_faults.get(action, self.mode)
                if fault == "mixed":
                    fault = self.random.choice(FAULTS)
                failed_code = self._take_entry_failure(action)
                if failed_code:
                    fault = "failed-entries"
                call = Call(time.monotonic(), pid, action, queue, fault)
                with self._lock:
                    self.calls.append(call)
                if failed_code:
                    client.sendall(failed_entries_response(action, headers, body, failed_code))
                    continue
                if fault == "503":
                    client.sendall(
                        error_response(503, "ServiceUnavailable", headers, "Service Unavailable")
                    )
                    continue
                if fault == "throttle":
                    client.sendall(
                        error_response(400, "ThrottlingException", headers, "Rate exceeded")
                    )
                    continue
                reset_after = fault == "reset" and self.random.random() < 0.5
                if fault == "reset" and not reset_after:
                    reset(client)
                    return
                if upstream is None:
                    upstream = http.client.HTTPConnection(*self.upstream, timeout=120)
                try:
                    status, reason, response_headers, payload = forward(
                        upstream, method, path, headers, body
                    )
                except (OSError, http.client.HTTPException):
                    upstream.close()
                    upstream = None
                    client.sendall(error_response(502, "BadGateway", headers, "upstream failed"))
                    continue
                call.empty = action == "ReceiveMessage" and is_empty_receive(payload)
                if reset_after:
                    reset(client)
                    return
                if fault == "stall" and self._closing.wait(self.stall_seconds):
                    return
                client.sendall(frame_response(status, reason, response_headers, payload))
        except OSError:  # the client went away (a worker stopped or was killed)
            return
        finally:
            with self._lock:
                self._clients.discard(client)
            reader.close()
            with contextlib.suppress(OSError):
                client.close()
            if upstream is not None:
                upstream.close()


def read_request(reader: BinaryIO) -> tuple[str, str, dict[str, str], bytes] | None:
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


def forward(
    upstream: http.client.HTTPConnection,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """Send the request upstream; its response's status, reason, headers and body."""
    upstream.request(
        method, path, body=body, headers={k: v for k, v in headers.items() if k not in _HOP_HEADERS}
    )
    response = upstream.getresponse()
    payload = response.read()
    return response.status, response.reason, response.getheaders(), payload


def frame_response(
    status: int, reason: str, headers: list[tuple[str, str]], payload: bytes
) -> bytes:
    """An HTTP/1.1 response with its hop-by-hop headers replaced by a Content-Length."""
    head = [f"HTTP/1.1 {status} {reason}"]
    head += [f"{k}: {v}" for k, v in headers if k.lower() not in _HOP_HEADERS]
    head.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


def error_response(status: int, code: str, headers: dict[str, str], message: str) -> bytes:
    """An SQS error in the request's protocol (JSON or query/XML)."""
    if "json" in headers.get("content-type", ""):
        payload = json.dumps({"__type": f"com.amazonaws.sqs#{code}", "message": message}).encode()
        content_type = "application/x-amz-json-1.0"
    else:
        payload = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
            f"<Message>{message}</Message></Error><RequestId>chaos</RequestId>"
            "</ErrorResponse>"
        ).encode()
        content_type = "text/xml"
    reason = {503: "Service Unavailable", 502: "Bad Gateway", 400: "Bad Request"}.get(
        status, "Error"
    )
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"x-amzn-query-error: {code};Sender\r\nx-amzn-RequestId: chaos\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def failed_entries_response(action: str, headers: dict[str, str], body: bytes,
                            code: str) -> bytes:
    """A successful response to a batch call in which every entry failed with ``code``."""
    message = "injected by the test proxy"
    if "json" in headers.get("content-type", ""):
        try:
            entries = json.loads(body or b"{}").get("Entries", [])
        except (ValueError, AttributeError):
            entries = []
        payload = json.dumps({"Successful": [], "Failed": [
            {"Id": e.get("Id", ""), "SenderFault": False, "Code": code, "Message": message}
            for e in entries
        ]}).encode()
        content_type = "application/x-amz-json-1.0"
    else:
        form = parse_qs(body.decode("utf-8", "replace"))
        ids = [v[0] for k, v in sorted(form.items()) if k.endswith(".Id")]
        errors = "".join(
            f"<BatchResultErrorEntry><Id>{i}</Id><Code>{code}</Code><Message>{message}"
            "</Message><SenderFault>false</SenderFault></BatchResultErrorEntry>"
            for i in ids
        )
        payload = (
            f"<{action}Response><{action}Result>{errors}</{action}Result>"
            f"<ResponseMetadata><RequestId>chaos</RequestId></ResponseMetadata></{action}Response>"
        ).encode()
        content_type = "text/xml"
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nx-amzn-RequestId: chaos\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def reset(client: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN."""
    with contextlib.suppress(OSError):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def parse_call(headers: dict[str, str], body: bytes) -> tuple[str, str]:
    """The (action, queue name) of an SQS request in either protocol."""
    target = headers.get("x-amz-target", "")
    if target:
        action = target.rpartition(".")[2]
        try:
            queue_url = json.loads(body or b"{}").get("QueueUrl", "")
        except (ValueError, AttributeError):
            queue_url = ""
    else:
        form = parse_qs(body.decode("utf-8", "replace"))
        action = form.get("Action", ["?"])[0]
        queue_url = form.get("QueueUrl", [""])[0]
    queue = urlsplit(queue_url).path.rstrip("/").rpartition("/")[2] if queue_url else ""
    return action, queue


def is_empty_receive(body: bytes) -> bool:
    """Whether a ReceiveMessage response body carries no message (JSON or XML)."""
    return b'"Messages"' not in body and b"<Message>" not in body


def pid_of_peer(port: int, candidates: Iterable[int]) -> int | None:
    """The pid among ``candidates`` that owns the loopback TCP socket bound to ``port``."""
    candidates = list(candidates)
    inode = _socket_inode(port) if candidates else None
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
