"""The daemon harness of sqsd's own suite: a ``DaemonProcess`` observed from outside, by
its process titles and raw control requests as well as by its status."""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from sqsd.testing_daemon import DaemonProcess, alive

REPO = Path(__file__).resolve().parents[2]
STARTING = ("starting", None)  # worker states before its queue is resolved
WORKER_TITLE = re.compile(
    r"^sqsd: worker (?P<queue>[^\s:]+)(?::(?P<suffix>\S+))?(?: (?P<state>\S+))?"
)


@dataclass(frozen=True)
class Worker:
    pid: int
    queue: str
    suffix: str
    state: str


class Daemon(DaemonProcess):
    """One ``sqsd run`` process and everything it forks, observed from outside."""

    def __init__(self, config_path: Path, log_path: Path, socket_path: Path,
                 env: dict[str, str], expected_workers: int, graceful_timeout: float):
        self.expected_workers = expected_workers
        super().__init__(config_path, socket_path, env=env, cwd=REPO, log_path=log_path,
                         graceful_timeout=graceful_timeout)

    def workers(self) -> list[Worker]:
        """Live workers, read from their process titles (`sqsd: worker QUEUE[:SUFFIX] STATE`)."""
        found = []
        for child in self.descendants():
            try:
                title = " ".join(child.cmdline()).strip()
            except Exception:
                continue
            match = WORKER_TITLE.match(title)
            if match and alive(child):
                found.append(Worker(child.pid, match["queue"], match["suffix"] or "",
                                    match["state"] or ""))
        return found

    def query_children(self) -> set[int]:
        """The master's one-shot children doing SQS work for control requests (queue depths
        for status and wait, clear): forked from the master, they keep its title."""
        found = set()
        for child in self.descendants():
            with contextlib.suppress(psutil.Error):
                if " ".join(child.cmdline()).startswith("sqsd: master"):
                    found.add(child.pid)
        return found

    def worker_pids(self, queue: str | None = None, suffix: str | None = None) -> set[int]:
        return {w.pid for w in self.workers()
                if (queue is None or w.queue == queue) and (suffix is None or w.suffix == suffix)}

    # control socket

    def ctl(self, cmd: str, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
        """One request on the control socket (newline-delimited JSON), one reply, as sent."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(self.socket_path))
            conn.sendall((json.dumps({"cmd": cmd, **args}) + "\n").encode())
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                reply += chunk
        return json.loads(reply)

    def status(self) -> dict[str, Any]:
        return self.ctl("status")

    def pings(self) -> bool:
        try:
            return bool(self.ctl("ping", timeout=1.0).get("ok"))
        except (OSError, ValueError):
            return False

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0,
                 what: str = "") -> Any:
        """``wait_until`` with the suite's failures: an AssertionError naming what was awaited."""
        what = what or str(predicate)
        try:
            return self.wait_until(predicate, timeout, what)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(str(exc)) from None

    def running_workers_in_status(self) -> int:
        """How many workers status lists with a pid and past start-up (queues resolved)."""
        try:
            workers = self.status()["workers"]
        except (OSError, ValueError, KeyError):
            return 0
        return sum(1 for w in workers if w.get("pid") and w.get("state") not in STARTING)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the socket answers ping and every expected worker runs: its process
        has a worker title and status shows it with a pid, past start-up."""
        self.wait_for(
            lambda: self.pings()
            and len(self.workers()) == self.expected_workers
            and self.running_workers_in_status() == self.expected_workers,
            timeout=timeout,
            what=f"ping and {self.expected_workers} running workers",
        )
