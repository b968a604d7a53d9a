"""One ``python -m sqsd run -c CONFIG`` per scenario, always stopped, leaving no process.

The configuration writer and the process harness are the test suite's
(``sqsd.testing_daemon``); this module only says how a benchmark configures and waits.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from sqsd.testing_daemon import DaemonProcess, config_text
from sqsd_client import DaemonUnavailable

REPO = Path(__file__).resolve().parent.parent
READY_STATES = {"polling", "idle", "busy"}
BASE_DEFAULTS = {
    "visibility_timeout": 30,
    "wait_time_seconds": 20,
    "idle_sleep_max": 60,
    "batch_size": 10,
    "graceful_timeout": 10,
}


class Daemon:
    """One sqsd master for one scenario: ``with Daemon(...) as daemon: daemon.status()``.

    ``queues`` maps a queue name to its ``[queues.NAME]`` options (receiver, processes,
    ...). Queues are created by the benchmark beforehand, so ``create_queues`` is false.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        queues: dict[str, dict[str, Any]],
        prefix: str,
        endpoint_url: str | None,
        region: str,
        defaults: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        sqsd: dict[str, Any] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.config_path = workdir / "sqsd.toml"
        self.socket_path = str(workdir / "sqsd.sock")
        self.log_path = workdir / "sqsd.log"
        self.queues = queues
        self.expected_workers = sum(
            int(q.get("processes", 1)) * len(q.get("suffixes", [""])) for q in queues.values()
        )
        settings = {
            "imports": ["bench.receivers"],
            "socket": self.socket_path,
            "queue_prefix": prefix,
            "region": region,
            "endpoint_url": endpoint_url or "",
            "create_queues": False,
            "log_format": "json",
            **(sqsd or {}),  # more [sqsd] keys (metrics_listen, say)
        }
        defaults = {**BASE_DEFAULTS, **(defaults or {})}
        self.config_path.write_text(config_text(settings, defaults, queues))
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "SQSD_LOG_LEVEL": "warning",
            **(env or {}),
        }
        self.process: DaemonProcess | None = None

    @property
    def pid(self) -> int:
        """The master's pid."""
        assert self.process is not None
        return self.process.pid

    def launch(self) -> None:
        """Start the master in its own session, without waiting for its workers. Nothing
        watches its process tree meanwhile: the figures stay the daemon's own."""
        self.process = DaemonProcess(
            self.config_path,
            self.socket_path,
            env=self.env,
            cwd=REPO,
            log_path=self.log_path,
            new_session=True,
            watch=False,
        )

    def start(self, timeout: float = 60.0) -> None:
        """Start the master and wait until every worker is up and polling."""
        self.launch()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the expected number of workers all poll (or idle or work)."""
        assert self.process is not None
        last: dict[str, Any] = {}

        def ready() -> dict[str, Any] | None:
            nonlocal last
            try:
                last = self.status()
            except DaemonUnavailable:
                return None
            workers = last.get("workers", [])
            if len(workers) == self.expected_workers and all(
                w.get("state") in READY_STATES for w in workers
            ):
                return last
            return None

        try:
            return self.process.wait_until(ready, timeout, "every worker to poll")
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; last status {last}; {self.log_tail()}") from None

    def status(self) -> dict[str, Any]:
        """The daemon's status reply."""
        assert self.process is not None
        return self.process.status()

    def workers(self) -> list[dict[str, Any]]:
        """The workers in the status reply."""
        return self.status().get("workers", [])

    def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM the master, wait, then kill whatever is left; returns the seconds it took.

        Raises RuntimeError when a process of the daemon had to be killed after ``timeout``.
        """
        if self.process is None:
            return 0.0
        process, self.process = self.process, None
        started = time.monotonic()
        process.graceful_timeout = max(0.0, timeout - 5)
        problems = [p for p in process.shut_down() if not p.startswith("sqsd exited with")]
        took = time.monotonic() - started
        if problems:
            raise RuntimeError(f"{'; '.join(problems)} ({took:.1f}s after SIGTERM); killed them")
        return took

    def log_tail(self, size: int = 3000) -> str:
        """The end of the daemon's log."""
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def __enter__(self) -> Daemon:
        try:
            self.start()
        except BaseException:
            with contextlib.suppress(RuntimeError):
                self.stop()
            raise
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        try:
            self.stop()
        except RuntimeError:
            if exc_type is None:
                raise
