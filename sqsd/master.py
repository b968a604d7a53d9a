"""The master: forks one worker per queue, suffix and process, keeps that set running,
and serves the control socket, all from one single-threaded selector loop.

Shape after gunicorn's arbiter: signal handlers only wake the loop; each turn of the loop
handles signals, reaps dead workers, murders hung ones and reconciles the running set with
the wanted one (``manage_workers``), so restarts fall out of reconciliation.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import setproctitle

from sqsd import attempts, children, logs, metrics, notify, plan, preflight, scaling, scoreboard
from sqsd import config as config_module
from sqsd.config import Settings
from sqsd.control.commands import ControlPlane
from sqsd.errors import EXIT_OK, ConfigError
from sqsd.local import resolve as resolve_local
from sqsd.loop import EventLoop
from sqsd.plan import WorkerSpec
from sqsd.states import (
    STOPPED_STATES,
    Program,
    ProgramState,
    WorkerExit,
    WorkerProcess,
    WorkerState,
    after_exit,
    exit_code_when_done,
    health_summary,
    overdue,
)
from sqsd.worker import Worker

QUICK_STOP_GRACE = 3.0  # seconds a quick stop leaves workers to flush their deletes
LOOP_TICK = 1.0


class ShutdownComplete(Exception):  # noqa: N818
    """Raised inside the loop when the master should exit with ``code``."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


