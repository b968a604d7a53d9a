"""The control commands, acting on the master's state.

Commands that need SQS (queue depths for ``status``, ``clear``, ``wait``) run in a one-shot
child (``run_query``); their replies are deferred until the child reports back.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

from sqsd.config import as_dict
from sqsd.control import queries
from sqsd.control.server import Connection, ControlServer, open_listener
from sqsd.redact import redact
from sqsd_client.protocol import PROTOCOL_VERSION, error

if TYPE_CHECKING:
    from sqsd.master import Master, Program

FRESH_STATUS_WAIT = 2.0  # how long `status --fresh` waits for depths before answering
WAIT_CHECK_INTERVAL = 1.0
WAIT_DEFAULT_TIMEOUT = 3600.0  # a `wait` without a timeout gives up after an hour
WAIT_MAX_TIMEOUT = 86400.0
PRIVILEGED = frozenset({"clear", "reload", "scale", "shutdown", "config"})


@dataclass
class Query:
    """A one-shot child doing SQS work; ``callback`` gets its JSON result."""

    pid: int
    fd: int
    callback: Callable[[dict[str, Any]], None]
    buffer: bytearray = field(default_factory=bytearray)
    done: bool = False


@dataclass
class Waiter:
    """A deferred ``wait`` request."""

    conn: Connection
    url_names: list[str]
    deadline: float
    clean_checks: int = 0


class ControlPlane:
    """Owns the listening socket and answers commands for the master."""

    def __init__(self, master: Master):
        self.master = master
        self.log = master.log.bind(component="control")
        self.server: ControlServer | None = None
        self.queries: dict[int, Query] = {}
        self.depths: dict[str, dict[str, Any]] = {}
        self.depths_at = 0.0
        self.depth_query: Query | None = None
        self.depth_listeners: list[Callable[[], None]] = []
        self.waiters: list[Waiter] = []
        self.last_wait_check = 0.0

    def start(self) -> None:
        settings = self.master.settings
        listener, created = open_listener(
            settings.socket, settings.socket_mode, settings.socket_group or None
        )
        self.server = ControlServer(
            listener,
            self.master.selector,
            self.dispatch,
            unlink_path=settings.socket if created else None,
        )

    def close_in_child(self) -> None:
        """In a forked child: close inherited sockets and pipes, touch nothing on disk."""
        if self.server is not None:
            self.server.close_in_child()
        for query in self.queries.values():
            if query.fd >= 0:
                _close_quietly(query.fd)

    def close(self) -> None:
        for waiter in self.waiters:
            waiter.conn.reply(error("daemon stopping"))
        self.waiters.clear()
        if self.server is not None:
            self.server.close()

    def tick(self, now: float) -> None:
        assert self.server is not None
        self.server.tick(now)
        due = now - self.last_wait_check >= WAIT_CHECK_INTERVAL
        if self.waiters and due and self.depth_query is None:
            self.last_wait_check = now
            self.refresh_depths(self.check_waiters)
        for waiter in [w for w in self.waiters if now >= w.deadline]:
            self.waiters.remove(waiter)
            waiter.conn.reply({"ok": False, "error": "timeout", "timeout": True})

    # -- dispatch -----------------------------------------------------------------------

    def dispatch(self, request: dict[str, Any], conn: Connection) -> dict[str, Any] | None:
        cmd = request["cmd"]
        handler = getattr(self, f"cmd_{cmd}", None)
        if handler is None:
            return error(f"unknown command {cmd!r}")
        if cmd in PRIVILEGED:
            if conn.peer_uid not in (0, os.getuid()):
                return error(f"{cmd}: permission denied for uid {conn.peer_uid}")
            self.log.info("control command", cmd=cmd, uid=conn.peer_uid, peer_pid=conn.peer_pid)
        try:
            return handler(request, conn)
        except (KeyError, ValueError, TypeError) as exc:
            return error(f"{cmd}: {exc.args[0] if exc.args else exc}")

    def cmd_ping(self, request: dict[str, Any], conn: Connection) -> dict[str, Any]:
        reply = {
            "ok": True,
            "pid": self.master.pid,
            "version": PROTOCOL_VERSION,
            "uptime": round(time.monotonic() - self.master.started, 3),
        }
        # The embedded emulator's loopback URL (no credentials): producers with
        # endpoint_url = "local" find it here, whoever they run as.
        local = os.environ.get("SQSD_LOCAL_ENDPOINT")
        if local:
            reply["local_endpoint"] = local
        return reply

    def cmd_wake(self, request: dict[str, Any], conn: Connection) -> dict[str, Any]:
        queue, suffix = _string(request, "queue"), request.get("suffix")
        if suffix is not None and not isinstance(suffix, str):
            raise ValueError("suffix must be a string or null")
        settings = self.master.queues.get(queue)
        if settings is None or (suffix is not None and (suffix or "") not in settings.suffixes):
            raise KeyError(f"unknown queue {queue!r}" + (f" suffix {suffix!r}" if suffix else ""))
        woken = self.master.wake(queue, None if suffix is None else suffix or "")
        return {"ok": True, "woken": woken}

    def cmd_status(self, request: dict[str, Any], conn: Connection) -> dict[str, Any] | None:
        if not request.get("fresh"):
            return self.status()  # cached depths only: monitors polling status cost no SQS calls
        deadline = time.monotonic() + FRESH_STATUS_WAIT
        replied = False

        def answer() -> None:
            nonlocal replied
            if not replied and not conn.closed:
                replied = True
                conn.reply(self.status())

        self.refresh_depths(answer)
        self.later(deadline, answer)
        return None

    def cmd_reload(self, request: dict[str, Any], conn: Connection) -> dict[str, Any]:
        failure = self.master.reload()
        return error(failure) if failure else {"ok": True}

    def cmd_shutdown(self, request: dict[str, Any], conn: Connection) -> dict[str, Any]:
        self.master.begin_stop(quick=bool(request.get("quick")), reason="sqsctl shutdown")
        return {"ok": True}

    def cmd_scale(self, request: dict[str, Any], conn: Connection) -> dict[str, Any]:
        processes = request.get("processes")
        if (
            isinstance(processes, bool)
            or not isinstance(processes, int)
            or not 0 <= processes <= 256
        ):
            raise ValueError("processes must be an integer from 0 to 256")
        suffix = request.get("suffix") or ""
        self.master.scale(_string(request, "queue"), suffix, processes)
        return {"ok": True, "processes": processes}

    def cmd_config(self, request: dict[str, Any], conn: Connection) -> dict[str, Any]:
        settings = self.master.settings
        daemon = {
            "path": settings.path,
            "imports": list(settings.imports),
            "socket": settings.socket,
            "socket_mode": f"{settings.socket_mode:04o}",
            "queue_prefix": settings.queue_prefix,
            "region": settings.region,
            "endpoint_url": redact(settings.endpoint_url),
            "create_queues": settings.create_queues,
            "log_format": settings.log_format,
            "failed_log": settings.failed_log,
        }
        queues = {
            name: {k: list(v) if isinstance(v, tuple) else v for k, v in as_dict(queue).items()}
            for name, queue in self.master.queues.items()
        }
        return {"ok": True, "sqsd": daemon, "queues": queues}

    def cmd_clear(self, request: dict[str, Any], conn: Connection) -> None:
        url_names = self.url_names(request.get("queues") or [])
        purge = bool(request.get("purge"))
        settings = self.master.settings

        def done(result: dict[str, Any]) -> None:
            if "error" in result and len(result) == 1:
                conn.reply(error(result["error"]))
            else:
                conn.reply({"ok": True, "queues": result})

        query = self.run_query(lambda: queries.clear_queues(settings, url_names, purge), done)
        conn.when_closed(lambda: self.drop_query(query))  # Ctrl-C on sqsctl clear stops it
        return None

    def cmd_wait(self, request: dict[str, Any], conn: Connection) -> None:
        timeout = request.get("timeout")
        if timeout is None:
            timeout = WAIT_DEFAULT_TIMEOUT
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 <= timeout <= WAIT_MAX_TIMEOUT
        ):
            raise ValueError(
                f"timeout must be a number of seconds from 0 to {WAIT_MAX_TIMEOUT:g} "
                f"or null ({WAIT_DEFAULT_TIMEOUT:g})"
            )
        url_names = self.url_names(request.get("queues") or [])
        waiter = Waiter(conn, url_names, time.monotonic() + timeout)
        self.waiters.append(waiter)
        conn.when_closed(lambda: self.drop_waiter(waiter))  # nobody left to tell
        self.last_wait_check = 0.0  # check at the next turn of the loop
        return None

    def drop_waiter(self, waiter: Waiter) -> None:
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)

    def drop_query(self, query: Query) -> None:
        """Stop a query child whose requester has gone (it is reaped as usual)."""
        if not query.done and query.pid in self.queries:
            self.master.kill(query.pid, signal.SIGTERM)

    # -- status -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        master = self.master
        # Retired programs still finishing a message show as "stopping" until they exit.
        workers = [
            self.worker_status(p, now)
            for p in master.programs.values()
            if not p.retired or p.worker is not None
        ]
        queues = []
        for (queue, suffix), processes in master.process_counts().items():
            url_name = master.settings.queue_url_name(queue, suffix)
            depth = self.depths.get(url_name, {})
            queues.append(
                {
                    "queue": queue,
                    "suffix": suffix,
                    "url_name": url_name,
                    "processes": processes,
                    "visible": depth.get("visible"),
                    "in_flight": depth.get("in_flight"),
                    "delayed": depth.get("delayed"),
                    "depth_error": depth.get("error"),
                    "depth_age": round(now - self.depths_at, 1) if depth else None,
                }
            )
        return {
            "ok": True,
            "version": PROTOCOL_VERSION,
            "pid": master.pid,
            "config": master.config_path,
            "uptime": round(now - master.started, 1),
            "stopping": bool(master.stopping_since),
            "rss": _rss(master.pid),
            "workers": workers,
            "queues": queues,
        }

    def worker_status(self, program: Program, now: float) -> dict[str, Any]:
        spec = program.spec
        entry: dict[str, Any] = {
            "queue": spec.queue.name,
            "suffix": spec.suffix,
            "index": spec.index,
            "pid": None,
            "state": program_state(program),
            "restarts": program.restarts,
            "failures": program.failures,
            "last_exit": program.last_exit,
        }
        worker = program.worker
        if worker is None:
            if program.state == "backoff":
                entry["retry_in"] = round(max(0.0, program.next_start - now), 1)
            return entry
        view = worker.slot.read()
        counters = view.counters
        entry.update(
            pid=worker.pid,
            state_seconds=round(now - view.state_since, 1),
            uptime=round(now - worker.started, 1),
            rss=_rss(worker.pid),
            processed=counters["processed"],
            failed=counters["failed"],
            retried=counters["retried"],
            dead_lettered=counters["dead_lettered"],
            api={
                "receive": counters["receives"],
                "empty_receive": counters["empty_receives"],
                "delete": counters["deletes"],
                "change_visibility": counters["visibility_changes"],
                "send": counters["sends"],
            },
        )
        if entry["state"] == "busy":
            entry["message_id"] = view.message_id
            entry["message_seconds"] = round(now - view.message_started, 1)
        elif entry["state"] in ("idle", "retrying"):
            entry["idle_seconds"] = round(max(0.0, view.idle_until - now), 1)
        return entry

    # -- queries in child processes -----------------------------------------------------

    def refresh_depths(self, then: Callable[[], None]) -> None:
        """Fetch queue depths in a child (joining one under way); ``then`` runs when done."""
        self.depth_listeners.append(then)
        if self.depth_query is not None:
            return
        url_names = self.url_names([])
        settings = self.master.settings

        def done(result: dict[str, Any]) -> None:
            self.depth_query = None
            if "error" not in result or len(result) > 1:
                self.depths = result
                self.depths_at = time.monotonic()
            listeners, self.depth_listeners = self.depth_listeners, []
            for listener in listeners:
                listener()

        self.depth_query = self.run_query(lambda: queries.queue_depths(settings, url_names), done)

    def check_waiters(self) -> None:
        busy = {
            p.spec.url_name
            for p in self.master.programs.values()
            if p.worker is not None and p.worker.slot.read().state == "busy"
        }
        for waiter in list(self.waiters):
            clean = all(
                name not in busy
                and not self.depths.get(name, {}).get("error")
                and all(
                    self.depths.get(name, {}).get(k, 1) == 0
                    for k in ("visible", "in_flight", "delayed")
                )
                for name in waiter.url_names
            )
            waiter.clean_checks = waiter.clean_checks + 1 if clean else 0
            if waiter.clean_checks >= 2:
                self.waiters.remove(waiter)
                waiter.conn.reply(
                    {"ok": True, "queues": {n: self.depths.get(n) for n in waiter.url_names}}
                )

    def run_query(
        self, work: Callable[[], dict[str, Any]], callback: Callable[[dict[str, Any]], None]
    ) -> Query:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)

            def child() -> int:
                try:
                    result = work()
                except Exception as exc:
                    result = {"error": f"{type(exc).__name__}: {exc}"}
                with os.fdopen(write_fd, "w") as out:
                    json.dump(result, out)
                return 0

            self.master.run_in_child(child)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        query = Query(pid, read_fd, callback)
        self.queries[pid] = query
        self.master.selector.register(
            read_fd, selectors.EVENT_READ, lambda: self._read_query(query)
        )
        return query

    def _read_query(self, query: Query) -> None:
        try:
            chunk = os.read(query.fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            query.buffer += chunk
            return
        self.master.selector.unregister(query.fd)
        os.close(query.fd)
        query.fd = -1
        try:
            result = json.loads(query.buffer or b"{}") or {"error": "query child died"}
        except ValueError:
            result = {"error": "query child sent garbage"}
        self._finish_query(query, result)

    def _finish_query(self, query: Query, result: dict[str, Any]) -> None:
        if query.done:
            return
        query.done = True
        try:
            query.callback(result)
        except Exception:
            self.log.exception("control query callback failed")

    def child_exited(self, pid: int, status: int) -> None:
        query = self.queries.pop(pid, None)
        if query is not None and os.waitstatus_to_exitcode(status) != 0:
            self.log.warning(
                "query child failed", pid=pid, status=os.waitstatus_to_exitcode(status)
            )

    def later(self, when: float, action: Callable[[], None]) -> None:
        self.master.timers.append((when, action))

    # -- helpers ------------------------------------------------------------------------

    def url_names(self, names: list[Any]) -> list[str]:
        """SQS names for ``QUEUE`` or ``QUEUE:SUFFIX`` arguments (all queues when empty)."""
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("queues must be a list of strings")
        counts = self.master.process_counts()
        result = []
        for name in names or [q for q, _ in counts]:
            queue, _, suffix = name.partition(":")
            matches = [(q, s) for q, s in counts if q == queue and (not suffix or s == suffix)]
            if not matches:
                raise KeyError(f"unknown queue {name!r}")
            result.extend(self.master.settings.queue_url_name(q, s) for q, s in matches)
        return list(dict.fromkeys(result))


def program_state(program: Program) -> str:
    """The state operators see: a worker's own state while it runs, else the program's."""
    if program.worker is None:
        if program.state == "backoff":
            return "crashloop"
        return program.state
    if program.state == "stopping" or program.worker.stop_sent:
        return "stopping"
    return program.worker.slot.read().state


def _string(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value


def _rss(pid: int) -> int | None:
    try:
        process = _processes.get(pid)
        if process is None:
            if len(_processes) > 4096:
                _processes.clear()
            process = _processes[pid] = psutil.Process(pid)
        return process.memory_info().rss
    except psutil.Error:
        _processes.pop(pid, None)
        return None


_processes: dict[int, psutil.Process] = {}  # reused across status calls


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
