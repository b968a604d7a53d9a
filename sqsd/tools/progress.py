"""``sqsctl wait`` on a terminal: one line on stderr, redrawn every second, with the
messages left (visible + in flight + delayed), the rate they are handled at and an
estimate of the time left.

How the progress reaches the client: the daemon holds a ``wait`` as one request and one
reply, as it always has. Beside it, on a second connection, the client asks ``status``
(not ``fresh``) once a second. While a wait is held the daemon refreshes the queue depths
every second for its own checks, so these status replies carry figures at most about a
second old without costing a single extra SQS call; the running totals in them give the
rate. The protocol does not change: older daemons answer the same requests (without
totals, the rate comes from the live workers' counters), and other clients never see a
line they do not expect. Without a terminal, or with ``--json``, none of this runs.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import shutil
import socket
import time
from typing import Any, TextIO

import sqsd_client
from sqsd.control.render import duration
from sqsd_client import protocol

REFRESH = 1.0  # seconds between status requests and redraws
RATE_WINDOW = 10.0  # seconds the rate is taken over
HANDLED = ("processed", "failed", "retried", "dead_lettered")
DEPTHS = ("visible", "in_flight", "delayed")


class Progress:
    """What the line says, from successive status replies."""

    def __init__(self, names: list[str]):
        self.names = names
        self.started = time.monotonic()
        self.handled: collections.deque[tuple[float, int]] = collections.deque()

    def waited_for(self, entry: dict[str, Any]) -> bool:
        """Whether a status queue entry is one the wait is for (as the daemon reads the
        names: QUEUE is every suffix, QUEUE:SUFFIX one)."""
        if not self.names:
            return True
        for name in self.names:
            queue, _, suffix = name.partition(":")
            if entry["queue"] == queue and (not suffix or entry["suffix"] == suffix):
                return True
        return False

    def update(self, status: dict[str, Any], now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        queues = [q for q in status.get("queues", []) if self.waited_for(q)]
        if all("totals" in q for q in queues):
            handled = sum(q["totals"].get(k, 0) for q in queues for k in HANDLED)
        else:  # a daemon from before running totals: the live workers' counters
            labels = {(q["queue"], q["suffix"]) for q in queues}
            handled = sum(
                w.get(k) or 0
                for w in status.get("workers", [])
                if (w["queue"], w["suffix"]) in labels
                for k in HANDLED
            )
        self.handled.append((now, handled))
        while len(self.handled) > 2 and now - self.handled[1][0] >= RATE_WINDOW:
            self.handled.popleft()
        return self.line(queues, now)

    def rate(self) -> float | None:
        (t0, h0), (t1, h1) = self.handled[0], self.handled[-1]
        return (h1 - h0) / (t1 - t0) if t1 > t0 else None

    def line(self, queues: list[dict[str, Any]], now: float) -> str:
        elapsed = duration(now - self.started)
        depths = {k: [q.get(k) for q in queues] for k in DEPTHS}
        if not queues or any(v is None for values in depths.values() for v in values):
            return f"waiting: queue depths not known yet  [{elapsed}]"
        totals = {k: sum(values) for k, values in depths.items()}
        remaining = sum(totals.values())
        rate = self.rate()
        if remaining == 0:
            eta = "0s"
        elif rate:
            eta = duration(remaining / rate)
        else:
            eta = "?"
        return (
            f"waiting: {remaining:,} left ({totals['visible']:,} visible, "
            f"{totals['in_flight']:,} in flight, {totals['delayed']:,} delayed)  "
            f"{'?' if rate is None else f'{rate:.1f}'} msg/s  ETA {eta}  [{elapsed}]"
        )


class ProgressClient(sqsd_client.Client):
    """A client whose ``wait`` draws progress on ``stream`` (a terminal) while it waits;
    every other command, and every error, is the plain client's."""

    def __init__(
        self, socket_path: str, timeout: float | None, stream: TextIO, names: list[str]
    ) -> None:
        super().__init__(socket_path, timeout=timeout)  # type: ignore[arg-type]
        self.stream = stream
        self.progress = Progress(names)
        self.status_client = sqsd_client.Client(socket_path, timeout=REFRESH * 2)

    def _request(self, request: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        if request.get("cmd") != "wait":
            return super()._request(request, timeout)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(self.socket_path)
                sock.sendall(protocol.encode(request))
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise sqsd_client.DaemonUnavailable(f"{self.socket_path}: {reason}") from exc
            try:
                line = self._await_reply(sock, timeout)
            finally:
                self._draw("")
        reply = protocol.decode_reply(line)
        if not reply["ok"]:
            raise sqsd_client.CommandFailed(reply)
        return reply

    def _await_reply(self, sock: socket.socket, timeout: float | None) -> bytes:
        """Read the wait's reply line, drawing progress every REFRESH seconds meanwhile."""
        deadline = None if timeout is None else time.monotonic() + timeout
        buffer = b""
        next_draw = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_draw:
                self._show_progress()
                next_draw = max(next_draw + REFRESH, time.monotonic())
            if deadline is not None and now >= deadline:
                raise sqsd_client.DaemonUnavailable(f"{self.socket_path}: no reply in {timeout}s")
            wait = next_draw - time.monotonic()
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
            ready, _, _ = select.select([sock], [], [], max(0.0, wait))
            if not ready:
                continue
            try:
                chunk = sock.recv(65536)
            except OSError as exc:
                raise sqsd_client.DaemonUnavailable(f"{self.socket_path}: {exc}") from exc
            if not chunk:
                raise sqsd_client.DaemonUnavailable(
                    f"{self.socket_path}: connection closed before a reply"
                )
            buffer += chunk
            if b"\n" in buffer:
                return buffer.partition(b"\n")[0]

    def _show_progress(self) -> None:
        try:
            status = self.status_client.status()
        except (sqsd_client.DaemonUnavailable, sqsd_client.CommandFailed):
            return  # the wait's own connection says what went wrong, if anything did
        self._draw(self.progress.update(status))

    def _draw(self, text: str) -> None:
        # Wider than the terminal, the line would wrap and "\r" could not take it back.
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = shutil.get_terminal_size().columns
        text = text[: columns - 1]
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(f"\r{text}\x1b[K" if text else "\r\x1b[K")
            self.stream.flush()
