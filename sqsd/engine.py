"""Worker engine v2: up to ``concurrency`` messages at once in one worker process.

A worker with ``concurrency = 1`` and a plain handler keeps the single-threaded loop of
sqsd.worker. Otherwise one of two engines runs it:

- ``Threads``: plain handlers on a pool of ``concurrency`` threads, made once. The main
  thread receives; each pool thread takes the next held message itself when it is free,
  so a receive in flight never delays a start (pipelined receives).
- ``Tasks``: ``async def`` handlers as tasks on the worker's one event loop; receives run
  on one helper thread so the loop never waits for SQS.

Both receive only what they can start (no hoarding): at most the free slots plus what the
measured mean handler time lets start within ``hold_seconds``; before any measurement,
the free slots alone. Held messages keep their heartbeat; one that waited longer than
``hold_seconds`` for a slot is given back (visibility 0; never started, so no attempt).

FIFO queues: the messages of one group in a receive form one job, run in order by one
slot; a message that stays queued (failure, RestartLater) gives back the rest of its
group's job, and so does a job whose later messages waited past ``hold_seconds``. No two
jobs of a group run at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import itertools
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqsd.errors import EXIT_CONFIG, EXIT_OK, MissingQueue, QuickStop
from sqsd.message import Message
from sqsd.states import WorkerState

# sqsd.worker.Worker, which imports this module: its private methods are this engine's
# per-message path (one copy of the message rules for every engine).
Worker = Any

TICK = 0.25  # seconds between the main loop's looks at stop requests and timeouts
MEAN_WEIGHT = 0.2  # weight of the newest handler time in the running mean


class HardTimeout(Exception):  # noqa: N818 - the handler's failure, as the log names it
    """An ``async def`` handler ran past ``hard_timeout``: its task was cancelled."""


def is_async_handler(handler: Any) -> bool:
    """True when ``handler`` (or the function a @receiver/@task wraps) is ``async def``."""
    seen = 0
    while handler is not None and seen < 5:
        if inspect.iscoroutinefunction(handler):
            return True
        owner = getattr(handler, "__self__", None)  # ReceiverProxy.direct, Task.handle
        inner = getattr(owner, "fn", None) or getattr(handler, "fn", None)
        handler = inner or getattr(handler, "__wrapped__", None)
        seen += 1
    return False


def make_engine(worker: Worker) -> Threads | Tasks | None:
    """The engine ``worker`` runs with; None for the single-threaded loop."""
    if is_async_handler(worker.spec.handler):
        return Tasks(worker)
    if worker.queue.concurrency > 1:
        return Threads(worker)
    return None


@dataclass
class Job:
    """Received messages one slot runs in order: one message, or a FIFO group's run."""

    messages: list[Message]
    received_at: float
    group: str | None = None


