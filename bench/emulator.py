"""The fauxqs SQS emulator, started on a free loopback port for one benchmark run."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

from sqsd.local import free_port

FAUXQS_VERSION = "1.9.2"
FAUXQS_DIR = Path(__file__).resolve().parent / "node_modules" / "fauxqs"


def installed_version() -> str | None:
    """The fauxqs version under bench/node_modules, or None when it is not installed."""
    try:
        return json.loads((FAUXQS_DIR / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


class Fauxqs:
    """A fauxqs process: ``with Fauxqs() as fq: fq.url`` starts it and always stops it.

    fauxqs logs every request to stdout, which is thrown away; stderr goes to ``log_path``.
    Its CLI binds all interfaces; the benchmark only ever talks to it on 127.0.0.1.
    """

    def __init__(self, log_path: Path, port: int | None = None, start_timeout: float = 30.0):
        self.log_path = log_path
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start node and wait until the emulator answers its health check."""
        version = installed_version()
        if version is None:
            raise RuntimeError(
                f"fauxqs is not installed in {FAUXQS_DIR.parent}; "
                f"run: npm install --prefix bench --no-save fauxqs@{FAUXQS_VERSION}"
            )
        env = {**os.environ, "FAUXQS_PORT": str(self.port)}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                ["node", str(FAUXQS_DIR / "dist" / "cli.js")],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.log_path.read_text(errors="replace")
                raise RuntimeError(f"fauxqs exited with {self.process.returncode}: {error[-2000:]}")
            if self._healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fauxqs did not answer on {self.url} within {self.start_timeout:g}s")

    def stop(self) -> None:
        """Stop the emulator (TERM, then KILL after 5 s); safe to call twice."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False

    def __enter__(self) -> Fauxqs:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
