"""Per-worker slots in shared memory: the worker writes its state and counters, the master
reads them for status and hang detection without any message on the hot path.

One anonymous shared mapping is created by the master before forking; each worker owns
one fixed-size slot. Writes are unsynchronised single-writer updates: a reader may see a
half-updated slot for a moment, which is fine for monitoring.
"""

from __future__ import annotations

import bisect
import math
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from sqsd.states import SlotView, WorkerState  # SlotView: what read() returns

# Appended to, never reordered: the index is the counter's place in the slot.
COUNTERS = (
    "processed",
    "failed",
    "retried",
    "dead_lettered",
    "receives",
    "empty_receives",
    "deletes",
    "visibility_changes",
    "sends",
    "given_back",  # received but unstarted messages made visible again (not attempts)
    "dropped",  # messages whose receipt handle SQS refused (no longer ours)
    "extra_chunks",  # 64 KiB payload chunks past each request's first: SQS bills each one
)
MESSAGE_ID_SIZE = 80

# state, heartbeat, state_since, message_started, idle_until, counters, message id, what
# the last receive returned: messages, oldest age, idle since (autoscaling's signals), and
# the handler slots: busy, total, asyncio (1: async def handlers on an event loop).
# message_started and the message id are the oldest running message's.
_LAYOUT = struct.Struct(f"<B7xdddd{len(COUNTERS)}Q{MESSAGE_ID_SIZE}sQddIIB")
_HEAD = struct.Struct("<B7xdd")  # state, heartbeat, state_since
_FLOAT = struct.Struct("<d")
_COUNTER = struct.Struct("<Q")
_MESSAGE_ID = struct.Struct(f"<{MESSAGE_ID_SIZE}s")
_RECEIVED = struct.Struct("<Qdd")  # last batch, its oldest message's age, idle since
_HEARTBEAT_AT = 8
_STATE_SINCE_AT = 16
_MESSAGE_STARTED_AT = 24
_IDLE_UNTIL_AT = 32
_COUNTERS_AT = 40
_MESSAGE_ID_AT = _COUNTERS_AT + 8 * len(COUNTERS)
_RECEIVED_AT = _MESSAGE_ID_AT + MESSAGE_ID_SIZE
_SLOTS_AT = _RECEIVED_AT + _RECEIVED.size
_U32 = struct.Struct("<I")
_SLOTS = struct.Struct("<IIB")  # busy, total, asyncio
SLOT_SIZE = 1024
assert _LAYOUT.size <= 256

# -- histograms: bytes 640 to 1023 of a slot ------------------------------------------
#
# Two histograms, one after the other from HISTOGRAMS_AT: for each, one u64 per bucket (not
# cumulative; the last one counts what is above every bound), the count (u64) and the sum
# (f64). A worker observes with one bisect and three read-modify-writes: no allocation, no
# I/O. The master adds them up per queue and suffix (sqsd.metrics).
HISTOGRAMS_AT = 640
# Twelve bounds each: every sample costs the master a few microseconds per scrape.
HANDLER_BUCKETS = (  # seconds a handler ran
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0,
)  # fmt: skip
AGE_BUCKETS = (  # seconds from SQS's SentTimestamp to the handler's start
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 86400.0,
)  # fmt: skip
HISTOGRAMS = {"handler_seconds": HANDLER_BUCKETS, "message_age_seconds": AGE_BUCKETS}


def _histogram_layout(bounds: tuple[float, ...]) -> struct.Struct:
    return struct.Struct(f"<{len(bounds) + 1}QQd")  # buckets (+ overflow), count, sum


_HANDLER = _histogram_layout(HANDLER_BUCKETS)
_AGE = _histogram_layout(AGE_BUCKETS)
_HANDLER_AT = HISTOGRAMS_AT
_AGE_AT = _HANDLER_AT + _HANDLER.size
_U64 = struct.Struct("<Q")
_COUNT_SUM = struct.Struct("<Qd")
assert _AGE_AT + _AGE.size <= SLOT_SIZE


