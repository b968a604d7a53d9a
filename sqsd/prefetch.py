"""Pipelined receives for the single-threaded loop (``concurrency = 1``, plain handler).

While a batch runs, the next ReceiveMessage is already in flight on one helper thread, so
a fast handler never waits for a round trip. It obeys the hold rule: only after a full
batch (a backlog), only once a handler time has been measured, and only when this batch
and the next can both run within ``hold_seconds``; never on FIFO queues (the next batch
waits on the deletes of this one), never past ``max_messages`` or ``--message-limit``.
What it brings is held (heartbeat) at once and given back if the worker stops first.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqsd.message import Message

MEAN_WEIGHT = 0.2  # weight of the newest handler time in the running mean
WAIT = 1  # seconds the prefetch may long-poll: a stop waits for it at most this long


class Prefetch:
    """The next receive of a ``concurrency = 1`` worker (``worker``: sqsd.worker.Worker)."""

    def __init__(self, worker: Any):
        self.worker = worker
        self.queue = worker.queue
        self.mean = 0.0  # handler seconds, a running mean (0: nothing measured yet)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="sqsd-prefetch")

    def observe(self, seconds: float) -> None:
        """A handler ran ``seconds``."""
        mean = self.mean
        self.mean = mean + MEAN_WEIGHT * (seconds - mean) if mean else max(seconds, 1e-6)

    def start(self, batch: int) -> Future[list[Message]] | None:
        """Send the next receive now, while ``batch`` messages are about to run; None when
        the hold rule says not to."""
        worker, queue = self.worker, self.queue
        if queue.fifo or batch < queue.batch_size or not self.mean:
            return None
        if self.mean * (batch + queue.batch_size) > queue.hold_seconds:
            return None
        for limit in (worker.recycle_after, worker.message_limit):
            if limit and worker.handled + batch + queue.batch_size > limit:
                return None
        return self.pool.submit(self._receive)

    def _receive(self) -> list[Message]:
        worker = self.worker
        raws = worker._receive(wait=min(WAIT, self.queue.wait_time_seconds), background=True)
        return worker._hold(raws)

    def give_back(self, pending: Future[list[Message]]) -> None:
        """The worker stops: what the receive in flight brings goes back at once."""
        try:
            messages = pending.result()
        except Exception:  # noqa: BLE001 - nothing received, nothing to give back
            return
        self.worker._give_back(messages)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
