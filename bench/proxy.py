"""A counting HTTP proxy on loopback: sqsd talks to it as its endpoint, it forwards every
request to the real endpoint and records which SQS action it was.

The action is read from the ``X-Amz-Target`` header (JSON protocol,
``AmazonSQS.ReceiveMessage``) or from ``Action=`` in the form body (query protocol). Only
plain-HTTP upstreams work: a proxy that rewrote the Host of a request to AWS would break
its SigV4 signature, so against real SQS the benchmark falls back to sqsd's own counters.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# Headers that belong to one connection and must not be forwarded.
HOP_BY_HOP = {
    "connection",
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
    """One forwarded SQS request, recorded when it arrives."""

    action: str
    queue: str  # the last path segment of the QueueUrl, "" when the call has none
    started: float  # time.monotonic() when the request arrived
    empty: bool = False  # set once answered: a ReceiveMessage that returned no message


def parse_call(headers: dict[str, str], body: bytes) -> tuple[str, str]:
    """The (action, queue name) of an SQS request in either protocol."""
    target = headers.get("x-amz-target", "")
    if target:
        action = target.rpartition(".")[2]
        try:
            queue_url = json.loads(body or b"{}").get("QueueUrl", "")
        except ValueError:
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


class CountingProxy:
    """``with CountingProxy(upstream) as proxy:`` serves on ``proxy.url`` and records calls."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http":
            raise ValueError(f"the counting proxy needs a plain http:// upstream, not {upstream}")
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def counts(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        """Calls per action that arrived in [since, until) (time.monotonic())."""
        with self.lock:
            return Counter(c.action for c in self.calls if since <= c.started < until)

    def empty_receives(self, since: float = 0.0, until: float = float("inf")) -> int:
        """Empty ReceiveMessage calls that arrived in [since, until)."""
        with self.lock:
            return sum(
                1
                for c in self.calls
                if c.action == "ReceiveMessage" and c.empty and since <= c.started < until
            )

    def receive_times(self, queue: str) -> list[float]:
        """Arrival times of the ReceiveMessage calls for one queue name, in order."""
        with self.lock:
            return sorted(
                c.started for c in self.calls if c.action == "ReceiveMessage" and c.queue == queue
            )

    def clear(self) -> None:
        """Forget every call recorded so far."""
        with self.lock:
            self.calls.clear()

    def _record(self, call: Call) -> None:
        with self.lock:
            self.calls.append(call)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are written separately
            upstream: http.client.HTTPConnection | None = None

            def handle(self) -> None:
                try:
                    super().handle()
                except OSError:  # the client went away (a worker stopped or was killed)
                    self.close_connection = True

            def do_POST(self) -> None:
                self.forward()

            def do_GET(self) -> None:
                self.forward()

            def forward(self) -> None:
                started = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                action, queue = parse_call({k.lower(): v for k, v in headers.items()}, body)
                call = Call(action, queue, started)
                proxy._record(call)
                if self.upstream is None:
                    self.upstream = http.client.HTTPConnection(
                        proxy.upstream_host, proxy.upstream_port, timeout=120
                    )
                try:
                    self.upstream.request(self.command, self.path, body, headers)
                    reply = self.upstream.getresponse()
                    data = reply.read()
                except (OSError, http.client.HTTPException):
                    self.upstream.close()
                    self.upstream = None
                    self.send_error(502, "upstream failed")
                    return
                call.empty = action == "ReceiveMessage" and is_empty_receive(data)
                self.send_response_only(reply.status, reply.reason)
                for key, value in reply.getheaders():
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client went away (a worker stopped or was killed)
                    self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def __enter__(self) -> CountingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