class Running:
    """The handlers running now, published to the worker's slot (how many, and the
    oldest's start and message: the master's hard_timeout) and process title."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.slot = worker.slot
        self.lock = threading.Lock()
        self.started: dict[int, tuple[float, str]] = {}  # token -> start, message id
        self.tokens = itertools.count(1)
        self.mean = 0.0  # handler seconds, a running mean (0: nothing measured yet)

    def start(self, message_id: str) -> int:
        token = next(self.tokens)
        with self.lock:
            self.started[token] = (time.monotonic(), message_id)
            self._publish()
        return token

    def end(self, token: int, seconds: float) -> None:
        with self.lock:
            self.started.pop(token, None)
            mean = self.mean
            self.mean = mean + MEAN_WEIGHT * (seconds - mean) if mean else seconds
            self._publish()

    def count(self) -> int:
        return len(self.started)

    def oldest(self) -> float:
        """When the longest-running handler started (0.0: none runs)."""
        with self.lock:
            return next(iter(self.started.values()))[0] if self.started else 0.0

    def _publish(self) -> None:
        busy = len(self.started)
        # Dicts keep insertion order: the first entry is the oldest start.
        started, message_id = next(iter(self.started.values())) if busy else (0.0, "")
        self.slot.set_running(busy, started, message_id)
        self.worker._set_title(WorkerState.BUSY if busy else WorkerState.POLLING, busy)


class Engine:
    """What both engines share: the held jobs, the hold rule, give-backs and draining."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.queue = worker.queue
        self.size = worker.queue.concurrency
        self.running = Running(worker)
        self.held: collections.deque[Job] = collections.deque()
        self.active_groups: set[str] = set()
        self.jobs = 0  # jobs running now (each takes one slot)
        self.draining = False  # take nothing new (stop, recycling, a thread past hard_timeout)
        self.lock = threading.Condition()

    @property
    def busy(self) -> int:
        return self.jobs

    def close(self) -> None:
        """Release what the engine made (its threads end on their own)."""

    # -- what to receive ---------------------------------------------------------------

    def wanted(self) -> int:
        """How many messages the next receive may ask for (0: none now)."""
        mean = self.running.mean
        holdable = int(self.size * self.queue.hold_seconds / mean) if mean > 0 else 0
        with self.lock:  # handler threads take jobs meanwhile
            held = sum(len(job.messages) for job in self.held)
            free = self.size - self.jobs
        want = min(self.queue.batch_size, free + holdable - held)
        # A worker that recycles (or stops) after N more messages takes no more than that.
        for limit in (self.worker.recycle_after, self.worker.message_limit):
            if limit:
                want = min(want, limit - self.worker.handled - self.running.count() - held)
        return max(0, want)

    def accept(self, raws: list[dict[str, Any]]) -> None:
        """Received messages become held jobs (one per message, one per FIFO group)."""
        worker = self.worker
        received_at = time.monotonic()
        messages = [worker._message(raw, self.queue.name, worker.spec.suffix) for raw in raws]
        assert worker.housekeeper is not None
        worker.housekeeper.hold(messages, received_at)
        jobs: list[Job] = []
        if self.queue.fifo:
            by_group: dict[str | None, Job] = {}
            for message in messages:
                group = message.group_id
                job = by_group.get(group)
                if job is None:
                    job = by_group[group] = Job([], received_at, group)
                    jobs.append(job)
                job.messages.append(message)
        else:
            jobs = [Job([message], received_at) for message in messages]
        with self.lock:
            self.held.extend(jobs)
            self.lock.notify_all()

    def take(self) -> Job | None:
        """The next held job that may start now (its group not running); under the lock."""
        if self.draining or self.jobs >= self.size:
            return None
        for position, job in enumerate(self.held):
            if job.group is None or job.group not in self.active_groups:
                del self.held[position]
                if job.group is not None:
                    self.active_groups.add(job.group)
                self.jobs += 1
                return job
        return None

    def done(self, job: Job) -> None:
        """``job`` ended; under the lock."""
        self.jobs -= 1
        if job.group is not None:
            self.active_groups.discard(job.group)
        self.lock.notify_all()

    def expire(self) -> None:
        """Give back held jobs that waited longer than hold_seconds for a slot."""
        now = time.monotonic()
        with self.lock:
            late = [
                job
                for job in self.held
                if now - job.received_at > self.queue.hold_seconds
                and (self.jobs >= self.size or job.group in self.active_groups)
            ]
            for job in late:
                self.held.remove(job)
        if late:
            self.give_back(late)

    def give_back_held(self) -> None:
        with self.lock:
            jobs = list(self.held)
            self.held.clear()
        self.give_back(jobs)

    def give_back(self, jobs: list[Job]) -> None:
        messages = [message for job in jobs for message in job.messages]
        if messages:
            self.worker._give_back(messages)

    def run_job(self, job: Job, process: Callable[[Message], bool]) -> None:
        """Run ``job``'s messages in order: stop at a stop request or when one stays
        queued in a FIFO group (the rest of the group is given back, order kept)."""
        worker = self.worker
        for position, message in enumerate(job.messages):
            if self.give_up_rest(job, position):
                worker._give_back(job.messages[position:])
                return
            kept = process(message)
            if kept and job.group is not None:
                worker._give_back(job.messages[position + 1 :])
                return

    def give_up_rest(self, job: Job, position: int) -> bool:
        """Whether the messages of ``job`` from ``position`` on go back unstarted: the
        worker stops, or (later messages of a FIFO group) they waited past hold_seconds."""
        if self.worker.stop_requested or self.draining:
            return True
        late = time.monotonic() - job.received_at > self.queue.hold_seconds
        return position > 0 and late

    def past_hard_timeout(self) -> bool:
        oldest = self.running.oldest()
        timeout = self.queue.hard_timeout
        return bool(timeout and oldest and time.monotonic() - oldest > timeout)

    def checks(self) -> int | None:
        """The exit code when the worker must end now (master gone, limits), else None."""
        worker = self.worker
        worker._reap_forks()
        if worker.master_gone():
            worker.log.warning("master is gone; stopping")
            return EXIT_OK
        return worker._limit_reached()

    def finished(self) -> bool:
        with self.lock:
            return not self.jobs and not self.held


