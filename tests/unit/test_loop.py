"""The master's event loop: readers, timers in order, and signals that only queue."""

import os
import signal
import time

import pytest

from sqsd.loop import EventLoop


@pytest.fixture
def loop():
    loop = EventLoop()
    yield loop
    loop.close()


def test_readers_are_called_when_ready(loop):
    read_fd, write_fd = os.pipe()
    got = []
    loop.add_reader(read_fd, lambda: got.append(os.read(read_fd, 10)))
    assert not loop.run_once(0)
    os.write(write_fd, b"x")
    assert loop.run_once(1)
    assert got == [b"x"]
    loop.remove_reader(read_fd)
    os.close(read_fd)
    os.close(write_fd)


def test_timers_run_when_due_in_order_and_shorten_the_wait(loop):
    ran = []
    now = time.monotonic()
    loop.call_at(now + 0.05, lambda: ran.append("second"))
    loop.call_at(now, lambda: ran.append("first"))
    loop.call_at(now + 60, lambda: ran.append("later"))
    started = time.monotonic()
    while len(ran) < 2:
        loop.run_once(10)
    assert time.monotonic() - started < 5
    assert ran == ["first", "second"]


def test_signals_are_queued_and_wake_the_loop(loop):
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        loop.catch_signals([signal.SIGUSR1])
        os.kill(os.getpid(), signal.SIGUSR1)
        assert loop.run_once(5)  # woken by the signal, not the timeout
        assert loop.signals_pending
        assert loop.pop_signals() == [signal.SIGUSR1]
        assert loop.pop_signals() == []
    finally:
        signal.signal(signal.SIGUSR1, previous)