class HistogramView:
    """One histogram as a slot holds it: per-bucket counts (the last: above every bound),
    count and sum."""

    __slots__ = ("bounds", "buckets", "count", "sum")

    def __init__(self, bounds: tuple[float, ...], buckets: list[int], count: int, total: float):
        self.bounds = bounds
        self.buckets = buckets
        self.count = count
        self.sum = total

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> HistogramView:
        return cls(bounds, [0] * (len(bounds) + 1), 0, 0.0)

    def add(self, other: HistogramView) -> None:
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.count += other.count
        self.sum += other.sum

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count) pairs as Prometheus wants them, +Inf last."""
        pairs, running = [], 0
        for bound, value in zip([*self.bounds, math.inf], self.buckets, strict=True):
            running += value
            pairs.append(("+Inf" if bound == math.inf else repr(bound), running))
        return pairs


class Scoreboard:
    """``size`` slots in one shared anonymous mapping (pages are only backed once used)."""

    def __init__(self, size: int = 4096):
        self.size = size
        self.memory = mmap.mmap(-1, SLOT_SIZE * size)
        self.free = list(range(size - 1, -1, -1))
        # The benchmark's baseline only: what the message path costs without observing.
        self.slot_class = Unobserved if os.environ.get("SQSD_BENCH_NO_OBSERVE") else Slot

    def allocate(self) -> Slot:
        """Take a free slot and zero it (the master, before forking its worker)."""
        if not self.free:
            raise RuntimeError(f"more than {self.size} workers")
        index = self.free.pop()
        slot = self.slot_class(self.memory, index)
        slot.reset()
        return slot

    def release(self, slot: Slot) -> None:
        self.free.append(slot.index)


class Slot:
    """One worker's slot: written by the worker, read by the master."""

    __slots__ = ("memory", "index", "offset", "lock")

    def __init__(self, memory: mmap.mmap, index: int):
        self.memory = memory
        self.index = index
        self.offset = index * SLOT_SIZE
        # The worker's handler threads and helper threads add to the same counters.
        self.lock = threading.Lock()

    def reset(self) -> None:
        now = time.monotonic()
        self.memory[self.offset : self.offset + SLOT_SIZE] = bytes(SLOT_SIZE)
        counters = [0] * len(COUNTERS)
        # A new worker counts as idle from its start until its first receive brings work.
        _LAYOUT.pack_into(
            self.memory, self.offset, 0, now, now, 0.0, 0.0, *counters, b"", 0, 0.0, now, 0, 1, 0
        )

    def set_state(self, state: WorkerState, *, idle_until: float = 0.0) -> None:
        now = time.monotonic()
        _HEAD.pack_into(self.memory, self.offset, state, now, now)
        _FLOAT.pack_into(self.memory, self.offset + _IDLE_UNTIL_AT, idle_until)

    def beat(self) -> None:
        _FLOAT.pack_into(self.memory, self.offset + _HEARTBEAT_AT, time.monotonic())

    def start_message(self, message_id: str) -> None:
        """The one handler of a ``concurrency = 1`` worker starts on ``message_id``."""
        now = time.monotonic()
        _HEAD.pack_into(self.memory, self.offset, WorkerState.BUSY, now, now)
        _FLOAT.pack_into(self.memory, self.offset + _MESSAGE_STARTED_AT, now)
        _MESSAGE_ID.pack_into(self.memory, self.offset + _MESSAGE_ID_AT, message_id.encode())
        _U32.pack_into(self.memory, self.offset + _SLOTS_AT, 1)

    def end_message(self) -> None:
        _FLOAT.pack_into(self.memory, self.offset + _MESSAGE_STARTED_AT, 0.0)
        _U32.pack_into(self.memory, self.offset + _SLOTS_AT, 0)

    def set_slots(self, total: int, *, asyncio: bool = False) -> None:
        """The worker runs up to ``total`` handlers at once (``asyncio``: as tasks)."""
        _SLOTS.pack_into(self.memory, self.offset + _SLOTS_AT, 0, total, int(asyncio))

    def set_running(self, busy: int, started: float, message_id: str) -> None:
        """``busy`` handlers run now, the oldest since ``started`` on ``message_id``
        (callers hold the lock that orders their updates)."""
        now = time.monotonic()
        if busy:
            _HEAD.pack_into(self.memory, self.offset, WorkerState.BUSY, now, now)
            _MESSAGE_ID.pack_into(self.memory, self.offset + _MESSAGE_ID_AT, message_id.encode())
        else:  # the worker's main thread is receiving, or about to say what it does
            _HEAD.pack_into(self.memory, self.offset, WorkerState.POLLING, now, now)
        _FLOAT.pack_into(self.memory, self.offset + _MESSAGE_STARTED_AT, started)
        _U32.pack_into(self.memory, self.offset + _SLOTS_AT, busy)

    def received(self, count: int, oldest_age: float) -> None:
        """A receive returned ``count`` messages, the oldest of them ``oldest_age`` seconds
        after it was sent. The age is kept only when the receive before also returned
        messages: after an idle sleep, a message's wait says nothing about a backlog. The
        first empty receive after work marks the start of idling: when that poll began."""
        at = self.offset + _RECEIVED_AT
        (previous, _, _) = _RECEIVED.unpack_from(self.memory, at)
        if count:
            _RECEIVED.pack_into(self.memory, at, count, oldest_age if previous else 0.0, 0.0)
        elif previous:
            (poll_started,) = _FLOAT.unpack_from(self.memory, self.offset + _STATE_SINCE_AT)
            _RECEIVED.pack_into(self.memory, at, 0, 0.0, poll_started)

    def add(self, counter: int, amount: int = 1) -> None:
        """Add to counter number ``counter`` (an index into COUNTERS)."""
        at = self.offset + _COUNTERS_AT + 8 * counter
        with self.lock:
            (value,) = _COUNTER.unpack_from(self.memory, at)
            _COUNTER.pack_into(self.memory, at, value + amount)

    def observe_handler(self, seconds: float) -> None:
        """A handler ran ``seconds`` (whatever its outcome)."""
        with self.lock:
            _observe(self.memory, self.offset + _HANDLER_AT, HANDLER_BUCKETS, seconds)

    def observe_age(self, seconds: float | None) -> None:
        """A handler started ``seconds`` after SQS took its message in (None: unknown)."""
        if seconds is not None:
            with self.lock:
                _observe(self.memory, self.offset + _AGE_AT, AGE_BUCKETS, max(0.0, seconds))

    def count_payload(self, messages: Iterable[Mapping[str, object]]) -> None:
        """A request carried ``messages`` (received, or sent: ``Body`` or ``MessageBody``
        and ``MessageAttributes``): count the 64 KiB chunks past the first that SQS bills
        as requests of their own."""
        extra = extra_chunks(messages)
        if extra:
            self.add(EXTRA_CHUNKS, extra)

    def read_histograms(self) -> dict[str, HistogramView]:
        """Both histograms of the slot, by metric name (``HISTOGRAMS``)."""
        views = {}
        for name, bounds, layout, at in (
            ("handler_seconds", HANDLER_BUCKETS, _HANDLER, _HANDLER_AT),
            ("message_age_seconds", AGE_BUCKETS, _AGE, _AGE_AT),
        ):
            *buckets, count, total = layout.unpack_from(self.memory, self.offset + at)
            views[name] = HistogramView(bounds, buckets, count, total)
        return views

    def read(self) -> SlotView:
        state, heartbeat, since, started, idle_until, *rest = _LAYOUT.unpack_from(
            self.memory, self.offset
        )
        counters = dict(zip(COUNTERS, rest[: len(COUNTERS)], strict=True))
        message_id, last_batch, oldest_age, idle_since, busy, total, is_async = rest[
            len(COUNTERS) :
        ]
        return SlotView(
            WorkerState.from_byte(state),
            heartbeat,
            since,
            started,
            idle_until,
            counters,
            message_id.rstrip(b"\0").decode(errors="replace") if started else "",
            last_batch,
            oldest_age,
            idle_since,
            busy,
            max(1, total),
            bool(is_async),
        )