class Threads(Engine):
    """Plain handlers on ``concurrency`` threads; the main thread receives."""

    def __init__(self, worker: Worker):
        super().__init__(worker)
        self.closing = False
        self.threads = [
            threading.Thread(target=self._serve, name=f"sqsd-handler-{n}", daemon=True)
            for n in range(self.size)
        ]
        for thread in self.threads:
            thread.start()

    def run(self) -> int:
        worker = self.worker
        code = EXIT_OK
        while not worker.stop_requested:
            stop = self.checks()
            if stop is not None:
                code = stop
                break
            if self._hold_for_hard_timeout():
                continue
            self.expire()
            want = self.wanted()
            if want <= 0:
                self._wait(TICK)
                continue
            try:
                messages = worker._receive(want, self._poll_wait())
            except MissingQueue:
                code = EXIT_CONFIG
                break
            if messages:
                worker.idle_sleep = 0.0
                self.accept(messages)
            elif not worker.stop_requested and worker.error_sleep == 0.0 and self.finished():
                assert worker.housekeeper is not None
                worker.housekeeper.flush()
                worker._sleep_idle()
        self.drain()
        return code

    def _poll_wait(self) -> int | None:
        """How long the next receive may long-poll (None: wait_time_seconds). Not past the
        moment a running handler reaches hard_timeout (the main thread must then stop
        taking messages), and a second at most while messages are held (they must start
        or go back within hold_seconds)."""
        wait = self.queue.wait_time_seconds
        if self.held:
            wait = min(wait, 1)
        oldest = self.running.oldest()
        if oldest and self.queue.hard_timeout:
            left = self.queue.hard_timeout - (time.monotonic() - oldest)
            wait = min(wait, max(0, math.ceil(left)))
        return None if wait == self.queue.wait_time_seconds else int(wait)

    def drain(self) -> None:
        """Take nothing new, give back everything held at once, let the running finish
        (the master kills after graceful_timeout)."""
        with self.lock:
            self.draining = True
        self.give_back_held()
        while not self.finished():
            self._wait(TICK)

    def close(self) -> None:
        with self.lock:
            self.closing = True
            self.lock.notify_all()

    def _hold_for_hard_timeout(self) -> bool:
        """A thread past hard_timeout cannot be stopped: take nothing new and give back
        what is held while the others finish; the master then aborts the worker."""
        if not self.past_hard_timeout():
            if self.draining:
                with self.lock:
                    self.draining = False  # the handler did return after all
            return False
        if not self.draining:
            self.worker.log.error(
                "handler past hard_timeout; taking no new messages until the worker is aborted"
            )
            with self.lock:
                self.draining = True
            self.give_back_held()
        self._wait(TICK)
        return True

    def _wait(self, timeout: float) -> None:
        with self.lock:
            self.lock.wait(timeout)
        self.worker.slot.beat()

    def _serve(self) -> None:
        worker = self.worker
        while True:
            with self.lock:
                job = self.take()
                while job is None:
                    if self.closing:
                        return
                    self.lock.wait()
                    job = self.take()
            try:
                self.run_job(job, worker._process_guarded)
                if job.group is not None:  # the group stays locked until its deletes are done
                    assert worker.housekeeper is not None
                    worker.housekeeper.flush(wait=True)
            except BaseException:  # noqa: BLE001 - a pool thread must never die
                worker.log.exception("handler thread failed")
            finally:
                with self.lock:
                    self.done(job)


