"""Per-worker slots in shared memory: the worker writes its state and counters, the master
reads them for status and hang detection without any message on the hot path.

One anonymous shared mapping is created by the master before forking; each worker owns
one fixed-size slot. Writes are unsynchronised single-writer updates: a reader may see a
half-updated slot for a moment, which is fine for monitoring.
"""

from __future__ import annotations

import mmap
import struct
import time

from sqsd.states import SlotView, WorkerState  # SlotView: what read() returns

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
)
MESSAGE_ID_SIZE = 80

# state, heartbeat, state_since, message_started, idle_until, counters, message id, and
# what the last receive returned: messages, oldest age, idle since (autoscaling's signals)
_LAYOUT = struct.Struct(f"<B7xdddd{len(COUNTERS)}Q{MESSAGE_ID_SIZE}sQdd")
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
SLOT_SIZE = 256
assert _LAYOUT.size <= SLOT_SIZE


class Scoreboard:
    """``size`` slots in one shared anonymous mapping (pages are only backed once used)."""

    def __init__(self, size: int = 4096):
        self.size = size
        self.memory = mmap.mmap(-1, SLOT_SIZE * size)
        self.free = list(range(size - 1, -1, -1))

    def allocate(self) -> Slot:
        """Take a free slot and zero it (the master, before forking its worker)."""
        if not self.free:
            raise RuntimeError(f"more than {self.size} workers")
        index = self.free.pop()
        slot = Slot(self.memory, index)
        slot.reset()
        return slot

    def release(self, slot: Slot) -> None:
        self.free.append(slot.index)


class Slot:
    """One worker's slot: written by the worker, read by the master."""

    __slots__ = ("memory", "index", "offset")

    def __init__(self, memory: mmap.mmap, index: int):
        self.memory = memory
        self.index = index
        self.offset = index * SLOT_SIZE

    def reset(self) -> None:
        now = time.monotonic()
        counters = [0] * len(COUNTERS)
        # A new worker counts as idle from its start until its first receive brings work.
        _LAYOUT.pack_into(
            self.memory, self.offset, 0, now, now, 0.0, 0.0, *counters, b"", 0, 0.0, now
        )

    def set_state(self, state: WorkerState, *, idle_until: float = 0.0) -> None:
        now = time.monotonic()
        _HEAD.pack_into(self.memory, self.offset, state, now, now)
        _FLOAT.pack_into(self.memory, self.offset + _IDLE_UNTIL_AT, idle_until)

    def beat(self) -> None:
        _FLOAT.pack_into(self.memory, self.offset + _HEARTBEAT_AT, time.monotonic())

    def start_message(self, message_id: str) -> None:
        now = time.monotonic()
        _HEAD.pack_into(self.memory, self.offset, WorkerState.BUSY, now, now)
        _FLOAT.pack_into(self.memory, self.offset + _MESSAGE_STARTED_AT, now)
        _MESSAGE_ID.pack_into(self.memory, self.offset + _MESSAGE_ID_AT, message_id.encode())

    def end_message(self) -> None:
        _FLOAT.pack_into(self.memory, self.offset + _MESSAGE_STARTED_AT, 0.0)

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
        (value,) = _COUNTER.unpack_from(self.memory, at)
        _COUNTER.pack_into(self.memory, at, value + amount)

    def read(self) -> SlotView:
        state, heartbeat, since, started, idle_until, *rest = _LAYOUT.unpack_from(
            self.memory, self.offset
        )
        counters = dict(zip(COUNTERS, rest[: len(COUNTERS)], strict=True))
        message_id, last_batch, oldest_age, idle_since = rest[len(COUNTERS) :]
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
        )


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
) = range(len(COUNTERS))
