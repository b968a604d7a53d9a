"""Handler starts per message id, kept in a small memory-mapped file on this host.

``max_retries`` counts handler *starts*, never plain receives: a worker records a start
here just before it calls the handler, marks the message finished when the handler
returned (its delete follows in a batch) and forgets it once it is dead-lettered or
deleted at once. A message whose handler crashed its worker every time is thus given up
on after ``max_retries + 1`` starts, while the batch-mates it took down with it (never
started) and messages given back at a graceful stop (never started) keep every try; and a
message whose handler returned but whose delete was lost is deleted when it comes back,
never counted as a failure.

The table is a file in the runtime directory (next to the control socket and named after
it: ``/run/sqsd/sqsd.sock`` has ``/run/sqsd/sqsd.attempts``), created by the
master before it forks, so it survives a worker crash and a master restart on this host.
It is an open-addressing hash table of fixed size:

- header (64 bytes): magic, version, slot count, entry size;
- entries (48 bytes each): the message id (up to 40 bytes; longer or odd ids are stored as
  a hash), the number of starts and when the entry was last written (epoch seconds).

Several worker processes write it. Each operation holds a POSIX record lock on the file
(and a thread lock inside the process), so an entry is never torn. Nothing stronger is
needed: SQS's visibility timeout keeps one message in one worker at a time, so two workers
counting the same message at once only happens when a visibility lapse already let it run
twice; a start lost to that race costs one extra try, never a message.

When a probe chain is full, the entry written longest ago in it is evicted: its message
then counts from zero again on this host, and SQS's receive count (``max_receives``)
remains the safety net. Entries older than SQS's longest retention are free for reuse.
When the file cannot be created or opened safely, the table lives in anonymous memory
shared by the master's forks (logged once): it then only survives worker crashes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import stat
import struct
import threading
import time
import zlib
from collections.abc import Iterator

from sqsd import logs

MAGIC = b"SQSDATT1"
VERSION = 1
DEFAULT_SLOTS = 8192
SUFFIX = ".attempts"
_HEADER = struct.Struct("<8sIII44x")  # magic, version, slots, entry size
_ENTRY = struct.Struct("<40sII")  # message id, starts, last written (epoch seconds)
_KEY_SIZE = 40
_PROBES = 32
_EMPTY = b"\0" * _KEY_SIZE
_TOMBSTONE = b"\xff" * _KEY_SIZE
_DONE = 0x8000_0000  # in the starts field: the handler returned, only the delete was left
STALE_AFTER = 15 * 86400  # longer than SQS keeps any message (14 days)
assert _HEADER.size == 64


class AttemptTable:
    """Message id -> handler starts, shared by the worker processes of this host."""

    def __init__(self, path: str | None = None, slots: int = DEFAULT_SLOTS) -> None:
        """Open (creating or recreating when needed) the table file at ``path``; with
        ``None``, anonymous shared memory (inherited across fork). Raises OSError when the
        file cannot be used safely; ``open()`` falls back instead."""
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.path = path
        self.slots = slots
        self.size = _HEADER.size + slots * _ENTRY.size
        self.fd = -1
        self._lock = threading.Lock()
        if path is None:
            self.memory = mmap.mmap(-1, self.size)
            self._write_header()
            return
        self.fd = _open_private(path)
        try:
            self._lock_file()
            try:
                if not self._valid_file():
                    os.ftruncate(self.fd, 0)  # zero every entry, whatever was there
                    os.ftruncate(self.fd, self.size)
                self.memory = mmap.mmap(self.fd, self.size)
                if not self._valid_header():
                    self._write_header()
            finally:
                self._unlock_file()
        except BaseException:
            os.close(self.fd)
            raise

    @classmethod
    def open(cls, path: str | None, slots: int = DEFAULT_SLOTS) -> AttemptTable:
        """The table at ``path``, or one in anonymous memory (with a warning) when that
        file cannot be created or opened safely."""
        if path is not None:
            try:
                return cls(path, slots)
            except OSError as exc:
                logs.get("sqsd.attempts").warning(
                    "attempts file unusable; counting handler starts in memory (they will "
                    "not survive a restart of the master)",
                    path=path,
                    error=str(exc),
                )
        return cls(None, slots)

    def close(self) -> None:
        """Unmap the table and close its file."""
        with contextlib.suppress(Exception):
            self.memory.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- the operations ------------------------------------------------------------------

    def start(self, message_id: str) -> int:
        """Record one handler start of ``message_id`` (before the handler runs); returns
        the starts so far, this one included."""
        key = _key(message_id)
        with self._locked():
            offset = self._find(key, insert=True)
            _, starts, _ = _ENTRY.unpack_from(self.memory, offset)
            if self.memory[offset : offset + _KEY_SIZE] != key:
                starts = 0  # a free, stale or evicted slot: this message starts afresh
            starts = min((starts & ~_DONE) + 1, _DONE - 1)
            _ENTRY.pack_into(self.memory, offset, key, starts, _now())
            return starts

    def starts(self, message_id: str) -> int:
        """How often ``message_id``'s handler started on this host; 0 when unknown."""
        key = _key(message_id)
        with self._locked():
            offset = self._find(key, insert=False)
            if offset is None:
                return 0
            return int(_ENTRY.unpack_from(self.memory, offset)[1]) & ~_DONE

    def finish(self, message_id: str) -> None:
        """Mark ``message_id``'s handler as returned, just before its delete is queued. If
        the delete is lost (the worker dies first), the next receive sees ``finished`` and
        deletes the message instead of counting a failed start. From now on the entry's
        slot may be reused, as after ``forget``: no second call is needed after the delete."""
        key = _key(message_id)
        with self._locked():
            offset = self._find(key, insert=False)
            if offset is not None:
                _, starts, _ = _ENTRY.unpack_from(self.memory, offset)
                _ENTRY.pack_into(self.memory, offset, key, starts | _DONE, _now())

    def finished(self, message_id: str) -> bool:
        """Whether ``message_id``'s handler returned on this host (``finish``), as long as
        its entry was not reused since."""
        key = _key(message_id)
        with self._locked():
            offset = self._find(key, insert=False)
            return offset is not None and bool(_ENTRY.unpack_from(self.memory, offset)[1] & _DONE)

    def forget(self, message_id: str) -> None:
        """Drop ``message_id`` once it left the queue (deleted, dead-lettered, logged).
        A tombstone keeps later entries of the same probe chain reachable."""
        key = _key(message_id)
        with self._locked():
            offset = self._find(key, insert=False)
            if offset is not None:
                _ENTRY.pack_into(self.memory, offset, _TOMBSTONE, 0, 0)

    # -- inside ------------------------------------------------------------------------

    def _find(self, key: bytes, *, insert: bool) -> int | None:
        """The offset of ``key``'s entry; with ``insert``, else of a slot to put it in
        (free, stale, or the oldest of the probe chain). Always an offset with ``insert``."""
        start = zlib.crc32(key) % self.slots
        reusable: int | None = None
        oldest: tuple[int, int] | None = None  # (written, offset)
        stale_before = _now() - STALE_AFTER
        for probe in range(min(_PROBES, self.slots)):
            offset = _HEADER.size + ((start + probe) % self.slots) * _ENTRY.size
            stored, starts, written = _ENTRY.unpack_from(self.memory, offset)
            if stored == key:
                return offset
            if stored == _EMPTY:
                if not insert:
                    return None
                return reusable if reusable is not None else offset
            free = stored == _TOMBSTONE or starts & _DONE or written < stale_before
            if reusable is None and free:
                reusable = offset
            if oldest is None or written < oldest[0]:
                oldest = (written, offset)
        if not insert:
            return None
        if reusable is not None:
            return reusable
        assert oldest is not None
        return oldest[1]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            self._lock_file()
            try:
                yield
            finally:
                self._unlock_file()

    def _lock_file(self) -> None:
        if self.fd >= 0:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def _unlock_file(self) -> None:
        if self.fd >= 0:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def _valid_file(self) -> bool:
        if os.fstat(self.fd).st_size != self.size:
            return False
        header = os.pread(self.fd, _HEADER.size, 0)
        return header == self._header()

    def _valid_header(self) -> bool:
        return bytes(self.memory[: _HEADER.size]) == self._header()

    def _header(self) -> bytes:
        return _HEADER.pack(MAGIC, VERSION, self.slots, _ENTRY.size)

    def _write_header(self) -> None:
        self.memory[: _HEADER.size] = self._header()


