"""The master's one event loop: a selector for file descriptors, timers, and signals that
only wake it (``signal.set_wakeup_fd``).

The master and the control plane share it: each registers what it waits for, neither
reaches into the other. A signal handler does nothing but queue the signal; the loop's
owner takes them with ``pop_signals()`` and does the work outside the handler.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import selectors
import signal
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

Callback = Callable[[], None]


class EventLoop:
    """One selector loop; ``run_once(timeout)`` serves what is ready, then due timers."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._signals: list[int] = []
        self._caught: tuple[int, ...] = ()
        self._timers: list[tuple[float, int, Callback]] = []  # a heap
        self._order = itertools.count()  # ties between timers run in the order they were set
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        for sock in (self._wakeup_r, self._wakeup_w):
            sock.setblocking(False)

    # -- what the loop waits for ---------------------------------------------------------

    def add_reader(self, fd: Any, callback: Callback) -> None:
        """Call ``callback()`` whenever ``fd`` (a descriptor or socket) is readable."""
        self.selector.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: Any) -> None:
        self.selector.unregister(fd)

    def call_at(self, when: float, callback: Callback) -> None:
        """Call ``callback()`` once ``time.monotonic()`` reaches ``when``."""
        heapq.heappush(self._timers, (when, next(self._order), callback))

    def catch_signals(self, signums: Iterable[int]) -> None:
        """Queue each of ``signums`` for ``pop_signals()`` and wake the loop when one comes."""
        self._caught = tuple(signums)
        signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
        for signum in self._caught:
            signal.signal(signum, self._queue_signal)
        self.add_reader(self._wakeup_r, self._drain_wakeups)

    def pop_signals(self) -> list[int]:
        """The signals caught since the last call, oldest first."""
        signals, self._signals = self._signals, []
        return signals

    @property
    def signals_pending(self) -> bool:
        return bool(self._signals)

    # -- running -----------------------------------------------------------------------

    def run_once(self, timeout: float) -> bool:
        """Wait up to ``timeout`` (less when a timer is due sooner), call the callbacks of
        what is ready, then the due timers. True when a file descriptor was ready or a
        timer ran: the turn served someone (the master leaves supervision to its pace)."""
        if self._timers:
            timeout = min(timeout, max(0.0, self._timers[0][0] - time.monotonic()))
        events = self.selector.select(timeout)
        for key, _ in events:
            key.data()
        now = time.monotonic()
        ran = False
        while self._timers and self._timers[0][0] <= now:
            _, _, callback = heapq.heappop(self._timers)
            callback()
            ran = True
        return bool(events) or ran

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self.selector.close()
        self._wakeup_r.close()
        self._wakeup_w.close()

    def close_in_child(self) -> None:
        """In a forked child: default signal handling back, the loop's descriptors closed.
        The selector is closed without unregistering: that would unregister the parent."""
        self.close()
        for signum in self._caught:
            signal.signal(signum, signal.SIG_DFL)
        self._signals.clear()
        self._timers.clear()

    # -- signal plumbing -----------------------------------------------------------------

    def _queue_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wakeup_r.recv(4096):
                pass
