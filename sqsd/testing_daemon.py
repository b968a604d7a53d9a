"""A real ``sqsd run`` for integration tests and benchmarks, watched from outside.

``config_text`` writes sqsd's TOML, ``DaemonProcess`` starts ``python -m sqsd run -c
CONFIG`` and stops it, proving that no process it forked is left, and ``LocalDaemon`` is
what users get (the ``sqsd_daemon`` fixture of the pytest plugin), against moto's server
on loopback. sqsd's own test suite and benchmarks build on the same pieces::

    endpoint = LocalEndpoint.start()
    with LocalDaemon.start(tmp_path, endpoint.url, imports=["myapp.receivers"]) as daemon:
        sqsd.configure(daemon.config_path)
        myapp.receivers.send_email("hello")
        daemon.wait_idle()
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

import sqsd_client
from sqsd.states import WorkerState

SAMPLE_INTERVAL = 0.05  # how often a watched daemon's process tree is looked at


def config_text(
    daemon: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
    queues: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """An sqsd configuration file: ``[sqsd]``, ``[defaults]`` and one ``[queues."NAME"]``
    table per queue, from plain values (str, bool, int, float and lists of them)."""
    lines = ["[sqsd]", *_pairs(daemon), "", "[defaults]", *_pairs(defaults or {})]
    for name, table in (queues or {}).items():
        lines += ["", f"[queues.{json.dumps(name)}]", *_pairs(table)]
    return "\n".join(lines) + "\n"


def _pairs(table: Mapping[str, Any]) -> list[str]:
    return [f"{key} = {_value(value)}" for key, value in table.items()]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


class DaemonProcess:
    """One ``sqsd run`` process and everything it forks.

    With ``watch`` a thread remembers every descendant it ever sees (workers come and go),
    so ``shut_down()`` can prove that none outlived the master; without it (benchmarks),
    the processes alive when the stop begins are the ones checked.
    """

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        socket_path: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        argv: Sequence[str] | None = None,
        new_session: bool = False,
        graceful_timeout: float = 30.0,
        watch: bool = True,
    ) -> None:
        self.config_path = Path(config_path)
        self.socket_path = Path(socket_path)
        self.log_path = Path(log_path) if log_path is not None else None
        self.graceful_timeout = graceful_timeout
        self.killed = False  # the master was killed on purpose: its exit is no failure
        argv = argv or [sys.executable, "-m", "sqsd", "run", "-c", str(self.config_path)]
        with contextlib.ExitStack() as files:
            out = files.enter_context(open(self.log_path, "ab")) if self.log_path else None
            self.proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=new_session,
            )
        self.master = psutil.Process(self.proc.pid)
        self.client = sqsd_client.Client(str(self.socket_path), timeout=10)
        self.seen: dict[int, psutil.Process] = {}
        self._sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        if watch:
            self._sampler.start()

    @property
    def pid(self) -> int:
        """The master's pid."""
        return self.proc.pid

    # -- observation ---------------------------------------------------------------------

    def _sample(self) -> None:
        while not self._sampling.is_set():
            self.descendants()
            self._sampling.wait(SAMPLE_INTERVAL)

    def descendants(self) -> list[psutil.Process]:
        """All current descendants of the master; each one is remembered for the stop."""
        try:
            children = self.master.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        except (psutil.Error, IndexError, ValueError):
            # psutil reads every /proc/PID/stat; one that vanishes mid-read can come back
            # empty (IndexError). The next sample, 50 ms later, sees the tree again.
            return []
        for child in children:
            self.seen.setdefault(child.pid, child)
        return children

    def status(self) -> dict[str, Any]:
        """The daemon's status reply."""
        return self.client.status()

    def log_text(self) -> str:
        """What the daemon wrote so far ("" without a log file)."""
        try:
            return self.log_path.read_text(errors="replace") if self.log_path else ""
        except FileNotFoundError:
            return ""

    def wait_until(
        self, predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
    ) -> Any:
        """Poll ``predicate`` until it returns something truthy, and return that. Raises
        RuntimeError when the daemon exits first, TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None and not self.killed:
                raise RuntimeError(f"sqsd exited with {self.proc.returncode} waiting for {what}")
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(interval)

    def alive_processes(self) -> list[psutil.Process]:
        """The master and every descendant seen, those still running."""
        return [p for p in [self.master, *self.seen.values()] if alive(p)]

    # -- stopping ------------------------------------------------------------------------

    def terminate(self, timeout: float | None = None) -> int:
        """SIGTERM the master and wait for it; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout or self.graceful_timeout + 5)

    def kill_master(self) -> None:
        """SIGKILL the master, as the OOM killer would."""
        self.killed = True
        self.master.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=5)

    def shut_down(self, grace: float = 3.0) -> list[str]:
        """Stop the daemon (SIGTERM, then SIGKILL for what is left); return what went
        wrong, empty when it stopped cleanly and left no process behind."""
        problems = []
        self.descendants()
        if self.proc.poll() is None:
            try:
                code = self.terminate()
                if code != 0:
                    problems.append(f"sqsd exited with {code} after SIGTERM")
            except subprocess.TimeoutExpired:
                problems.append(
                    f"sqsd did not stop within graceful_timeout + 5 s ({self.graceful_timeout:g}"
                    " + 5 s) of SIGTERM"
                )
        self._sampling.set()
        if self._sampler.is_alive():
            self._sampler.join()
        deadline = time.monotonic() + grace
        while self.alive_processes() and time.monotonic() < deadline:
            time.sleep(SAMPLE_INTERVAL)
        leftovers = self.alive_processes()
        if leftovers:
            problems.append(
                "processes still alive after the master exited: "
                + ", ".join(describe(p) for p in leftovers)
            )
            for process in leftovers:
                with contextlib.suppress(psutil.Error):
                    process.kill()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        return problems


class LocalDaemon(DaemonProcess):
    """A daemon for users' integration tests: its own configuration and control socket,
    queues created on demand, short polls."""

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
        """Write a configuration and start sqsd; return once every worker polls or idles."""
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
        config_path = Path(directory) / "sqsd.toml"
        config_path.write_text(config_text(daemon, defaults, queues))
        env = {**os.environ, "SQSD_CONFIG": str(config_path)}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.setdefault(key, "testing")
        instance = cls(config_path, socket_path, env=env)
        instance.wait_until(instance._ready, timeout, "sqsd to start its workers")
        return instance

    def _ready(self) -> bool:
        try:
            workers = self.status()["workers"]
        except (sqsd_client.DaemonUnavailable, sqsd_client.CommandFailed):
            return False
        ready = {WorkerState.POLLING.label, WorkerState.IDLE.label}
        return bool(workers) and all(w["state"] in ready for w in workers)

    def wait_idle(self, queues: list[str] | tuple[str, ...] = (), timeout: float = 30.0) -> None:
        """Return once the queues are empty and their workers idle (``sqsctl wait``)."""
        self.client.wait(list(queues), timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """Stop gracefully; raise if any process of this daemon is still alive after."""
        self.graceful_timeout = max(0.0, timeout - 5)
        problems = [p for p in self.shut_down() if p.startswith("processes still alive")]
        with contextlib.suppress(OSError):
            os.rmdir(self.socket_path.parent)
        if problems:
            raise AssertionError(f"sqsd left processes running: {problems}")
        return self.proc.returncode

    def __enter__(self) -> LocalDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def alive(process: psutil.Process) -> bool:
    """True while ``process`` runs; a zombie counts as gone."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {' '.join(process.cmdline())!r}"
    except psutil.Error:
        return str(process.pid)
