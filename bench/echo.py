"""The floor for wake() with a daemon up: the smallest Python server that can answer it.

One selector loop on a Unix stream socket that answers every line with
``{"ok": true, "woken": 1}``. ``sqsd_client.wake()`` against it costs what connecting,
one request line and one reply cost from Python on this host, with no daemon work at all.

``python -m bench.echo SOCKET_PATH`` serves until killed.
"""

from __future__ import annotations

import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.daemon import REPO

REPLY = b'{"ok": true, "woken": 1}\n'


def serve(path: str) -> None:
    """Answer every request line on ``path`` until killed."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                conn, _ = listener.accept()
                conn.setblocking(False)
                selector.register(conn, selectors.EVENT_READ)
                continue
            conn = key.fileobj  # type: ignore[assignment]
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                continue
            if data:
                conn.send(REPLY * data.count(b"\n"))
            else:
                selector.unregister(conn)
                conn.close()


class EchoServer:
    """``with EchoServer(path):`` runs ``serve(path)`` in a child process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> EchoServer:
        command = [sys.executable, "-m", "bench.echo", str(self.path)]
        self.process = subprocess.Popen(command, cwd=REPO)
        deadline = time.monotonic() + 10
        while not self.path.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.__exit__()
                raise RuntimeError("the echo server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        self.path.unlink(missing_ok=True)


if __name__ == "__main__":
    serve(sys.argv[1])
