"""The benchmark's end of the handlers' event socket (see bench/receivers.py)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class EventSink:
    """A Unix datagram socket that collects the events handlers report."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.events: list[dict[str, Any]] = []

    def drain(self) -> list[dict[str, Any]]:
        """Take every event waiting on the socket (without blocking) and return all so far."""
        self.sock.setblocking(False)
        try:
            while True:
                self.events.append(json.loads(self.sock.recv(65536)))
        except BlockingIOError:
            pass
        return self.events

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any] | None:
        """Block until an event for which ``match`` is true arrives; None after ``timeout``."""
        for event in self.drain():
            if match(event):
                return event
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                event = json.loads(self.sock.recv(65536))
            except TimeoutError:
                return None
            self.events.append(event)
            if match(event):
                return event
        return None

    def clear(self) -> None:
        """Forget every event received so far (and any still waiting)."""
        self.drain()
        self.events.clear()

    def close(self) -> None:
        """Close and remove the socket."""
        self.sock.close()
        self.path.unlink(missing_ok=True)
