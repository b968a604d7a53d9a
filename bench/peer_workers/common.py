"""The handler work every system runs, and the first-message report the harness times by.

Settings come from the environment, because the peers' worker commands take none of ours:

- ``SQSD_BENCH_EVENTS``: the harness's Unix datagram socket (see bench/events.py).
- ``PEER_QUEUE``: the SQS queue name (prefix included) the peer consumes and fills.
- ``PEER_WORK``: seconds of ``time.sleep`` per message (``0``: a no-op handler).
- ``PEER_ENDPOINT``, ``PEER_REGION``: the SQS endpoint (the emulator or the counting proxy).

Standard library only: this module is imported by sqsd's workers (project venv) and by the
peers' workers (bench/.peers-venv) alike.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

_events: socket.socket | None = None
_lock = threading.Lock()
_started = False


def report(event: dict[str, Any]) -> None:
    """Send one event to the harness; dropped silently when nobody listens."""
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


def first_message(queue: str) -> None:
    """Report the process's first message once: wall time and the process's CPU time."""
    global _started
    with _lock:
        if _started:
            return
        _started = True
    report({"kind": "first", "queue": queue, "at": time.time(), "cpu": time.process_time()})


def work(seconds: float, queue: str = "") -> None:
    """The handler's work: nothing, or ``time.sleep(seconds)`` (I/O-like, releases the GIL)."""
    if not _started:
        first_message(queue or os.environ.get("PEER_QUEUE", ""))
    if seconds:
        time.sleep(seconds)


def setting(name: str, default: str | None = None) -> str:
    """An environment setting; a clear error when a required one is missing."""
    value = os.environ.get(name, default)
    if value is None:
        raise SystemExit(f"{name} is not set (the bench harness sets it)")
    return value


def work_seconds() -> float:
    """``PEER_WORK`` as seconds of sleep per message."""
    return float(setting("PEER_WORK", "0"))


# sqsd's side: receivers for ``receiver = "bench.peer_workers.common:noop"`` and ``:sleep5``.


def noop(message: Any) -> None:
    """No work (reports only the first message of its process)."""
    work(0.0, message.queue)


def sleep5(message: Any) -> None:
    """5 ms of I/O-like work, as ``time.sleep(0.005)``."""
    work(0.005, message.queue)