class Unobserved(Slot):
    """A slot whose worker observes nothing (``SQSD_BENCH_NO_OBSERVE=1``): the benchmark's
    baseline for what histograms and payload chunks cost the message path."""

    __slots__ = ()

    def observe_handler(self, seconds: float) -> None:
        pass

    def observe_age(self, seconds: float | None) -> None:
        pass

    def count_payload(self, messages: Iterable[Mapping[str, object]]) -> None:
        pass


def _observe(memory: mmap.mmap, at: int, bounds: tuple[float, ...], value: float) -> None:
    bucket = at + 8 * bisect.bisect_left(bounds, value)  # le: a value on a bound counts in it
    count_at = at + 8 * (len(bounds) + 1)
    _U64.pack_into(memory, bucket, _U64.unpack_from(memory, bucket)[0] + 1)
    count, total = _COUNT_SUM.unpack_from(memory, count_at)
    _COUNT_SUM.pack_into(memory, count_at, count + 1, total + value)


CHUNK = 64 * 1024  # SQS bills every 64 KiB of a request's payload as one request


def extra_chunks(messages: Iterable[Mapping[str, object]]) -> int:
    """Billed 64 KiB chunks beyond the first of one request carrying ``messages``: their
    bodies and message attributes (names, types and values). The request's own parameters
    and system attributes are left out. Characters are counted first, as bytes only when
    they might reach 64 KiB, so small messages cost a few additions."""
    messages = list(messages)
    if 4 * _payload(messages, len) <= CHUNK:  # UTF-8 takes at most 4 bytes a character
        return 0
    return max(0, math.ceil(_payload(messages, _utf8_size) / CHUNK) - 1)


def _payload(messages: list[Mapping[str, object]], size: Callable[[object], int]) -> int:
    total = 0
    for message in messages:
        body = message.get("Body") or message.get("MessageBody")
        if isinstance(body, str | bytes):
            total += size(body)
        attributes = message.get("MessageAttributes")
        if attributes and isinstance(attributes, dict):
            for name, value in attributes.items():
                total += size(name)
                if isinstance(value, dict):
                    total += sum(size(v) for v in value.values() if isinstance(v, str | bytes))
    return total


def _utf8_size(text: object) -> int:
    return len(text) if isinstance(text, bytes) else len(str(text).encode())


def message_age(attributes: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds since SQS's ``SentTimestamp`` (milliseconds since the epoch), None without
    one. Clocks differ: the host's may be behind AWS's, so the age may come out negative."""
    sent = attributes.get("SentTimestamp")
    if not sent:
        return None
    try:
        return (time.time() if now is None else now) - int(sent) / 1000
    except ValueError:
        return None


# Counter indexes, named for readable call sites in the worker: slot.add(PROCESSED).
(
    PROCESSED,
    FAILED,
    RETRIED,
    DEAD_LETTERED,
    RECEIVES,
    EMPTY_RECEIVES,
    DELETES,
    VISIBILITY_CHANGES,
    SENDS,
    GIVEN_BACK,
    DROPPED,
    EXTRA_CHUNKS,
) = range(len(COUNTERS))
