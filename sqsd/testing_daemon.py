"""A real ``sqsd run`` for users' integration tests, against moto's server on loopback.

The pytest plugin wraps it as the ``sqsd_daemon`` fixture; it can also be used directly::

    endpoint = LocalEndpoint.start()
    with LocalDaemon.start(tmp_path, endpoint.url, imports=["myapp.receivers"]) as daemon:
        sqsd.configure(daemon.config_path)
        myapp.receivers.send_email("hello")
        daemon.wait_idle()
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

import sqsd_client


class LocalDaemon:
    """One ``sqsd run`` process with its own configuration and control socket."""

    def __init__(self, process: subprocess.Popen[bytes], config_path: Path, socket_path: str):
        self.process = process
        self.config_path = config_path
        self.socket_path = socket_path
        self.client = sqsd_client.Client(socket_path)
        self.children: set[int] = set()

    @classmethod
    def start(
        cls,
        directory: str | os.PathLike[str],
        endpoint_url: str,
        *,
        imports: list[str] | tuple[str, ...] = (),
        queues: dict[str, dict[str, Any]] | None = None,
        defaults: dict[str, Any] | None = None,
        timeout: float = 30.0,
        **daemon_keys: Any,
    ) -> LocalDaemon:
        """Write a configuration (queues created on demand, short polls) and start sqsd."""
        directory = Path(directory)
        socket_dir = tempfile.mkdtemp(prefix="sqsd-")  # Unix socket paths must stay short
        socket_path = os.path.join(socket_dir, "sqsd.sock")
        daemon = {
            "imports": list(imports),
            "socket": socket_path,
            "endpoint_url": endpoint_url,
            "region": "us-east-1",
            "create_queues": True,
            **daemon_keys,
        }
        defaults = {"wait_time_seconds": 1, "idle_sleep_max": 1, **(defaults or {})}
        config_path = directory / "sqsd.toml"
        config_path.write_text(to_toml(daemon, defaults, queues or {}))
        env = {**os.environ, "SQSD_CONFIG": str(config_path)}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.setdefault(key, "testing")
        process = subprocess.Popen(
            [sys.executable, "-m", "sqsd", "run", "-c", str(config_path)], env=env
        )
        instance = cls(process, config_path, socket_path)
        instance.wait_until(instance._ready, timeout, "sqsd to start its workers")
        return instance

    def _ready(self) -> bool:
        try:
            workers = self.client.status()["workers"]
        except (sqsd_client.DaemonUnavailable, sqsd_client.CommandFailed):
            return False
        self.children.update(w["pid"] for w in workers if w.get("pid"))
        return bool(workers) and all(w["state"] in ("polling", "idle") for w in workers)

    def wait_until(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.process.poll() is not None:
                raise RuntimeError(f"sqsd exited with {self.process.returncode} waiting for {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.05)

    def wait_idle(self, queues: list[str] | tuple[str, ...] = (), timeout: float = 30.0) -> None:
        """Return once the queues are empty and their workers idle (``sqsctl wait``)."""
        self.client.wait(list(queues), timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """Stop gracefully; raise if any process of this daemon is still alive after."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(self.socket_path))
        survivors = [pid for pid in self.children if _alive(pid)]
        if survivors:
            raise AssertionError(f"sqsd left processes running: {survivors}")
        return self.process.returncode

    def __enter__(self) -> LocalDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def to_toml(daemon: dict[str, Any], defaults: dict[str, Any], queues: dict[str, Any]) -> str:
    """The small subset of TOML sqsd's configuration uses: scalars and lists of strings."""
    lines = ["[sqsd]", *_pairs(daemon), "", "[defaults]", *_pairs(defaults)]
    for name, table in queues.items():
        lines += ["", f'[queues."{name}"]', *_pairs(table)]
    return "\n".join(lines) + "\n"


def _pairs(table: dict[str, Any]) -> list[str]:
    return [f"{key} = {_value(value)}" for key, value in table.items()]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
