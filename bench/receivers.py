"""Benchmark handlers, registered by the benchmark's config (``receiver = "bench.receivers:..."``).

Handlers tell the benchmark what happened with one datagram on the Unix socket named by
``SQSD_BENCH_EVENTS``: ``noop``, ``work50`` and the engine scenario's ``sleep5ms``,
``async_sleep50ms`` and ``fifo50ms`` only once per process (the time and the process's CPU
time at their first message), ``latency`` and ``slow2s`` once per message. Nothing else
is written per message.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqsd

_events: socket.socket | None = None
_started = False
_first_lock = threading.Lock()  # handlers may run on several threads at once (concurrency)


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
    with _first_lock:
        if _started:
            return
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


# Scenario 12, engine (bench/engine.py): handlers for ``concurrency`` above 1.


def sleep5ms(message: sqsd.Message) -> None:
    """5 ms of I/O-like work, ``time.sleep(0.005)`` (the raw loop's ``--work 0.005``)."""
    if not _started:
        _first_message(message.queue)
    time.sleep(0.005)


async def async_sleep50ms(message: sqsd.Message) -> None:
    """``await asyncio.sleep(0.05)``: reports its first message only once it really runs
    (an engine that calls it without awaiting it reports nothing)."""
    if not _started:
        _first_message(message.queue)
    await asyncio.sleep(0.05)


def fifo50ms(message: sqsd.Message) -> None:
    """50 ms of I/O-like work for a FIFO queue (message groups)."""
    if not _started:
        _first_message(message.queue)
    time.sleep(0.05)


def slow2s(message: sqsd.Message) -> None:
    """2 s of I/O-like work; reports when each message started and ended, and where."""
    started = time.time()
    time.sleep(2.0)
    report({"kind": "slow", "id": message.id, "started": started, "ended": time.time()})
