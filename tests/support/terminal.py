"""A command in a pseudo-terminal, read through a terminal emulator (pyte): what a person
would see on the screen, keys typed at it, and how it ends."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import struct
import termios
import time
from collections.abc import Callable

import pyte


class Terminal:
    """``argv`` running as the session leader of a new pty of ``columns`` × ``rows``."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str,
                 columns: int = 120, rows: int = 30):
        self.screen = pyte.Screen(columns, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        self.code: int | None = None
        pid, fd = os.forkpty()
        if pid == 0:  # the child: size the terminal before the program looks at it
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
                os.chdir(cwd)
                os.execvpe(argv[0], argv, {**env, "TERM": "xterm", "COLUMNS": "",
                                           "LINES": ""})
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def read(self, timeout: float = 0.1) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                data = b""
            self.raw += data
            self.stream.feed(data)

    def wait_for(self, predicate: Callable[[str], object], timeout: float = 15.0,
                 what: str = "") -> str:
        """Read until ``predicate(screen text)`` holds; the screen text."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read()
            text = self.text()
            if predicate(text):
                return text
        raise AssertionError(f"timed out waiting for {what or predicate}; screen:\n{self.text()}")

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait(self, timeout: float = 10.0) -> int:
        """The exit code, reading the screen until the process ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read(0.05)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.read(0.05)
                self.code = os.waitstatus_to_exitcode(status)
                return self.code
        raise AssertionError(f"still running after {timeout}s; screen:\n{self.text()}")

    def close(self) -> None:
        if self.code is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
