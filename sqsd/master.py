"""The master: forks one worker per queue, suffix and process, keeps that set running,
and serves the control socket, all from one single-threaded selector loop.

Shape after gunicorn's arbiter: signal handlers only wake the loop; each turn of the loop
handles signals, reaps dead workers, murders hung ones and reconciles the running set with
the wanted one (``manage_workers``), so restarts fall out of reconciliation.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import os
import random
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import setproctitle

from sqsd import config as config_module
from sqsd import logs, notify, preflight, scoreboard
from sqsd.config import QueueSettings, Settings
from sqsd.errors import EXIT_CONFIG, EXIT_OK, EXIT_RECYCLE, ConfigError
from sqsd.givebacks import GiveBacks
from sqsd.message import Message
from sqsd.registry import REGISTRY
from sqsd.sqs import READ_TIMEOUT_MARGIN
from sqsd.worker import Worker, WorkerSpec

CRASH_BACKOFF_MAX = 60.0
STABLE_AFTER = 60.0  # a worker up this long resets its crash backoff
FATAL_AFTER = 8  # consecutive failures before a program is given up until reload
QUICK_STOP_GRACE = 3.0  # seconds a quick stop leaves workers to flush their deletes
KILL_AFTER_ABORT = 5.0  # seconds between SIGABRT (stack dump) and SIGKILL of a hung worker
SILENCE_MARGIN = 30.0
LOOP_TICK = 1.0
HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGCHLD,
    signal.SIGTTIN,
    signal.SIGTTOU,
)


class ShutdownComplete(Exception):  # noqa: N818
    """Raised inside the loop when the master should exit with ``code``."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


@dataclass
class WorkerProcess:
    """A forked worker, as the master tracks it."""

    pid: int
    slot: scoreboard.Slot
    wake_fd: int
    started: float
    stop_sent: float = 0.0
    abort_sent: float = 0.0
    reason: str = ""  # why the master stopped or killed it, for the exit log line


@dataclass
class Program:
    """One wanted worker (queue, suffix, index) and its restart history (supervisord's term)."""

    spec: WorkerSpec
    state: str = "starting"  # starting, running, backoff, stopping, exited, fatal
    worker: WorkerProcess | None = None
    failures: int = 0
    restarts: int = 0
    next_start: float = 0.0
    last_exit: str | None = None
    retired: bool = False  # no longer wanted: stop it and forget it
    respawn_now: bool = False  # stopped on purpose (reload, recycle): restart without backoff

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.spec.queue.name, self.spec.suffix, self.spec.index)


