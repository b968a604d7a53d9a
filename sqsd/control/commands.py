"""The control commands, acting on the master through the small ``Supervisor`` protocol.

The control plane never imports the master: it gets a ``Supervisor`` (what commands may
ask of the master) and a ``Loop`` (where it registers its descriptors and timers). Commands
that need SQS (queue depths for ``status``, ``clear``, ``wait``) run in a one-shot child;
their replies are deferred until the child reports back.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqsd import __version__, logs, metrics
from sqsd.config import QueueSettings, Settings, as_dict
from sqsd.control import queries
from sqsd.control.http import ListenError, MetricsListener
from sqsd.control.server import Connection, ControlServer, SocketPathError, open_listener
from sqsd.control.status import dead_letter_names, status_reply
from sqsd.redact import redact
from sqsd.scaling import Sizing
from sqsd.spelling import did_you_mean
from sqsd.states import Program, SlotView, WorkerState
from sqsd_client.protocol import PROTOCOL_VERSION, error

FRESH_STATUS_WAIT = 2.0  # how long `status --fresh` waits for depths before answering
WAIT_CHECK_INTERVAL = 1.0
WAIT_DEFAULT_TIMEOUT = 3600.0  # a `wait` without a timeout gives up after an hour
WAIT_MAX_TIMEOUT = 86400.0
METRICS_DEPTHS_AFTER = 30.0  # a scrape refreshes queue depths older than this (SQS calls)

Reply = dict[str, Any] | None  # None: the command replies later, through its connection
Handler = Callable[[dict[str, Any], Connection], Reply]


class Supervisor(Protocol):
    """What control commands may read and ask of the master."""

    @property
    def pid(self) -> int: ...

    @property
    def started(self) -> float: ...  # time.monotonic() when it started

    @property
    def config_path(self) -> str: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def queues(self) -> Mapping[str, QueueSettings]: ...

    @property
    def programs(self) -> Mapping[tuple[str, str, int], Program]: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def sizing(self) -> Sizing: ...  # process counts: configured, autoscaled or pinned

    @property
    def totals(self) -> metrics.Totals: ...  # what exited workers counted, and more

    def wake(self, queue: str, suffix: str | None) -> int: ...

    def reload(self) -> str | None: ...

    def begin_stop(self, *, quick: bool, reason: str = "") -> None: ...

    def scale(self, queue: str, suffix: str, processes: int) -> int: ...

    def fork(self, main: Callable[[], int], close: Iterable[int] = ()) -> int: ...


class Loop(Protocol):
    """Where the control plane waits (``sqsd.loop.EventLoop``)."""

    @property
    def selector(self) -> Any: ...

    def add_reader(self, fd: Any, callback: Callable[[], None]) -> None: ...

    def remove_reader(self, fd: Any) -> None: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> None: ...


@dataclass(frozen=True)
class Command:
    """One entry of the command table."""

    run: Handler
    privileged: bool = False  # only root and the daemon's own user


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

    def __init__(self, supervisor: Supervisor, loop: Loop):
        self.supervisor = supervisor
        self.loop = loop
        self.log = logs.get("sqsd.master", component="control")
        self.server: ControlServer | None = None
        self.http: MetricsListener | None = None
        self.queries: dict[int, Query] = {}
        self.depths: dict[str, dict[str, Any]] = {}
        self.depths_at = 0.0
        self.depth_query: Query | None = None
        self.queue_urls: dict[str, str] = {}  # SQS name -> URL: depth queries skip GetQueueUrl
        self.depth_listeners: list[Callable[[], None]] = []
        self.waiters: list[Waiter] = []
        self.last_wait_check = 0.0
        self.commands: dict[str, Command] = {
            "ping": Command(self.ping),
            "status": Command(self.status),
            "metrics": Command(self.metrics),
            "wake": Command(self.wake),
            "wait": Command(self.wait),
            "clear": Command(self.clear, privileged=True),
            "config": Command(self.config, privileged=True),
            "reload": Command(self.reload, privileged=True),
            "scale": Command(self.scale, privileged=True),
            "shutdown": Command(self.shutdown, privileged=True),
        }

    def start(self) -> None:
        settings = self.supervisor.settings
        listener, created = open_listener(
            settings.socket, settings.socket_mode, settings.socket_group or None
        )
        self.server = ControlServer(
            listener,
            self.loop.selector,
            self.dispatch,
            unlink_path=settings.socket if created else None,
        )
        if settings.metrics_listen:
            try:
                self.http = MetricsListener(
                    settings.metrics_listen, self.loop.selector, self.scrape
                )
            except ListenError as exc:
                self.close()  # nothing starts: the socket file goes too
                raise SocketPathError("metrics_listen", str(exc)) from None
            self.log.info("metrics listening", address=settings.metrics_listen)

    def close_in_child(self) -> None:
        """In a forked child: close inherited sockets and pipes, touch nothing on disk."""
        if self.server is not None:
            self.server.close_in_child()
        if self.http is not None:
            self.http.close_in_child()
        for query in self.queries.values():
            if query.fd >= 0:
                _close_quietly(query.fd)

    def close(self) -> None:
        for waiter in self.waiters:
            waiter.conn.reply(error("daemon stopping"))
        self.waiters.clear()
        if self.http is not None:
            self.http.close()
            self.http = None
        if self.server is not None:
            self.server.close()

    def tick(self, now: float) -> None:
        assert self.server is not None
        self.server.tick(now)
        if self.http is not None:
            self.http.tick(now)
        due = now - self.last_wait_check >= WAIT_CHECK_INTERVAL
        if self.waiters and due and self.depth_query is None:
            self.last_wait_check = now
            self.refresh_depths(self.check_waiters)
        for waiter in [w for w in self.waiters if now >= w.deadline]:
            self.waiters.remove(waiter)
            waiter.conn.reply({"ok": False, "error": "timeout", "timeout": True})

    # -- dispatch -----------------------------------------------------------------------

    def dispatch(self, request: dict[str, Any], conn: Connection) -> Reply:
        name = request["cmd"]
        command = self.commands.get(name)
        if command is None:
            return error(f"unknown command {name!r}")
        if command.privileged:
            if conn.peer_uid not in (0, os.getuid()):
                return error(f"{name}: permission denied for uid {conn.peer_uid}")
            self.log.info("control command", cmd=name, uid=conn.peer_uid, peer_pid=conn.peer_pid)
        try:
            return command.run(request, conn)
        except (KeyError, ValueError, TypeError) as exc:
            return error(f"{name}: {exc.args[0] if exc.args else exc}")

    # -- commands -----------------------------------------------------------------------

    def ping(self, request: dict[str, Any], conn: Connection) -> Reply:
        reply = {
            "ok": True,
            "pid": self.supervisor.pid,
            "version": PROTOCOL_VERSION,
            "uptime": round(time.monotonic() - self.supervisor.started, 3),
        }
        # The embedded emulator's loopback URL (no credentials): producers with
        # endpoint_url = "local" find it here, whoever they run as.
        local = os.environ.get("SQSD_LOCAL_ENDPOINT")
        if local:
            reply["local_endpoint"] = local
        return reply

    def wake(self, request: dict[str, Any], conn: Connection) -> Reply:
        queue, suffix = _string(request, "queue"), request.get("suffix")
        if suffix is not None and not isinstance(suffix, str):
            raise ValueError("suffix must be a string or null")
        settings = self.supervisor.queues.get(queue)
        if settings is None:
            hint = did_you_mean(queue, self.supervisor.queues)
            raise KeyError(f"unknown queue {queue!r}{hint}")
        if suffix is not None and suffix not in settings.suffixes:
            hint = did_you_mean(suffix, [s for s in settings.suffixes if s])
            raise KeyError(f"unknown suffix {suffix!r} of queue {queue!r}{hint}")
        woken = self.supervisor.wake(queue, None if suffix is None else suffix or "")
        for woken_suffix in settings.suffixes if suffix is None else [suffix]:
            self.supervisor.totals.woken((queue, woken_suffix))
        return {"ok": True, "woken": woken}

    def status(self, request: dict[str, Any], conn: Connection) -> Reply:
        if not request.get("fresh"):
            return self.status_now()  # cached depths only: polling monitors cost no SQS calls
        deadline = time.monotonic() + FRESH_STATUS_WAIT
        replied = False

        def answer() -> None:
            nonlocal replied
            if not replied and not conn.closed:
                replied = True
                conn.reply(self.status_now())

        self.refresh_depths(answer)
        self.loop.call_at(deadline, answer)
        return None

    def metrics(self, request: dict[str, Any], conn: Connection) -> Reply:
        """The scrape as text: OpenMetrics, or Prometheus text with ``"format":
        "prometheus"``."""
        fmt = request.get("format", "openmetrics")
        if fmt not in ("openmetrics", "prometheus"):
            raise ValueError('format must be "openmetrics" or "prometheus"')

        def done(text: bytes, content_type: str) -> None:
            conn.reply({"ok": True, "content_type": content_type, "text": text.decode()})

        self.render_metrics(fmt == "openmetrics", done)
        return None

    def scrape(self, accept: str, done: metrics.Done) -> None:
        """An HTTP scrape (``metrics_listen``), in the format its Accept header asks for,
        redacted as every reply is."""
        openmetrics = metrics.wants_openmetrics(accept)
        self.render_metrics(openmetrics, done, lambda text: redact(text.decode()).encode())

    def render_metrics(
        self, openmetrics: bool, done: metrics.Done, each: Callable[[bytes], bytes] | None = None
    ) -> None:
        """Take a snapshot now; render it over the next turns of the loop (never one long
        block), then ``done(text, content type)``."""
        supervisor = self.supervisor
        now = time.monotonic()
        if now - self.depths_at > METRICS_DEPTHS_AFTER and self.depth_query is None:
            self.refresh_depths(lambda: None)  # for the next scrape: this one takes what is known
        programs = supervisor.programs.values()
        metrics.exposition_in_turns(
            metrics.Snapshot(
                tallies=supervisor.totals.now(programs),
                states=metrics.worker_states(programs),
                depths=metrics.depths_by_key(self.depths, self.url_name_keys()),
                depths_age=now - self.depths_at,
                price_per_million=supervisor.settings.sqs_price_per_million,
                start_time=metrics.wall_clock(supervisor.started),
                version=__version__,
            ),
            openmetrics=openmetrics,
            later=lambda step: self.loop.call_at(time.monotonic(), step),
            done=done,
            **({"each": each} if each else {}),
        )

    def url_name_keys(self) -> dict[str, metrics.QueueKey]:
        supervisor = self.supervisor
        return metrics.url_name_keys(
            supervisor.settings, supervisor.queues, supervisor.sizing.counts
        )

    def reload(self, request: dict[str, Any], conn: Connection) -> Reply:
        failure = self.supervisor.reload()
        return error(failure) if failure else {"ok": True}

    def shutdown(self, request: dict[str, Any], conn: Connection) -> Reply:
        self.supervisor.begin_stop(quick=bool(request.get("quick")), reason="sqsctl shutdown")
        return {"ok": True}

    def scale(self, request: dict[str, Any], conn: Connection) -> Reply:
        processes = request.get("processes")
        if (
            isinstance(processes, bool)
            or not isinstance(processes, int)
            or not 0 <= processes <= 256
        ):
            raise ValueError("processes must be an integer from 0 to 256")
        suffix = request.get("suffix") or ""
        self.supervisor.scale(_string(request, "queue"), suffix, processes)
        return {"ok": True, "processes": processes}

    def config(self, request: dict[str, Any], conn: Connection) -> Reply:
        settings = self.supervisor.settings
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
            "log_level": settings.log_level,
            "failed_log": settings.failed_log,
            "socket_group": settings.socket_group,
            "max_workers": settings.max_workers,
            "metrics_listen": settings.metrics_listen,
            "sqs_price_per_million": settings.sqs_price_per_million,
        }
        queues = {name: effective(queue) for name, queue in self.supervisor.queues.items()}
        return {"ok": True, "sqsd": daemon, "queues": queues}

    def clear(self, request: dict[str, Any], conn: Connection) -> Reply:
        url_names = self.url_names(request.get("queues") or [])
        purge = bool(request.get("purge"))
        settings = self.supervisor.settings

        def done(result: dict[str, Any]) -> None:
            if "error" in result and len(result) == 1:
                conn.reply(error(result["error"]))
            else:
                conn.reply({"ok": True, "queues": result})

        query = self.run_query(lambda: queries.clear_queues(settings, url_names, purge), done)
        conn.when_closed(lambda: self.drop_query(query))  # Ctrl-C on sqsctl clear stops it
        return None

    def wait(self, request: dict[str, Any], conn: Connection) -> Reply:
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
            with contextlib.suppress(ProcessLookupError):
                os.kill(query.pid, signal.SIGTERM)

    # -- status -------------------------------------------------------------------------

    def status_now(self) -> dict[str, Any]:
        supervisor = self.supervisor
        now = time.monotonic()
        reply = status_reply(
            pid=supervisor.pid,
            config_path=supervisor.config_path,
            uptime=now - supervisor.started,
            stopping=supervisor.stopping,
            settings=supervisor.settings,
            programs=supervisor.programs.values(),
            sizes=supervisor.sizing.sizes(),
            depths=self.depths,
            depths_age=now - self.depths_at,
            now=now,
            queue_settings=supervisor.queues,
        )
        tallies = supervisor.totals.now(supervisor.programs.values())
        return metrics.annotate_status(reply, tallies, supervisor.settings.sqs_price_per_million)

    def refresh_depths(self, then: Callable[[], None]) -> None:
        """Fetch queue depths in a child (joining one under way); ``then`` runs when done."""
        self.depth_listeners.append(then)
        if self.depth_query is not None:
            return
        settings = self.supervisor.settings
        dead_letters = dead_letter_names(settings, self.supervisor.queues).values()
        url_names = list(dict.fromkeys([*self.url_names([]), *dead_letters]))

        def done(result: dict[str, Any]) -> None:
            self.depth_query = None
            self.supervisor.totals.depth_query_done(result, self.url_name_keys(), self.queue_urls)
            if "error" not in result or len(result) > 1:
                self.depths = result
                self.depths_at = time.monotonic()
            listeners, self.depth_listeners = self.depth_listeners, []
            for listener in listeners:
                listener()

        urls = dict(self.queue_urls)
        self.depth_query = self.run_query(
            lambda: queries.queue_depths(settings, url_names, urls), done
        )

    def check_waiters(self) -> None:
        busy = {
            p.spec.url_name
            for p in self.supervisor.programs.values()
            if p.worker is not None and _busy(p.worker.slot.read())
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

    # -- queries in child processes -----------------------------------------------------

    def run_query(
        self, work: Callable[[], dict[str, Any]], callback: Callable[[dict[str, Any]], None]
    ) -> Query:
        read_fd, write_fd = os.pipe()

        def child() -> int:
            try:
                result = work()
            except Exception as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
            with os.fdopen(write_fd, "w") as out:
                json.dump(result, out)
            return 0

        pid = self.supervisor.fork(child, close=(read_fd,))
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        query = Query(pid, read_fd, callback)
        self.queries[pid] = query
        self.loop.add_reader(read_fd, lambda: self._read_query(query))
        return query

    def _read_query(self, query: Query) -> None:
        try:
            chunk = os.read(query.fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            query.buffer += chunk
            return
        self.loop.remove_reader(query.fd)
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

    # -- helpers ------------------------------------------------------------------------

    def url_names(self, names: list[Any]) -> list[str]:
        """SQS names for ``QUEUE`` or ``QUEUE:SUFFIX`` arguments (all queues when empty)."""
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("queues must be a list of strings")
        counts = self.supervisor.sizing.counts
        result = []
        for name in names or [q for q, _ in counts]:
            queue, _, suffix = name.partition(":")
            matches = [(q, s) for q, s in counts if q == queue and (not suffix or s == suffix)]
            if not matches:
                labels = [f"{q}:{s}" if s else q for q, s in counts]
                raise KeyError(f"unknown queue {name!r}{did_you_mean(name, labels)}")
            result.extend(self.supervisor.settings.queue_url_name(q, s) for q, s in matches)
        return list(dict.fromkeys(result))


def effective(queue: QueueSettings) -> dict[str, Any]:
    """A queue's settings as they act: the keys whose default means "derived" (on_error,
    max_receives, max_processes) show the value derived, not the empty default."""
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in as_dict(queue).items()}
    values.update(
        on_error=queue.error_policy,
        max_receives=queue.receive_limit,
        max_processes=queue.process_range[1],
    )
    return values


def _string(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _busy(view: SlotView) -> bool:
    """A handler runs (one of several, possibly while the worker polls for more)."""
    return view.state is WorkerState.BUSY or view.busy > 0