class Tasks(Engine):
    """``async def`` handlers as tasks on the worker's one event loop."""

    def __init__(self, worker: Worker):
        super().__init__(worker)
        self.receiver = ThreadPoolExecutor(1, thread_name_prefix="sqsd-receive")
        self.tasks: set[asyncio.Task[None]] = set()
        self.changed: asyncio.Event | None = None

    def run(self) -> int:
        worker = self.worker
        if worker.runner is None:
            worker.runner = asyncio.Runner()
        return worker.runner.run(self._main())

    def close(self) -> None:
        self.receiver.shutdown(wait=False, cancel_futures=True)

    async def _main(self) -> int:
        worker = self.worker
        loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()
        receiving: asyncio.Future[list[dict[str, Any]]] | None = None
        code = EXIT_OK
        while not worker.stop_requested:
            stop = self.checks()
            if stop is not None:
                code = stop
                break
            self.expire()
            self._start_jobs()
            if receiving is None:
                want = self.wanted()
                if want > 0:
                    wait = None if not self.held else int(min(self.queue.wait_time_seconds, 1))
                    receiving = loop.run_in_executor(self.receiver, worker._receive, want, wait)
            if receiving is not None and receiving.done():
                try:
                    messages = receiving.result()
                except MissingQueue:
                    code = EXIT_CONFIG
                    break
                receiving = None
                if messages:
                    worker.idle_sleep = 0.0
                    self.accept(messages)
                    self._start_jobs()
                elif not worker.stop_requested and worker.error_sleep == 0.0 and self.finished():
                    assert worker.housekeeper is not None
                    worker.housekeeper.flush()
                    worker._sleep_idle()  # nothing runs: blocking the loop costs nothing
                continue
            await self._wait_change(receiving)
        await self._drain(receiving)
        return code

    async def _wait_change(self, receiving: asyncio.Future[Any] | None) -> None:
        assert self.changed is not None
        self.changed.clear()
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.changed.wait())]
        if receiving is not None:
            waits.append(receiving)
        await asyncio.wait(waits, timeout=TICK, return_when=asyncio.FIRST_COMPLETED)
        waits[0].cancel()

    async def _drain(self, receiving: asyncio.Future[Any] | None) -> None:
        """Give back everything held at once and let the running tasks finish. A receive
        still in flight then is left: what it brings reappears after its timeout."""
        with self.lock:
            self.draining = True
        self.give_back_held()
        while self.tasks:
            await self._wait_change(None)
            self.worker.slot.beat()
        if receiving is not None and receiving.done() and not receiving.cancelled():
            with contextlib.suppress(Exception):
                self.accept(receiving.result())
                self.give_back_held()

    def _start_jobs(self) -> None:
        while True:
            with self.lock:
                job = self.take()
            if job is None:
                return
            task = asyncio.get_running_loop().create_task(self._run_task(job))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run_task(self, job: Job) -> None:
        try:
            for position, message in enumerate(job.messages):
                if self.give_up_rest(job, position):
                    self.worker._give_back(job.messages[position:])
                    return
                kept = await self._process(message)
                if kept and job.group is not None:
                    self.worker._give_back(job.messages[position + 1 :])
                    return
        except Exception:
            self.worker.log.exception("handler task failed")
        finally:
            with self.lock:
                self.done(job)
            assert self.changed is not None
            self.changed.set()
            if job.group is not None:
                assert self.worker.housekeeper is not None
                self.worker.housekeeper.flush()

    async def _process(self, message: Message) -> bool:
        """``Worker._process`` for an ``async def`` handler; True when it stays queued."""
        worker = self.worker
        try:
            settled = worker._settle_unhandled(message)
            if settled is not None:
                return settled
            begun = worker._begin(message)
            if begun is None:
                return True
            error: BaseException | None = None
            try:
                await self._call(message)
            except asyncio.CancelledError:
                worker._end(message, begun, after_hook=False)
                raise
            except QuickStop:
                worker._end(message, begun, after_hook=False)
                raise
            except BaseException as exc:  # noqa: BLE001 - as Worker._handle
                error = exc
            kept = worker._conclude(message, begun, error, after_hook=False)
            await self._after_message(message)
            return kept
        except Exception:
            worker.log.exception("message not processed", message_id=message.id)
            assert worker.housekeeper is not None
            worker.housekeeper.release(message)
            return True

    async def _call(self, message: Message) -> None:
        worker = self.worker
        broken = worker.broken.pop(message.id, None)
        if broken is not None:
            raise broken
        try:
            result = worker.spec.handler(message)
            if not inspect.isawaitable(result):
                return
            timeout = self.queue.hard_timeout
            if not timeout:
                await result
                return
            limit = asyncio.timeout(timeout)
            try:
                async with limit:
                    await result
            except TimeoutError as exc:
                if limit.expired():
                    raise HardTimeout(f"cancelled after hard_timeout ({timeout} s)") from None
                raise exc
        finally:
            worker._exit_if_forked()

    async def _after_message(self, message: Message) -> None:
        worker = self.worker
        hook = worker.spec.after_message
        if hook is None:
            return
        try:
            result = hook(message)
            if inspect.isawaitable(result):
                await result
        except Exception:
            worker.log.exception("after_message hook failed", message_id=message.id)
        finally:
            worker._exit_if_forked()
