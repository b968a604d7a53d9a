"""Give-backs per message id, shared by every worker of one master.

A graceful stop (TERM, reload, scale-down, recycling) makes received but unstarted
messages visible again, and SQS counts that receive like any other. Workers record each
give-back here and the ``max_retries`` check subtracts them, so restarts never use up a
message's retries. The table lives in anonymous shared memory created by the master
before it forks; when it is full, a give-back goes unrecorded (the old behaviour).
"""

from __future__ import annotations

import mmap
import struct
import zlib

_ENTRY = struct.Struct("<40sI4x")  # message id, give-back count
_SLOTS = 8192
_PROBES = 32


class GiveBacks:
    """An open-addressing table of message id -> give-back count."""

    def __init__(self, slots: int = _SLOTS):
        self.slots = slots
        self.memory = mmap.mmap(-1, slots * _ENTRY.size)

    def add(self, message_id: str) -> None:
        """Count one give-back of ``message_id``."""
        key = message_id.encode()[:40]
        offset = self._find(key, insert=True)
        if offset is not None:
            _, count = _ENTRY.unpack_from(self.memory, offset)
            _ENTRY.pack_into(self.memory, offset, key, count + 1)

    def count(self, message_id: str) -> int:
        """How often ``message_id`` was given back (0 when unknown)."""
        offset = self._find(message_id.encode()[:40], insert=False)
        return 0 if offset is None else _ENTRY.unpack_from(self.memory, offset)[1]

    def forget(self, message_id: str) -> None:
        """Drop the entry once the message is done with (handled or dead-lettered).
        A tombstone keeps later entries of the same probe chain reachable."""
        offset = self._find(message_id.encode()[:40], insert=False)
        if offset is not None:
            _ENTRY.pack_into(self.memory, offset, _TOMBSTONE, 0)

    def _find(self, key: bytes, *, insert: bool) -> int | None:
        padded = key.ljust(40, b"\0")
        start = zlib.crc32(key) % self.slots
        reusable = None
        for probe in range(_PROBES):
            offset = ((start + probe) % self.slots) * _ENTRY.size
            stored = self.memory[offset : offset + 40]
            if stored == padded:
                return offset
            if stored == _EMPTY:
                if not insert:
                    return None
                return reusable if reusable is not None else offset
            if stored == _TOMBSTONE and reusable is None:
                reusable = offset
        return reusable if insert else None


_EMPTY = b"\0" * 40
_TOMBSTONE = b"\xff" * 40
