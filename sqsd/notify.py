"""systemd integration: the sd_notify datagram protocol and the parent-death signal.

No dependency: a notification is one datagram to ``$NOTIFY_SOCKET`` (an abstract socket
when the path starts with "@"); everything is a no-op when the variable is unset. Sending
never blocks the master: a datagram systemd cannot take right now is dropped (WATCHDOG=1
goes out again at the next turn of the loop).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import time

from sqsd.redact import redact

PR_SET_PDEATHSIG = 1


class Notifier:
    """Sends READY=1, STATUS=, WATCHDOG=1, RELOADING=1 and STOPPING=1 to systemd."""

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.enabled = bool(address)
        self.sock: socket.socket | None = None
        if self.enabled:
            self.sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            )
        usec = os.environ.get("WATCHDOG_USEC", "")
        watchdog_pid = os.environ.get("WATCHDOG_PID", "")
        for_us = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and for_us else 0.0
        self.last_watchdog = 0.0
        self.last_status = ""

    def send(self, message: str) -> bool:
        """Send one notification now, or drop it; True when it went out."""
        if self.sock is None:
            return False
        try:
            self.sock.sendto(message.encode(), self.address)
        except OSError:  # BlockingIOError included: systemd's queue is full
            return False
        return True

    def reloading(self) -> None:
        """RELOADING=1 with the time systemd asks to come with it (READY=1 ends it)."""
        self.send(
            f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )

    def status(self, text: str) -> None:
        """STATUS= only when it changed (and was sent); redacted: `systemctl status` shows
        it to anyone."""
        if text != self.last_status and self.send(f"STATUS={redact(text)}"):
            self.last_status = text

    def watchdog(self) -> None:
        """WATCHDOG=1 at half the interval systemd asked for."""
        if not self.watchdog_interval:
            return
        now = time.monotonic()
        if now - self.last_watchdog >= self.watchdog_interval and self.send("WATCHDOG=1"):
            self.last_watchdog = now

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def set_parent_death_signal(signum: int) -> None:
    """Ask the kernel to send ``signum`` to this process when its parent dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
