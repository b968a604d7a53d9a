"""sd_notify never blocks the master: what systemd cannot take now is dropped, and WATCHDOG=1
is tried again at the next turn."""

import socket
import time

import pytest

from sqsd.notify import Notifier


@pytest.fixture
def systemd(tmp_path, monkeypatch):
    """systemd's end of the notify socket, which nobody reads until the test does."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def drain(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_notifications_reach_systemd(systemd):
    notifier = Notifier()
    assert notifier.send("READY=1")
    notifier.status("1 worker running")
    notifier.status("1 worker running")  # unchanged: not sent again
    notifier.watchdog()
    assert drain(systemd) == ["READY=1", "STATUS=1 worker running", "WATCHDOG=1"]


def test_a_full_notify_socket_drops_notifications_without_blocking(systemd):
    notifier = Notifier()
    started = time.monotonic()
    sent = 0
    while notifier.send(f"STATUS={sent}") and sent < 100_000:
        sent += 1
    assert sent < 100_000, "the notify socket never filled up"
    notifier.watchdog()  # dropped: systemd's queue is full
    assert notifier.last_watchdog == 0.0
    assert time.monotonic() - started < 5

    drain(systemd)
    notifier.watchdog()  # the next turn: it goes out
    assert drain(systemd) == ["WATCHDOG=1"]
    notifier.close()


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert not notifier.send("READY=1")
