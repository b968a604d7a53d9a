"""Run ``python -m sqsd run -c CONFIG`` for one scenario and always stop it, leaving no process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from sqsd_client import Client, DaemonUnavailable

REPO = Path(__file__).resolve().parent.parent
READY_STATES = {"polling", "idle", "busy"}


def toml_value(value: Any) -> str:
    """One TOML value: str, bool, int, float or a list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml_config(
    sqsd: dict[str, Any], defaults: dict[str, Any], queues: dict[str, dict[str, Any]]
) -> str:
    """The text of an sqsd config file with the given sections."""
    lines = ["[sqsd]"] + [f"{k} = {toml_value(v)}" for k, v in sqsd.items()]
    lines += ["", "[defaults]"] + [f"{k} = {toml_value(v)}" for k, v in defaults.items()]
    for name, options in queues.items():
        lines += ["", f"[queues.{name}]"] + [f"{k} = {toml_value(v)}" for k, v in options.items()]
    return "\n".join(lines) + "\n"


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
        }
        base = {
            "visibility_timeout": 30,
            "wait_time_seconds": 20,
            "idle_sleep_max": 60,
            "batch_size": 10,
            "graceful_timeout": 10,
        }
        self.config_path.write_text(toml_config(settings, {**base, **(defaults or {})}, queues))
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "SQSD_LOG_LEVEL": "warning",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.client = Client(self.socket_path, timeout=10)

    @property
    def pid(self) -> int:
        """The master's pid."""
        assert self.process is not None
        return self.process.pid

    def launch(self) -> None:
        """Start the master in its own session, without waiting for its workers."""
        command = [sys.executable, "-m", "sqsd", "run", "-c", str(self.config_path)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def start(self, timeout: float = 60.0) -> None:
        """Start the master and wait until every worker is up and polling."""
        self.launch()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the expected number of workers all poll (or idle or work)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"sqsd exited with {self.process.returncode}: {self.log_tail()}")
            try:
                last = self.status()
            except DaemonUnavailable:
                time.sleep(0.05)
                continue
            workers = last.get("workers", [])
            if len(workers) == self.expected_workers and all(
                w.get("state") in READY_STATES for w in workers
            ):
                return last
            time.sleep(0.05)
        raise RuntimeError(f"sqsd not ready in {timeout:g}s; last status {last}; {self.log_tail()}")

    def status(self) -> dict[str, Any]:
        """The daemon's status reply."""
        return self.client.status()

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
        try:
            master = psutil.Process(process.pid)
            family = [master, *master.children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
        left = max(0.1, timeout - (time.monotonic() - started))
        _, alive = psutil.wait_procs(family, timeout=left)
        took = time.monotonic() - started
        if not alive and process.poll() is not None:
            return took
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise RuntimeError(
            f"sqsd left {len(alive)} process(es) {[p.pid for p in alive]} "
            f"{took:.1f}s after SIGTERM; killed them"
        )

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
