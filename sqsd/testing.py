"""In-memory queues for tests: no AWS, no network.

Under ``sqsd.testing.queues()`` (or the pytest fixture ``sqsd_queues``) every send made
through ``sqsd.send``, a receiver proxy or a task's ``.delay()``/``.send()`` is recorded in
an in-memory queue instead of reaching SQS::

    with sqsd.testing.queues() as queues:
        send_email("hello")
        assert queues["emails"].bodies == ["hello"]
        assert queues.run_pending() == sqsd.testing.RunCounts(processed=1)
        assert queues["emails"].messages == []

Receivers run on demand (``run_pending()``) or, with ``eager=True``, at send time. They get
real ``sqsd.Message`` objects (or the queue's message class) and the outcome follows the
worker's rules: a return removes the message; ``RestartLater`` leaves it (its receive count
grows with each run); another exception applies the queue's error policy (delete, retry
or dead-letter); a message received more than ``max_retries + 1`` times goes to the
dead-letter queue (or the ``failed`` list) without calling the handler; ``delete_on_start``
removes it before the call; a FIFO queue keeps each message group in order. With
``concurrency > 1`` the waiting messages of a queue run that many at once (plain handlers
on threads, ``async def`` handlers as tasks on one event loop), one message of a FIFO
group at a time, as the daemon runs them. Queue settings
come from the registration's options and the configuration, merged as the daemon merges
them. Delays are recorded, never waited for.

The switch is the process-wide producer (``sqsd.producer._producer``): it is replaced by
one whose SQS client is a dict of lists, and restored on exit.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from sqsd import config as config_module
from sqsd import producer as producer_module
from sqsd.config import QueueSettings, Settings
from sqsd.errors import RestartLater
from sqsd.message import Message
from sqsd.outcome import (
    Action,
    Decision,
    Rules,
    after_handler,
    before_handler,
    dead_letter_attributes,
    describe,
)
from sqsd.plan import resolve_handler, resolve_reference
from sqsd.producer import Producer
from sqsd.registry import REGISTRY
from sqsd.testing_concurrency import deliver_many
from sqsd.testing_concurrency import run_awaitable as _run

__all__ = ["FailedMessage", "MemoryQueue", "Queues", "RunCounts", "queues"]

log = logging.getLogger("sqsd.testing")

MAX_DELIVERIES = 10_000  # run_pending() without a limit stops a handler that always re-sends


@dataclass
class RunCounts:
    """What ``run_pending()`` did, counted like the worker columns of ``sqsctl status``."""

    processed: int = 0  # the handler returned: the message was removed
    retried: int = 0  # RestartLater: the message stays
    failed: int = 0  # the handler raised another exception
    dead_lettered: int = 0  # moved to the dead-letter queue, or dropped into ``failed``


@dataclass(frozen=True)
class FailedMessage:
    """One entry of the failed-messages log (the daemon's ``sqsd.failed`` logger)."""

    message: Message
    error: str  # "ValueError: boom", or why the message was given up on
    exception: BaseException | None = None  # None when the handler was not called

    @property
    def queue(self) -> str:
        return self.message.queue

    @property
    def suffix(self) -> str:
        return self.message.suffix


@dataclass
class _Stored:
    """A message held in an in-memory queue."""

    seq: int  # send order across all queues
    id: str
    body: str
    attributes: dict[str, dict[str, Any]]  # SQS MessageAttributes
    sent_at: float
    group_id: str | None = None
    dedup_id: str | None = None
    delay_seconds: int = 0
    receive_count: int = 0

    def raw(self) -> dict[str, Any]:
        """The message as SQS's ReceiveMessage returns it (plus ``DelaySeconds`` when set)."""
        attributes = {
            "SenderId": "sqsd.testing",
            "SentTimestamp": str(int(self.sent_at * 1000)),
            "ApproximateReceiveCount": str(self.receive_count),
        }
        if self.receive_count:
            attributes["ApproximateFirstReceiveTimestamp"] = attributes["SentTimestamp"]
        if self.group_id is not None:
            attributes["MessageGroupId"] = self.group_id
            attributes["SequenceNumber"] = str(self.seq)
        if self.dedup_id is not None:
            attributes["MessageDeduplicationId"] = self.dedup_id
        raw: dict[str, Any] = {
            "MessageId": self.id,
            "ReceiptHandle": f"{self.id}#{self.receive_count}",
            "MD5OfBody": hashlib.md5(self.body.encode()).hexdigest(),
            "Body": self.body,
            "Attributes": attributes,
        }
        if self.attributes:
            raw["MessageAttributes"] = {k: dict(v) for k, v in self.attributes.items()}
        if self.delay_seconds:
            raw["DelaySeconds"] = self.delay_seconds
        return raw


@dataclass(frozen=True)
class _Route:
    """How the daemon would run one queue and suffix: settings, handler and hooks."""

    settings: QueueSettings
    handler: Callable[[Message], Any]
    message_class: type[Message]
    after_message: Callable[[Message], Any] | None


class MemoryQueue:
    """One in-memory queue (a name and a suffix): what was sent and what still waits."""

    def __init__(self, backend: Queues, name: str, suffix: str = ""):
        self.backend = backend
        self.name = name
        self.suffix = suffix
        self._waiting: list[_Stored] = []
        self._sent: list[_Stored] = []
        self._dedup: dict[str, str] = {}  # FIFO deduplication id -> message id

    @property
    def url_name(self) -> str:
        """The SQS queue name the daemon would use (prefix, ``__suffix``, ``.fifo``)."""
        return self.backend.settings.queue_url_name(self.name, self.suffix)

    @property
    def fifo(self) -> bool:
        return self.name.endswith(".fifo")

    @property
    def messages(self) -> list[Message]:
        """Messages still in the queue, oldest first, with their receive counts so far."""
        return [self._message(stored.raw()) for stored in self._waiting]

    @property
    def bodies(self) -> list[str]:
        """Bodies of the messages still in the queue."""
        return [stored.body for stored in self._waiting]

    @property
    def sent(self) -> list[Message]:
        """Every message sent to this queue, as sent (receive count 0), handled or not."""
        return [self._message(replace(stored, receive_count=0).raw()) for stored in self._sent]

    def clear(self) -> int:
        """Drop the waiting messages (like ``sqsctl clear``); return how many."""
        count = len(self._waiting)
        self._waiting.clear()
        return count

    def __len__(self) -> int:
        return len(self._waiting)

    def __repr__(self) -> str:
        label = f"{self.name}:{self.suffix}" if self.suffix else self.name
        return f"<MemoryQueue {label} waiting={len(self._waiting)} sent={len(self._sent)}>"

    def _message(self, raw: dict[str, Any]) -> Message:
        message_class = self.backend.message_class(self.name, self.suffix)
        return message_class(raw, self.name, self.suffix)

    def _store(
        self,
        body: str,
        attributes: dict[str, dict[str, Any]],
        *,
        group_id: str | None = None,
        dedup_id: str | None = None,
        delay_seconds: int = 0,
    ) -> _Stored:
        stored = _Stored(
            seq=self.backend._next_seq(),
            id=str(uuid.uuid4()),
            body=body,
            attributes=attributes,
            sent_at=time.time(),
            group_id=group_id,
            dedup_id=dedup_id,
            delay_seconds=delay_seconds,
        )
        self._waiting.append(stored)
        self._sent.append(stored)
        if dedup_id is not None:
            self._dedup[dedup_id] = stored.id
        return stored

    def _remove(self, stored: _Stored) -> None:
        with contextlib.suppress(ValueError):
            self._waiting.remove(stored)

    def _blocked(self, stored: _Stored) -> bool:
        """FIFO: an earlier message of the same group still waits (or is being handled)."""
        return stored.group_id is not None and any(
            other.group_id == stored.group_id and other.seq < stored.seq for other in self._waiting
        )


class Queues:
    """The in-memory backend that ``queues()`` yields.

    ``queues["emails"]`` and ``queues["emails", "big"]`` are the queues of a name and
    suffix (created empty on first access); ``failed`` lists failed-message records;
    ``run_pending()`` runs the receivers of waiting messages.
    """

    def __init__(self, settings: Settings, *, eager: bool = False, silent: bool = False):
        self.settings = settings
        self.eager = eager
        self.silent = silent
        self.failed: list[FailedMessage] = []
        self._queues: dict[tuple[str, str], MemoryQueue] = {}
        self._seq = itertools.count(1)
        self._running: list[tuple[str, str]] = []  # queues whose handler is on the stack
        self._lock = threading.RLock()  # handlers run on threads with concurrency > 1

    def __getitem__(self, key: str | tuple[str, str]) -> MemoryQueue:
        name, suffix = (key, "") if isinstance(key, str) else key
        suffix = suffix or ""
        queue = self._queues.get((name, suffix))
        if queue is None:
            queue = self._queues[(name, suffix)] = MemoryQueue(self, name, suffix)
        return queue

    def __iter__(self) -> Iterator[MemoryQueue]:
        """The queues that have had messages, in the order they were first used."""
        return (queue for queue in self._queues.values() if queue._sent)

    @property
    def sent(self) -> list[Message]:
        """Every message sent to any queue, in send order."""
        pairs = [(s.seq, m) for q in self for s, m in zip(q._sent, q.sent, strict=True)]
        return [message for _, message in sorted(pairs, key=lambda pair: pair[0])]

    def run_pending(self, *queue_names: str, limit: int | None = None) -> RunCounts:
        """Receive every waiting message of ``queue_names`` (all queues when none) once, in
        send order, and run its receiver; messages sent meanwhile are run too.

        Messages left in their queue (RestartLater, ``on_error = "retry"``) wait for the next
        call. ``limit`` caps the number of messages received; without it, a handler that
        keeps sending stops the run with RuntimeError after MAX_DELIVERIES. Silent mode
        runs nothing.
        """
        counts = RunCounts()
        if self.silent:
            return counts
        received: set[int] = set()
        while limit is None or len(received) < limit:
            pending = self._next_pending(queue_names, received)
            if pending is None:
                break
            if len(received) >= MAX_DELIVERIES:
                raise RuntimeError(
                    f"run_pending: over {MAX_DELIVERIES} messages; a handler keeps sending "
                    f"to {pending[0].name!r} (pass limit=)"
                )
            queue, stored, route = pending
            if route.settings.concurrency > 1:
                wave = self._wave(queue, received, limit)
                received.update(s.seq for s in wave)
                self._deliver_many(queue, wave, route, counts)
                continue
            received.add(stored.seq)
            self._deliver(queue, stored, route, counts)
        return counts

    def _wave(self, queue: MemoryQueue, received: set[int], limit: int | None) -> list[_Stored]:
        """The messages of ``queue`` that may run at once now, in send order: those not
        received in this run, the first waiting one of each FIFO group."""
        wave = [s for s in queue._waiting if s.seq not in received and not queue._blocked(s)]
        if limit is not None:
            wave = wave[: max(1, limit - len(received))]
        return wave

    def _deliver_many(
        self, queue: MemoryQueue, wave: list[_Stored], route: _Route, counts: RunCounts
    ) -> None:
        deliver_many(self, queue, wave, route, counts)

    def message_class(self, name: str, suffix: str = "") -> type[Message]:
        """The message class the daemon would build for ``name``."""
        route = self._route(name, suffix)
        if route is not None:
            return route.message_class
        registration = REGISTRY.get(name)
        return registration.message_class if registration else Message

    def _next_seq(self) -> int:
        return next(self._seq)

    # -- sending ------------------------------------------------------------------------

    def _record(self, name: str, suffix: str, params: dict[str, Any]) -> _Stored:
        """Store a SendMessage call (``params`` as boto3 gets them); FIFO duplicates of a
        deduplication id (or, content-based, of a body) return the first message."""
        with self._lock:
            return self._record_locked(name, suffix, params)

    def _record_locked(self, name: str, suffix: str, params: dict[str, Any]) -> _Stored:
        queue = self[name, suffix]
        body = params["MessageBody"]
        dedup_id = None
        if queue.fifo:
            dedup_id = (
                params.get("MessageDeduplicationId") or hashlib.sha256(body.encode()).hexdigest()
            )
            duplicate = queue._dedup.get(dedup_id)
            if duplicate is not None:
                return next(s for s in queue._sent if s.id == duplicate)
        stored = queue._store(
            body,
            dict(params.get("MessageAttributes", {})),
            group_id=params.get("MessageGroupId"),
            dedup_id=dedup_id,
            delay_seconds=int(params.get("DelaySeconds", 0)),
        )
        if not self.silent:
            log.info("sent %s to %s: %.200s", stored.id, queue.url_name, body)
        return stored

    def _deliver_sent(self, name: str, suffix: str, stored: _Stored) -> None:
        """Eager mode: run the receiver of a message just sent, unless its FIFO group waits
        behind an earlier message or the send came from a handler of the same queue (that
        message waits for ``run_pending()``, so a handler that re-sends cannot recurse)."""
        if self.silent or not self.eager or (name, suffix) in self._running:
            return
        queue = self[name, suffix]
        if stored not in queue._waiting or queue._blocked(stored):
            return
        route = self._route(name, suffix)
        if route is not None:
            self._deliver(queue, stored, route, RunCounts())

    # -- receiving ----------------------------------------------------------------------

    def _route(self, name: str, suffix: str) -> _Route | None:
        """How the daemon would run ``name``:``suffix``, or None when no worker would."""
        registration = REGISTRY.get(name)
        options = registration.options if registration else None
        if registration is None and not self.settings.queues.get(name, {}).get("receiver"):
            return None
        queue = self.settings.queue_settings(name, options)
        if suffix not in queue.suffixes:
            return None
        handler, message_class = resolve_handler(self.settings, queue)
        after = (
            resolve_reference(self.settings, queue, "after_message")
            if queue.after_message
            else None
        )
        return _Route(queue, handler, message_class, after)

    def _next_pending(
        self, queue_names: tuple[str, ...], received: set[int]
    ) -> tuple[MemoryQueue, _Stored, _Route] | None:
        candidates = sorted(
            (
                (stored.seq, queue, stored)
                for queue in self._queues.values()
                if not queue_names or queue.name in queue_names
                for stored in queue._waiting
                if stored.seq not in received
            ),
            key=lambda candidate: candidate[0],
        )
        for _, queue, stored in candidates:
            route = self._route(queue.name, queue.suffix)
            if route is not None and not queue._blocked(stored):
                return queue, stored, route
        return None

    def _deliver(
        self, queue: MemoryQueue, stored: _Stored, route: _Route, counts: RunCounts
    ) -> None:
        """Receive ``stored`` once and apply the worker's outcome rules."""
        message = self._receive(queue, stored, route, counts)
        if message is None:
            return
        try:
            _run(route.handler(message))
        except Exception as exc:
            self._settle(queue, stored, route, counts, message, exc)
        except BaseException:
            with self._lock:
                self._running.remove((queue.name, queue.suffix))
            raise
        else:
            self._settle(queue, stored, route, counts, message, None)

    def _receive(
        self, queue: MemoryQueue, stored: _Stored, route: _Route, counts: RunCounts
    ) -> Message | None:
        """Receive ``stored``: the message for its handler, or None when it went to the
        dead-letter queue instead."""
        settings = route.settings
        with self._lock:
            stored.receive_count += 1
            message = route.message_class(stored.raw(), queue.name, queue.suffix)
            # No start table here: every earlier receive started the handler.
            decision = before_handler(
                Rules.of(settings), receive_count=stored.receive_count, starts=None
            )
            if decision.gives_up:
                self._give_up(queue, stored, message, settings, decision)
                counts.dead_lettered += 1
                return None
            if settings.delete_on_start:
                queue._remove(stored)
            self._running.append((queue.name, queue.suffix))
        return message

    def _settle(
        self,
        queue: MemoryQueue,
        stored: _Stored,
        route: _Route,
        counts: RunCounts,
        message: Message,
        exc: Exception | None,
    ) -> None:
        """Apply the outcome of the handler's call (``exc`` None: it returned)."""
        settings = route.settings
        decision = after_handler(
            Rules.of(settings), exc, receive_count=stored.receive_count, starts=None
        )
        try:
            with self._lock:
                if isinstance(exc, RestartLater):
                    counts.retried += 1  # delays are recorded, never waited for
                    log.info("restart later: %s (%s)", message.id, exc or "no reason given")
                elif exc is not None:
                    counts.failed += 1
                    log.error(
                        "handler of %s failed on %s", queue.url_name, message.id, exc_info=exc
                    )
                    self.failed.append(FailedMessage(message, describe(exc), exc))
                    if decision.gives_up:
                        self._give_up(queue, stored, message, settings, decision)
                        counts.dead_lettered += 1
                    elif decision.action is Action.DELETE:
                        queue._remove(stored)
                else:
                    counts.processed += 1
                    queue._remove(stored)  # delete_on_start (GONE): removed already
        finally:
            with self._lock:
                self._running.remove((queue.name, queue.suffix))
            self._after_message(route, message)

    def _give_up(
        self,
        queue: MemoryQueue,
        stored: _Stored,
        message: Message,
        settings: QueueSettings,
        decision: Decision,
    ) -> None:
        """Carry out DEAD_LETTER (to the dead-letter queue, with the worker's extra
        attributes) or DROP (recorded in ``failed``)."""
        queue._remove(stored)
        reason = decision.reason
        if decision.action is Action.DROP:
            self.failed.append(FailedMessage(message, reason))
            log.warning("dropping %s: %s", message.id, reason)
            return
        label = f"{queue.name}:{queue.suffix}" if queue.suffix else queue.name
        attributes = dead_letter_attributes(
            stored.attributes, reason, queue_label=label, receive_count=stored.receive_count
        )
        dead_letter = self[settings.dead_letter_queue]
        fifo = dead_letter.fifo
        dead_letter._store(
            stored.body,
            attributes,
            group_id=(stored.group_id or "default") if fifo else None,
            dedup_id=stored.id if fifo else None,
        )
        log.warning("dead-lettered %s to %s: %s", message.id, dead_letter.url_name, reason)

    def _after_message(self, route: _Route, message: Message) -> None:
        """The ``after_message`` hook (``close_database`` is left out: closing Django's
        connections inside a test transaction would break the test)."""
        if route.after_message is None:
            return
        try:
            _run(route.after_message(message))
        except Exception:
            log.exception("after_message hook failed on %s", message.id)


class _MemoryProducer(Producer):
    """A producer whose SQS client is the in-memory backend; it never wakes a daemon.

    ``Producer.send`` still builds the request (body encoding, attributes, delays, FIFO
    group), so what is recorded is what would have gone to SQS.
    """

    def __init__(self, backend: Queues):
        super().__init__(backend.settings)
        self.backend = backend
        self._target: tuple[str, str] = ("", "")
        self._last: _Stored | None = None

    @property
    def client(self) -> Any:
        return self  # Producer.send calls self.client.send_message(**params)

    def queue_url(self, url_name: str) -> str:
        return f"memory:///{url_name}"

    def send(
        self, queue_name: str, message: Any = None, *, suffix: str | None = None, **options: Any
    ) -> str:
        options["wake"] = False
        self._target, self._last = (queue_name, suffix or ""), None
        message_id = super().send(queue_name, message, suffix=suffix, **options)
        stored = self._last
        if stored is not None:
            self.backend._deliver_sent(queue_name, suffix or "", stored)
        return message_id

    def send_message(self, **params: Any) -> dict[str, Any]:
        """The boto3 call, answered from memory."""
        name, suffix = self._target
        self._last = self.backend._record(name, suffix, params)
        return {"MessageId": self._last.id}


def _settings(config: str | os.PathLike[str] | Settings | None) -> Settings:
    if isinstance(config, Settings):
        return config
    if config is not None:
        return config_module.load(config)
    current = producer_module._producer
    return current.settings if current is not None else Settings()


@contextlib.contextmanager
def queues(
    *,
    eager: bool = False,
    silent: bool = False,
    config: str | os.PathLike[str] | Settings | None = None,
) -> Iterator[Queues]:
    """Record sends in memory for the duration of the block and yield the backend.

    ``eager=True`` runs the receiver at send time; otherwise call ``run_pending()``.
    ``silent=True`` records only: no receiver runs and nothing is logged (zc.sqs's
    ``be_silent``). ``config`` is a configuration file or ``Settings`` for queue settings
    and the queue prefix; by default the configuration ``sqsd.configure()`` loaded, if it
    was called, else the built-in defaults. Blocks nest; the previous producer comes back
    on exit.
    """
    backend = Queues(_settings(config), eager=eager, silent=silent)
    previous = producer_module._producer
    producer_module._producer = _MemoryProducer(backend)
    try:
        yield backend
    finally:
        producer_module._producer = previous