@dataclass
class Master:
    """The supervisor process. ``run()`` returns the exit code."""

    settings: Settings
    config_path: str
    only_queues: tuple[str, ...] = ()
    only_suffix: str | None = None
    message_limit: int = 0
    programs: dict[tuple[str, str, int], Program] = field(default_factory=dict)
    scale_overrides: dict[tuple[str, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.log = logs.get("sqsd.master")
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.selector = selectors.DefaultSelector()
        self.scoreboard = scoreboard.Scoreboard()
        self.givebacks = GiveBacks()
        self.signal_queue: list[int] = []
        self.stopping_since = 0.0
        self.graceful_deadline = 0.0
        self.quick = False
        self.ready_sent = False
        self.exit_code = EXIT_OK
        self.control: Any = None  # sqsd.control.commands.ControlPlane, set in start()
        self.notifier = notify.Notifier()
        self.fd_closers: list[Callable[[], None]] = []  # run in every forked child
        self.timers: list[tuple[float, Callable[[], None]]] = []
        self.poked = False  # the wanted set changed: supervise at the next turn
        self.supervised = 0.0  # when supervision last ran
        self._signal_r, self._signal_w = socket.socketpair()
        self.queues = self.queue_settings(self.settings)
        self.fd_closers.append(self.notifier.close)

    # -- life cycle ---------------------------------------------------------------------

    def run(self) -> int:
        self.start()
        try:
            while True:
                self.loop_once()
        except ShutdownComplete as done:
            code = done.code
        finally:
            self.cleanup()
        self.log.info("master stopped", code=code)
        return code

    def start(self) -> None:
        from sqsd.control.commands import ControlPlane

        self.install_signal_handlers()
        self.control = ControlPlane(self)
        self.control.start()
        self.set_title()
        self.programs = {p.key: p for p in self.wanted_programs(self.settings, self.queues)}
        if not self.programs:
            self.log.warning("no queues to run: configure [queues.NAME] or register receivers")
        gc.freeze()  # preloaded objects stay shared copy-on-write: the collector won't touch them
        self.log.info(
            "master started",
            pid=self.pid,
            config=self.config_path,
            workers=len(self.programs),
            socket=self.settings.socket,
        )
        self.manage_workers()

    def cleanup(self) -> None:
        if not self.stopping_since:
            self.notifier.send("STOPPING=1")
        if self.control is not None:
            self.control.close()
        signal.set_wakeup_fd(-1)
        self.selector.close()

    def loop_once(self) -> None:
        events = self.selector.select(self.next_timeout())
        for key, _ in events:
            key.data()
        if self.timers:
            self.run_timers()
        now = time.monotonic()
        # A turn that only served control clients (a wake-up flood, say) leaves supervision
        # to its own pace: signals, pokes, a quiet select or a tick's worth of time.
        if events and not (self.signal_queue or self.poked) and now - self.supervised < LOOP_TICK:
            return
        self.poked = False
        self.supervised = now
        self.handle_signals()
        self.reap_workers()
        self.murder_workers()
        self.manage_workers()
        self.control.tick(now)
        self.report_health()
        if self.stopping_since:
            self.check_stopped()

    def run_timers(self) -> None:
        now = time.monotonic()
        due = [t for t in self.timers if t[0] <= now]
        if due:
            self.timers = [t for t in self.timers if t[0] > now]
            for _, action in due:
                action()

    def next_timeout(self) -> float:
        timeout = min(LOOP_TICK, self.notifier.watchdog_interval or LOOP_TICK)
        now = time.monotonic()
        for when, _ in self.timers:
            timeout = min(timeout, max(0.0, when - now))
        for program in self.programs.values():
            if program.worker is None and program.state == "backoff":
                timeout = min(timeout, max(0.0, program.next_start - now))
        return timeout

    # -- signals ------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        for sock in (self._signal_r, self._signal_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self._signal_w.fileno(), warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._enqueue_signal)
        self.selector.register(self._signal_r, selectors.EVENT_READ, self._drain_signal_pipe)
        self.fd_closers.append(self._signal_r.close)
        self.fd_closers.append(self._signal_w.close)

    def _enqueue_signal(self, signum: int, frame: Any) -> None:
        self.signal_queue.append(signum)

    def _drain_signal_pipe(self) -> None:
        try:
            while self._signal_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def handle_signals(self) -> None:
        while self.signal_queue:
            signum = self.signal_queue.pop(0)
            if signum == signal.SIGCHLD:
                continue  # reap_workers runs every turn
            name = signal.Signals(signum).name
            self.log.info("signal received", signal=name)
            if signum == signal.SIGTERM:
                self.begin_stop(quick=False)
            elif signum == signal.SIGINT:
                self.begin_stop(quick=bool(self.stopping_since))
            elif signum == signal.SIGQUIT:
                self.begin_stop(quick=True)
            elif signum == signal.SIGHUP:
                self.reload()
            elif signum in (signal.SIGTTIN, signal.SIGTTOU):
                self.scale_all(1 if signum == signal.SIGTTIN else -1)

    # -- stopping -----------------------------------------------------------------------

    def begin_stop(self, *, quick: bool, reason: str = "") -> None:
        """Graceful: workers finish their message and give the rest back. Quick: SIGQUIT."""
        self.poked = True
        now = time.monotonic()
        if not self.stopping_since:
            self.stopping_since = now
            timeout = max(
                (p.spec.queue.graceful_timeout for p in self.programs.values()), default=0
            )
            self.graceful_deadline = now + timeout
            self.notifier.send("STOPPING=1")
            self.log.info("stopping", quick=quick, graceful_timeout=timeout, reason=reason or None)
        if quick and not self.quick:
            self.quick = True
            self.graceful_deadline = min(self.graceful_deadline, now + QUICK_STOP_GRACE)
        for program in self.programs.values():
            program.retired = True
            if program.worker is not None:
                self.stop_worker(program, quick=quick)

    def check_stopped(self) -> None:
        now = time.monotonic()
        alive = [p.worker for p in self.programs.values() if p.worker is not None]
        if not alive:
            raise ShutdownComplete(self.exit_code)
        if now >= self.graceful_deadline:
            for worker in alive:
                if worker.reason != "killed after graceful_timeout":
                    worker.reason = "killed after graceful_timeout"
                    self.log.warning("worker did not stop in time; killing", pid=worker.pid)
                    self.kill(worker.pid, signal.SIGKILL)

    def stop_worker(self, program: Program, *, quick: bool = False, reason: str = "") -> None:
        worker = program.worker
        if worker is None:
            return
        if not worker.stop_sent or quick:
            worker.stop_sent = worker.stop_sent or time.monotonic()
            worker.reason = reason or worker.reason
            program.state = "stopping"
            self.kill(worker.pid, signal.SIGQUIT if quick else signal.SIGTERM)

    def kill(self, pid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    # -- reload and scaling ------------------------------------------------------------

    def reload(self) -> str | None:
        """Re-read the configuration; on error keep running the old one. Returns the error."""
        self.notifier.send(
            f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )
        try:
            settings = config_module.load(self.config_path)
            import_receivers(settings)
            queues = self.queue_settings(settings)
            wanted = {p.key: p for p in self.wanted_programs(settings, queues, overrides={})}
            preflight.check(settings, queues, socket=False)
        except ConfigError as exc:
            self.log.error("reload failed; keeping the running configuration", error=str(exc))
            self.notifier.send("READY=1")
            return str(exc)
        if settings.socket != self.settings.socket:
            self.log.warning("socket changes need a restart; keeping", socket=self.settings.socket)
            settings = replace(settings, socket=self.settings.socket)
        daemon_changed = worker_environment(settings) != worker_environment(self.settings)
        if (settings.log_format, settings.log_level) != (
            self.settings.log_format,
            self.settings.log_level,
        ):
            logs.configure(settings.log_format, settings.log_level)
        self.settings = settings
        self.queues = queues
        self.scale_overrides.clear()
        for key, program in self.programs.items():
            new = wanted.pop(key, None)
            if new is None:
                program.retired = True
                self.stop_worker(program, reason="removed by reload")
                continue
            program.retired = False  # wanted again while an earlier change was stopping it
            if new.spec != program.spec or daemon_changed:
                program.spec = new.spec
                program.failures = 0
                program.respawn_now = True
                if program.worker is not None:
                    self.stop_worker(program, reason="settings changed by reload")
                elif program.state in ("fatal", "exited", "backoff"):
                    program.state = "starting"
            elif program.state in ("fatal", "backoff"):
                program.state, program.failures = "starting", 0
        self.programs.update(wanted)
        self.poked = True
        self.log.info("configuration reloaded", workers=len(self.active_programs()))
        self.notifier.send("READY=1")
        return None

    def scale(self, queue: str, suffix: str, processes: int) -> int:
        """Change the number of processes of one queue and suffix until the next reload."""
        queue_settings = self.queues.get(queue)
        if queue_settings is None:
            raise KeyError(f"unknown queue {queue!r}")
        if suffix not in queue_settings.suffixes:
            raise KeyError(f"queue {queue!r} has no suffix {suffix!r}")
        self.scale_overrides[(queue, suffix)] = processes
        wanted = {p.key: p for p in self.wanted_programs(self.settings, self.queues)}
        for key, program in self.programs.items():
            if key[:2] == (queue, suffix) and key not in wanted:
                program.retired = True
                self.stop_worker(program, reason="scaled down")
        for key, program in wanted.items():
            self.programs.setdefault(key, program).retired = False
        self.poked = True
        return processes

    def scale_all(self, delta: int) -> None:
        for (queue, suffix), count in self.process_counts().items():
            self.scale(queue, suffix, max(0, count + delta))

    def process_counts(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for queue in self.queues.values():
            for suffix in queue.suffixes:
                counts[(queue.name, suffix)] = self.scale_overrides.get(
                    (queue.name, suffix), queue.processes
                )
        return counts

    # -- the wanted set -----------------------------------------------------------------

    def queue_settings(self, settings: Settings) -> dict[str, QueueSettings]:
        """Every queue to run: configured ones and those registered in code, filtered by
        ``sqsd run QUEUE...``."""
        registered = [
            name
            for name, registration in REGISTRY.items()
            if name not in settings.queues
            and (name in IMPORTED_QUEUES or _imported_by(registration.module, settings.imports))
        ]
        names = list(settings.queues) + registered
        if self.only_queues:
            names = [n for n in names if n in self.only_queues]
        result: dict[str, QueueSettings] = {}
        for name in names:
            registration = REGISTRY.get(name)
            options = registration.options if registration else None
            queue = settings.queue_settings(name, options)
            if self.only_suffix is not None:
                if self.only_suffix not in queue.suffixes:
                    continue  # `run --suffix S` runs the queues that have S
                queue = replace(queue, suffixes=(self.only_suffix,))
            result[name] = queue
        return result

    def wanted_programs(
        self,
        settings: Settings,
        queues: dict[str, QueueSettings],
        overrides: dict[tuple[str, str], int] | None = None,
    ) -> list[Program]:
        """One program per queue, suffix and process, with handlers resolved (preload)."""
        overrides = self.scale_overrides if overrides is None else overrides
        programs = []
        for queue in queues.values():
            handler, message_class = resolve_handler(settings, queue)
            after = (
                resolve_reference(settings, queue, "after_message") if queue.after_message else None
            )
            for suffix in queue.suffixes:
                for index in range(overrides.get((queue.name, suffix), queue.processes)):
                    spec = WorkerSpec(
                        queue=queue,
                        suffix=suffix,
                        url_name=settings.queue_url_name(queue.name, suffix),
                        dead_letter_name=(
                            settings.queue_url_name(queue.dead_letter_queue)
                            if queue.dead_letter_queue
                            else ""
                        ),
                        handler=handler,
                        message_class=message_class,
                        after_message=after,
                        index=index,
                    )
                    programs.append(Program(spec))
        return programs

    def active_programs(self) -> list[Program]:
        return [p for p in self.programs.values() if not p.retired]

    # -- supervision --------------------------------------------------------------------

    def manage_workers(self) -> None:
        """Start every wanted program that has no worker and is due; drop retired ones."""
        now = time.monotonic()
        for key, program in list(self.programs.items()):
            if program.worker is not None:
                continue
            if program.retired:
                del self.programs[key]
                continue
            if self.stopping_since or program.state in ("fatal", "exited"):
                continue
            if program.state == "backoff" and now < program.next_start:
                continue
            self.spawn_worker(program)
        if not self.ready_sent and not self.stopping_since:
            self.ready_sent = True
            self.notifier.send("READY=1")

    def spawn_worker(self, program: Program) -> None:
        slot = self.scoreboard.allocate()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        pid = os.fork()
        if pid == 0:
            os.close(wake_w)
            self.run_in_child(lambda: self.worker_main(program.spec, slot, wake_r))
        os.close(wake_r)
        program.worker = WorkerProcess(pid=pid, slot=slot, wake_fd=wake_w, started=time.monotonic())
        program.state = "running"
        program.respawn_now = False
        self.log.info("worker spawned", queue=program.spec.label, pid=pid, index=program.spec.index)

    def run_in_child(self, main: Callable[[], int]) -> None:
        """In a freshly forked child: undo the master's state, run ``main``, never return."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in HANDLED_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the master's to handle
            notify.set_parent_death_signal(signal.SIGTERM)
            if os.getppid() != self.pid:
                os._exit(EXIT_OK)
            self.selector.close()
            for close in self.fd_closers:
                close()
            if self.control is not None:
                self.control.close_in_child()
            for other in self.programs.values():
                if other.worker is not None:
                    os.close(other.worker.wake_fd)
            os.environ.pop("NOTIFY_SOCKET", None)
            os.environ.pop("WATCHDOG_USEC", None)
            faulthandler.enable()
            code = main()
        except SystemExit as exc:
            code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            logs.print_exception()
            code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):  # a broken pipe must not skip _exit
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)

    def worker_main(self, spec: WorkerSpec, slot: scoreboard.Slot, wake_fd: int) -> int:
        setproctitle.setproctitle(f"sqsd: worker {spec.label} starting")
        worker = Worker(
            spec,
            self.settings,
            slot=slot,
            givebacks=self.givebacks,
            wake_fd=wake_fd,
            master_pid=self.pid,
            message_limit=self.message_limit,
        )
        return worker.run()

    def reap_workers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            program = self.program_by_pid(pid)
            if program is None:
                if self.control is not None:
                    self.control.child_exited(pid, status)
                continue
            self.worker_exited(program, status)

    def worker_exited(self, program: Program, status: int) -> None:
        worker = program.worker
        assert worker is not None
        program.worker = None
        os.close(worker.wake_fd)
        counters = worker.slot.read().counters
        finished_messages = counters["processed"] + counters["failed"] + counters["retried"]
        self.scoreboard.release(worker.slot)
        now = time.monotonic()
        uptime = now - worker.started
        code = os.waitstatus_to_exitcode(status)
        reason = describe_exit(code)
        if worker.reason:
            reason = f"{reason} ({worker.reason})"
        program.last_exit = reason
        planned = bool(worker.stop_sent) or code == EXIT_RECYCLE or program.respawn_now
        log = self.log.bind(queue=program.spec.label, pid=worker.pid, exit=reason)
        if self.stopping_since or program.retired:
            log.info("worker exited")
            return
        program.restarts += 1
        if code == EXIT_CONFIG:
            program.state = "fatal"
            log.error("worker cannot run with this configuration; not restarting until reload")
        elif code == EXIT_OK and not planned:
            program.state = "exited"
            log.info("worker finished")
        elif planned:
            program.state = "starting"
            log.info("worker exited; replacing")
        else:
            # A worker that finished messages before crashing (one poison message among
            # good ones) is not in a crash loop: restart it at once, never give up on it.
            if uptime >= STABLE_AFTER or finished_messages:
                program.failures = 0
            program.failures += 1
            if program.failures >= FATAL_AFTER:
                program.state = "fatal"
                log.error(
                    "worker keeps crashing; giving up until reload", failures=program.failures
                )
            elif program.failures == 1:
                program.state = "starting"
                log.warning("worker crashed; restarting")
            else:
                delay = min(CRASH_BACKOFF_MAX, 2.0 ** (program.failures - 1))
                program.state = "backoff"
                program.next_start = now + delay * random.uniform(0.9, 1.1)
                log.warning(
                    "worker crashed again; backing off", failures=program.failures, seconds=delay
                )
        self.check_all_fatal()

    def check_all_fatal(self) -> None:
        active = self.active_programs()
        if active and all(p.state in ("fatal", "exited") for p in active):
            fatal = [p for p in active if p.state == "fatal"]
            if not fatal:
                self.exit_code = EXIT_OK
            elif all(p.last_exit and "exit 78" in p.last_exit for p in fatal):
                self.exit_code = EXIT_CONFIG  # systemd's RestartPreventExitStatus=78 applies
            else:
                self.exit_code = 1
            self.begin_stop(quick=False, reason="every queue is fatal" if fatal else "all done")

    def murder_workers(self) -> None:
        """Abort (stack dump) then kill workers stuck on one message or silent too long."""
        now = time.monotonic()
        for program in self.programs.values():
            worker = program.worker
            if worker is None:
                continue
            if worker.abort_sent:
                if now - worker.abort_sent > KILL_AFTER_ABORT:
                    self.kill(worker.pid, signal.SIGKILL)
                continue
            if worker.stop_sent:
                if (
                    now - worker.stop_sent > program.spec.queue.graceful_timeout
                    and not self.stopping_since
                ):
                    worker.reason = worker.reason or "killed after graceful_timeout"
                    self.kill(worker.pid, signal.SIGKILL)
                continue
            reason = hang_reason(program.spec.queue, worker.slot.read(), now)
            if reason:
                self.log.error(
                    "worker hung; aborting", queue=program.spec.label, pid=worker.pid, reason=reason
                )
                worker.reason = reason
                worker.abort_sent = now
                self.kill(worker.pid, signal.SIGABRT)

    def program_by_pid(self, pid: int) -> Program | None:
        for program in self.programs.values():
            if program.worker is not None and program.worker.pid == pid:
                return program
        return None

    # -- wake-ups -----------------------------------------------------------------------

    def wake(self, queue: str, suffix: str | None) -> int:
        """Wake the workers of ``queue`` (one suffix, or all); returns how many."""
        woken = 0
        for program in self.programs.values():
            spec = program.spec
            if spec.queue.name != queue or (suffix is not None and spec.suffix != suffix):
                continue
            if program.worker is None:
                continue
            # A full pipe already holds a wake-up; a closed one belongs to a worker being reaped.
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                os.write(program.worker.wake_fd, b"w")
            woken += 1
        return woken

    # -- observability ------------------------------------------------------------------

    def set_title(self) -> None:
        setproctitle.setproctitle(f"sqsd: master -c {self.config_path}")

    def report_health(self) -> None:
        if not self.notifier.enabled:
            return
        self.notifier.watchdog()
        running = sum(1 for p in self.programs.values() if p.worker is not None)
        fatal = sum(1 for p in self.programs.values() if p.state == "fatal")
        backoff = sum(1 for p in self.programs.values() if p.state == "backoff")
        status = f"{running} worker{'s' if running != 1 else ''} running"
        if backoff:
            status += f", {backoff} in crash backoff"
        if fatal:
            status += f", {fatal} fatal"
        self.notifier.status(status)


def worker_environment(settings: Settings) -> tuple[Any, ...]:
    """The daemon-wide keys a running worker was started with: a reload that changes
    them restarts every worker."""
    return (
        settings.region,
        settings.endpoint_url,
        settings.create_queues,
        settings.failed_log,
        settings.queue_prefix,
    )


def hang_reason(queue: QueueSettings, view: scoreboard.SlotView, now: float) -> str:
    """Why a worker counts as hung, or "" when it is fine."""
    if view.state == "busy" and view.message_started:
        running = now - view.message_started
        if queue.hard_timeout and running > queue.hard_timeout:
            return f"message {view.message_id} ran {running:.0f}s, past hard_timeout"
        return ""
    silent = now - view.heartbeat
    # A receive may take botocore's three attempts, each up to its read timeout.
    limit = 3 * (queue.wait_time_seconds + READ_TIMEOUT_MARGIN) + SILENCE_MARGIN
    if view.state in ("polling", "starting", "retrying") and silent > limit:
        return f"silent for {silent:.0f}s while {view.state}"
    if view.state == "idle" and silent > LOOP_TICK + SILENCE_MARGIN:
        return f"silent for {silent:.0f}s while idle"
    return ""


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    names = {
        EXIT_OK: "exited 0",
        EXIT_RECYCLE: "recycled (exit 75)",
        EXIT_CONFIG: "configuration error (exit 78)",
    }
    return names.get(code, f"exited {code}")


def import_receivers(settings: Settings) -> None:
    """Import ``[sqsd] imports`` so their decorators register queues (preload, before fork).
    Queues registered while they import (by modules they import in turn) count too."""
    for module in settings.imports:
        before = set(REGISTRY)
        preflight.import_module(module, f"{settings.path}: [sqsd] imports")
        IMPORTED_QUEUES.update(set(REGISTRY) - before)


IMPORTED_QUEUES: set[str] = set()  # registered while an `imports` module was imported


def resolve_reference(settings: Settings, queue: QueueSettings, key: str) -> Any:
    """Import ``module:attribute`` named by a queue key."""
    reference = getattr(queue, key)
    module_name, _, attribute = reference.partition(":")
    where = f"{settings.path}: [queues.{queue.name}] {key}"
    module = preflight.import_module(module_name, where)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(
            f"{where}: module {module_name!r} has no attribute {attribute!r}"
        ) from None


def resolve_handler(
    settings: Settings, queue: QueueSettings
) -> tuple[Callable[[Message], Any], type[Message]]:
    """The callable and message class for ``queue``: its ``receiver`` key, else a registration."""
    registration = REGISTRY.get(queue.name)
    message_class: type[Message] = registration.message_class if registration else Message
    if queue.message_class:
        message_class = resolve_reference(settings, queue, "message_class")
    if queue.receiver:
        handler = resolve_reference(settings, queue, "receiver")
        # A @receiver proxy or @task wrapper named in config: call what the worker should run.
        handler = getattr(handler, "handle", None) or getattr(handler, "direct", None) or handler
        if not callable(handler):
            raise ConfigError(
                f"{settings.path}: [queues.{queue.name}] receiver: expected a callable"
            )
        return handler, message_class
    if registration is None:
        raise ConfigError(
            f'{settings.path}: [queues.{queue.name}] receiver: expected a "module:callable" '
            "(no @receiver or @task registered this queue)"
        )
    return registration.handler, message_class


def _imported_by(module: str, imports: tuple[str, ...]) -> bool:
    """Registrations count when their module is listed in ``imports`` (or is inside one)."""
    return any(module == name or module.startswith(name + ".") for name in imports)