@dataclass
class Master:
    """The supervisor process. ``run()`` returns the exit code."""

    settings: Settings
    config_path: str
    only_queues: tuple[str, ...] = ()
    only_suffix: str | None = None
    message_limit: int = 0
    local_endpoint: str = ""  # URL of the embedded endpoint `sqsd run` started, if any
    local_only: bool = False  # `sqsd run --local`: whatever endpoint_url says
    programs: dict[plan.Key, Program] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.log = logs.get("sqsd.master")
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.loop = EventLoop()
        self.scoreboard = scoreboard.Scoreboard()
        self.totals = metrics.Totals()  # what exited workers counted, for metrics and status
        self.attempts: attempts.AttemptTable | None = None  # opened by start(), before forks
        self.stopping_since = 0.0
        self.graceful_deadline = 0.0
        self.quick = False
        self.ready_sent = False
        self.exit_code = EXIT_OK
        self.notifier = notify.Notifier()
        self.control = ControlPlane(self, self.loop)
        self.poked = False  # the wanted set changed: supervise at the next turn
        self.supervised = 0.0  # when supervision last ran
        self.queues = plan.queue_settings(self.settings, self.only_queues, self.only_suffix)
        self.sizing = scaling.Sizing(self.queues, self.settings.max_workers)  # counts, autoscaling
        # One table says which signals the master catches and what each one does.
        self.signal_handlers: dict[int, Callable[[], None]] = {
            signal.SIGTERM: self.handle_sigterm,
            signal.SIGINT: self.handle_sigint,
            signal.SIGQUIT: self.handle_sigquit,
            signal.SIGHUP: self.handle_sighup,
            signal.SIGCHLD: self.reap_workers,
            signal.SIGTTIN: self.handle_sigttin,
            signal.SIGTTOU: self.handle_sigttou,
        }

    @property
    def stopping(self) -> bool:
        return bool(self.stopping_since)

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
        self.loop.catch_signals(self.signal_handlers)
        self.control.start()
        # After the control socket: a second daemon on the same socket stops before this.
        self.attempts = attempts.AttemptTable.open(attempts.default_path(self.settings.socket))
        setproctitle.setproctitle(f"sqsd: master -c {self.config_path}")
        wanted = plan.wanted(self.settings, self.queues, self.sizing.counts)
        self.programs = {key: Program(spec) for key, spec in wanted.items()}
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
        self.control.close()
        self.loop.close()

    def loop_once(self) -> None:
        served = self.loop.run_once(self.next_timeout())
        now = time.monotonic()
        # A turn that only served control clients (a wake-up flood, say) leaves supervision
        # to its own pace: signals, pokes, a quiet select or a tick's worth of time.
        only_clients = served and not (self.loop.signals_pending or self.poked)
        if only_clients and now - self.supervised < LOOP_TICK:
            return
        self.poked = False
        self.supervised = now
        self.handle_signals()
        self.reap_workers()
        self.murder_workers()
        self.autoscale()
        self.manage_workers()
        self.control.tick(now)
        self.report_health()
        if self.stopping_since:
            self.check_stopped()

    def next_timeout(self) -> float:
        timeout = min(LOOP_TICK, self.notifier.watchdog_interval or LOOP_TICK)
        now = time.monotonic()
        for program in self.programs.values():
            if program.worker is None and program.state is ProgramState.BACKOFF:
                timeout = min(timeout, max(0.0, program.next_start - now))
        return timeout

    # -- signals: the handlers only queue them; the work happens here --------------------

    def handle_signals(self) -> None:
        for signum in self.loop.pop_signals():
            if signum != signal.SIGCHLD:
                self.log.info("signal received", signal=signal.Signals(signum).name)
            self.signal_handlers[signum]()

    def handle_sigterm(self) -> None:
        self.begin_stop(quick=False)

    def handle_sigint(self) -> None:
        self.begin_stop(quick=self.stopping)  # a second Ctrl-C hurries up

    def handle_sigquit(self) -> None:
        self.begin_stop(quick=True)

    def handle_sighup(self) -> None:
        self.reload()

    def handle_sigttin(self) -> None:
        self.scale_all(+1)

    def handle_sigttou(self) -> None:
        self.scale_all(-1)

    # -- stopping -----------------------------------------------------------------------

    def begin_stop(self, *, quick: bool, reason: str = "") -> None:
        """Graceful: workers finish their message and give the rest back. Quick: SIGQUIT."""
        self.poked = True
        now = time.monotonic()
        if not self.stopping_since:
            self.stopping_since = now
            timeouts = [p.spec.queue.graceful_timeout for p in self.programs.values()]
            timeout = max(timeouts, default=0)
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
            program.state = ProgramState.STOPPING
            self.kill(worker.pid, signal.SIGQUIT if quick else signal.SIGTERM)

    def kill(self, pid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    # -- reload and scaling ------------------------------------------------------------

    def reload(self) -> str | None:
        """Re-read the configuration; on error keep running the old one. Returns the error."""
        self.notifier.reloading()
        try:
            settings = resolve_local(
                config_module.load(self.config_path), self.local_endpoint, forced=self.local_only
            )
            counts = self.sizing.counts  # a reload keeps them, within the new ranges
            queues, wanted = plan.prepare(settings, self.only_queues, self.only_suffix, counts)
            preflight.check(settings, queues, socket=False)
        except ConfigError as exc:
            self.log.error("reload failed; keeping the running configuration", error=str(exc))
            self.notifier.send("READY=1")
            return str(exc)
        if settings.socket != self.settings.socket:
            self.log.warning("socket changes need a restart; keeping", socket=self.settings.socket)
            settings = replace(settings, socket=self.settings.socket)
        moved = plan.worker_environment(settings) != plan.worker_environment(self.settings)
        changes = plan.diff(self.running_specs(), wanted, environment_changed=moved)
        logging = (settings.log_format, settings.log_level)
        if logging != (self.settings.log_format, self.settings.log_level):
            logs.configure(*logging)
        self.settings, self.queues = settings, queues
        self.sizing.reload(queues, settings.max_workers)  # drops `sqsctl scale` pins
        self.apply(changes, wanted, stop_reason="removed by reload", second_chance=True)
        self.log.info("configuration reloaded", workers=len(self.active_programs()))
        self.notifier.send("READY=1")
        return None

    def scale(self, queue: str, suffix: str, processes: int) -> int:
        """Pin the processes of one queue and suffix (`sqsctl scale`) until the next reload."""
        self.resize(self.sizing.pin(queue, suffix, processes, time.monotonic()))
        return processes

    def autoscale(self) -> None:
        """Carry out the scaling policy's decisions (sqsd.scaling decides; see there)."""
        for decision in [] if self.stopping else self.sizing.step(self.programs, time.monotonic()):
            self.resize(decision)

    def resize(self, decision: scaling.Decision) -> None:
        """Log a new count and re-plan; the worker a decision names is the one that stops."""
        self.log.info("scaling decision", **decision.log_fields())
        if decision.worker is not None:  # it takes the index that goes
            scaling.make_last(self.programs, (*decision.key, decision.worker), decision.after)
        wanted = plan.wanted(self.settings, self.queues, self.sizing.counts)
        reason = f"scaled {decision}"  # "scaled 3→2: worker 2 idle 61s"
        self.apply(plan.diff(self.running_specs(), wanted), wanted, stop_reason=reason)

    def running_specs(self) -> dict[plan.Key, WorkerSpec]:
        return {key: program.spec for key, program in self.programs.items()}

    def apply(
        self,
        changes: plan.Changes,
        wanted: dict[plan.Key, WorkerSpec],
        *,
        stop_reason: str,
        second_chance: bool = False,
    ) -> None:
        """Make the running set what ``wanted`` says; supervision does the rest. With
        ``second_chance`` (a reload), programs given up or backing off start again."""
        for key in changes.stop:
            program = self.programs[key]
            program.retired = True
            self.stop_worker(program, reason=stop_reason)
        for key in changes.restart:
            program = self.programs[key]
            program.spec, program.failures, program.retired = wanted[key], 0, False
            if program.worker is not None:
                self.stop_worker(program, reason="settings changed by reload")
            elif program.state in (*STOPPED_STATES, ProgramState.BACKOFF):
                program.state = ProgramState.STARTING
        for key in changes.keep:
            program = self.programs[key]
            program.spec, program.retired = wanted[key], False  # wanted again, if stopping
            if second_chance and program.state in (ProgramState.FATAL, ProgramState.BACKOFF):
                program.state, program.failures = ProgramState.STARTING, 0
        for key in changes.start:
            self.programs[key] = Program(wanted[key])
        self.poked = True

    def scale_all(self, delta: int) -> None:
        for (queue, suffix), count in list(self.sizing.counts.items()):
            self.scale(queue, suffix, max(0, count + delta))

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
                self.totals.forget(self.programs.pop(key))
                continue
            if self.stopping_since or program.state in STOPPED_STATES:
                continue
            if program.state is ProgramState.BACKOFF and now < program.next_start:
                continue
            self.spawn_worker(program)
        if not self.ready_sent and not self.stopping_since:
            self.ready_sent = True
            self.notifier.send("READY=1")

    def spawn_worker(self, program: Program) -> None:
        slot = self.scoreboard.allocate()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        pid = self.fork(lambda: self.worker_main(program.spec, slot, wake_r), close=(wake_w,))
        os.close(wake_r)
        program.worker = WorkerProcess(pid=pid, slot=slot, wake_fd=wake_w, started=time.monotonic())
        program.state = ProgramState.RUNNING
        self.log.info("worker spawned", queue=program.spec.label, pid=pid, index=program.spec.index)

    def fork(self, main: Callable[[], int], close: Iterable[int] = ()) -> int:
        """Fork a child that runs ``main`` and never returns into master code; its pid."""

        def undo() -> None:
            self.loop.close_in_child()
            self.notifier.close()
            self.control.close_in_child()
            for fd in [*close, *(p.worker.wake_fd for p in self.programs.values() if p.worker)]:
                os.close(fd)

        return children.fork(main, undo=undo)

    def worker_main(self, spec: WorkerSpec, slot: scoreboard.Slot, wake_fd: int) -> int:
        setproctitle.setproctitle(f"sqsd: worker {spec.label} {WorkerState.STARTING.label}")
        assert self.attempts is not None
        worker = Worker(spec, self.settings, slot=slot, attempts=self.attempts, wake_fd=wake_fd,
                        master_pid=self.pid, message_limit=self.message_limit)
        return worker.run()

    def reap_workers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            by_pid = {p.worker.pid: p for p in self.programs.values() if p.worker is not None}
            if pid in by_pid:
                self.worker_exited(by_pid[pid], status)
            else:
                self.control.child_exited(pid, status)

    def worker_exited(self, program: Program, status: int) -> None:
        worker = program.worker
        assert worker is not None
        program.worker = None
        os.close(worker.wake_fd)
        finished_messages = self.totals.reap(program, worker.slot)
        self.scoreboard.release(worker.slot)
        program.last_exit = WorkerExit(os.waitstatus_to_exitcode(status), worker.reason)
        log = self.log.bind(queue=program.spec.label, pid=worker.pid, exit=str(program.last_exit))
        if self.stopping_since or program.retired:
            log.info("worker exited")
            return
        program.restarts += 1
        now = time.monotonic()
        restart = after_exit(
            program.last_exit.code,
            stop_sent=bool(worker.stop_sent),
            failures=program.failures,
            uptime=now - worker.started,
            progressed=bool(finished_messages),
        )
        program.state, program.failures = restart.state, restart.failures
        program.next_start = now + restart.delay * random.uniform(0.9, 1.1)
        if restart.state is ProgramState.FATAL:
            log.error(restart.event, failures=restart.failures if restart.crashed else None)
        elif restart.crashed:
            log.warning(restart.event, failures=restart.failures, seconds=restart.delay or None)
        else:
            log.info(restart.event)
        self.check_all_fatal()

    def check_all_fatal(self) -> None:
        code = exit_code_when_done(self.active_programs())
        if code is not None:
            self.exit_code = code
            reason = "all done" if code == EXIT_OK else "every queue is fatal"
            self.begin_stop(quick=False, reason=reason)

    def murder_workers(self) -> None:
        """Abort (stack dump) then kill workers stuck on one message or silent too long."""
        now = time.monotonic()
        for program in self.programs.values():
            worker = program.worker
            verdict = worker and overdue(worker, program.spec.queue, now, stopping=self.stopping)
            if not worker or not verdict:
                continue
            signum, worker.reason = verdict
            if signum == signal.SIGABRT:
                log = self.log.bind(queue=program.spec.label, pid=worker.pid)
                log.error("worker hung; aborting", reason=worker.reason)
                worker.abort_sent = now
            self.kill(worker.pid, signum)

    # -- wake-ups -----------------------------------------------------------------------

    def wake(self, queue: str, suffix: str | None) -> int:
        """Wake the workers of ``queue`` (one suffix, or all); returns how many."""
        self.sizing.wake(queue, suffix)  # a queue autoscaled down to no worker starts one
        workers = [
            p.worker
            for p in self.programs.values()
            if p.worker is not None
            and p.spec.queue.name == queue
            and suffix in (None, p.spec.suffix)
        ]
        for worker in workers:
            # A full pipe already holds a wake-up; a closed one belongs to a worker being reaped.
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                os.write(worker.wake_fd, b"w")
        return len(workers)

    # -- observability ------------------------------------------------------------------

    def report_health(self) -> None:
        if self.notifier.enabled:
            self.notifier.watchdog()
            self.notifier.status(health_summary(self.programs.values()))