def default_path(socket_path: str) -> str:
    """Where the table of the daemon listening on ``socket_path`` lives: beside it, named
    after it (``/run/sqsd/sqsd.sock`` -> ``/run/sqsd/sqsd.attempts``), so that several
    instances sharing one runtime directory keep their own."""
    directory, name = os.path.split(os.path.abspath(socket_path))
    stem = os.path.splitext(name)[0] or name
    return os.path.join(directory, f"{stem}{SUFFIX}")


def _open_private(path: str) -> int:
    """Open or create ``path`` for this user only: never through a symbolic link, only a
    regular file with one link, owned by us; its mode is narrowed to 0600."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path}: not a regular file")
        if info.st_uid != os.geteuid():
            raise OSError(f"{path}: owned by uid {info.st_uid}, not by this user")
        if info.st_nlink != 1:
            raise OSError(f"{path}: has {info.st_nlink} links")
        if stat.S_IMODE(info.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _key(message_id: str) -> bytes:
    raw = message_id.encode("utf-8", "surrogatepass")
    if 0 < len(raw) <= _KEY_SIZE and raw.rstrip(b"\0") == raw and raw != _TOMBSTONE:
        return raw.ljust(_KEY_SIZE, b"\0")
    # Long, empty or odd ids: a hash, marked so that it cannot equal a plain id.
    return b"\x01" + hashlib.blake2b(raw, digest_size=_KEY_SIZE - 1).digest()


def _now() -> int:
    return int(time.time())
