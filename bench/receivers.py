"""Benchmark handlers, registered by the benchmark's config (``receiver = "bench.receivers:..."``).

Handlers tell the benchmark what happened with one datagram on the Unix socket named by
``SQSD_BENCH_EVENTS``: ``noop`` and ``work50`` only once per process (the time and the
process's CPU time at their first message), ``latency`` once per message. Nothing else
is written per message.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqsd

_events: socket.socket | None = None
_started = False


def report(event: dict[str, Any]) -> None:
    """Send one event to the benchmark; silently dropped when nobody listens."""
    global _events
    path = os.environ.get("SQSD_BENCH_EVENTS")
    if not path:
        return
    try:
        if _events is None:
            _events = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _events.sendto(json.dumps({**event, "pid": os.getpid()}).encode(), path)
    except OSError:
        pass


def _first_message(queue: str) -> None:
    global _started
    if not _started:
        _started = True
        report({"kind": "first", "queue": queue, "at": time.time(), "cpu": time.process_time()})


def noop(message: sqsd.Message) -> None:
    """Do nothing (reports only the first message of its process)."""
    if not _started:
        _first_message(message.queue)


def work50(message: sqsd.Message) -> None:
    """50 ms of I/O-like work: a sleep, so four processes can overlap on two CPUs."""
    if not _started:
        _first_message(message.queue)
    time.sleep(0.05)


def latency(message: sqsd.Message) -> None:
    """Report when the handler started for a message whose body holds its send time."""
    started = time.time()
    body = json.loads(message.body)
    report(
        {
            "kind": "latency",
            "queue": message.queue,
            "seq": body["seq"],
            "sent": body["sent"],
            "started": started,
        }
    )
