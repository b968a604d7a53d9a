"""One vocabulary for the life of workers, after supervisord's ``states.py``.

A *program* is one wanted worker (queue, suffix, index) and its restart history; its
``ProgramState`` is the master's. A *worker* is the process running a program; its
``WorkerState`` is what the worker writes into its scoreboard slot. What operators see
(status replies, ``sqsctl status``) is derived from both in one place: ``shown_state``.

The restart policy (``after_exit``) and hang detection (``hang_reason``) are pure
functions of these, so they are tested without forking anything.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

from sqsd.errors import EXIT_CONFIG, EXIT_DONE, EXIT_FAILED, EXIT_OK, EXIT_RECYCLE
from sqsd.sqs import READ_TIMEOUT_MARGIN

if TYPE_CHECKING:
    from sqsd.config import QueueSettings
    from sqsd.plan import WorkerSpec

CRASH_BACKOFF_MAX = 60.0
STABLE_AFTER = 60.0  # a worker up this long resets its crash backoff
FATAL_AFTER = 8  # consecutive crashes before a program is given up until reload
KILL_AFTER_ABORT = 5.0  # seconds between SIGABRT (stack dump) and SIGKILL of a hung worker
SILENCE_MARGIN = 30.0
IDLE_BEAT = 1.0  # a sleeping worker beats at least this often
# An async def handler past hard_timeout is cancelled by its worker; only a worker whose
# event loop does not get to it this much later (a blocking call) is aborted.
CANCEL_GRACE = 5.0


class ProgramState(enum.Enum):
    """The master's view of one wanted worker."""

    STARTING = enum.auto()  # no worker yet: one is spawned at the next turn
    RUNNING = enum.auto()  # its worker runs
    STOPPING = enum.auto()  # its worker was asked to stop
    BACKOFF = enum.auto()  # crashed again: waits ``next_start`` before it is spawned
    EXITED = enum.auto()  # finished for good (``--message-limit``)
    FATAL = enum.auto()  # given up until reload (configuration error, endless crashes)


CRASHLOOP = "crashloop"  # what operators see of BACKOFF

# No worker, and none is started before a reload.
STOPPED_STATES = frozenset({ProgramState.EXITED, ProgramState.FATAL})
# No worker yet, one will be started.
WAITING_STATES = frozenset({ProgramState.STARTING, ProgramState.BACKOFF})


class WorkerState(enum.IntEnum):
    """What a worker is doing, as it writes it into its scoreboard slot (the value is the
    byte stored there)."""

    STARTING = 0  # finding its queue
    POLLING = 1  # in ReceiveMessage
    IDLE = 2  # sleeping after an empty receive, until woken or ``idle_until``
    BUSY = 3  # a handler runs
    STOPPING = 4  # finishing up: flushing deletes
    RETRYING = 5  # sleeping after a failed SQS call, until ``idle_until``

    @property
    def label(self) -> str:
        """The name operators see, in status and in the process title."""
        return self.name.lower()

    @classmethod
    def from_byte(cls, value: int) -> WorkerState:
        """The state a slot holds; an unknown byte (a half-written slot) reads as STARTING."""
        try:
            return cls(value)
        except ValueError:
            return cls.STARTING


# Sleeping until ``idle_until``: status shows the seconds left.
SLEEPING_STATES = frozenset({WorkerState.IDLE, WorkerState.RETRYING})
# Inside an SQS call (or its retries): silence up to botocore's timeouts is normal.
CALLING_STATES = frozenset({WorkerState.STARTING, WorkerState.POLLING, WorkerState.RETRYING})


@dataclass
class SlotView:
    """A snapshot of one worker's scoreboard slot, as the master reads it."""

    state: WorkerState
    heartbeat: float
    state_since: float
    message_started: float
    idle_until: float
    counters: dict[str, int]
    message_id: str
    last_batch: int = 0  # messages the last receive returned
    oldest_age: float = 0.0  # seconds its oldest had waited (0: unknown, or after idling)
    idle_since: float = 0.0  # while last_batch is 0: since when receives come back empty
    busy: int = 0  # handler slots running a message
    slots: int = 1  # handler slots in all (the queue's concurrency)
    asyncio: bool = False  # the handlers are async def tasks on one event loop


class Slot(Protocol):
    """A worker's scoreboard slot (``sqsd.scoreboard.Slot``)."""

    def read(self) -> SlotView: ...


@dataclass
class WorkerProcess:
    """A forked worker, as the master tracks it."""

    pid: int
    slot: Slot
    wake_fd: int
    started: float
    stop_sent: float = 0.0
    abort_sent: float = 0.0
    reason: str = ""  # why the master stopped or killed it, for the exit log line


@dataclass(frozen=True)
class WorkerExit:
    """How a worker ended: its exit code (negative: killed by that signal) and why the
    master stopped or killed it, if it did."""

    code: int
    reason: str = ""

    def __str__(self) -> str:
        text = describe_exit(self.code)
        return f"{text} ({self.reason})" if self.reason else text


@dataclass
class Program:
    """One wanted worker (queue, suffix, index) and its restart history (supervisord's term)."""

    spec: WorkerSpec
    state: ProgramState = ProgramState.STARTING
    worker: WorkerProcess | None = None
    failures: int = 0  # consecutive crashes
    restarts: int = 0
    next_start: float = 0.0  # BACKOFF: not spawned before this (time.monotonic())
    last_exit: WorkerExit | None = None
    retired: bool = False  # no longer wanted: stop it and forget it

    @property
    def key(self) -> tuple[str, str, int]:
        return self.spec.key


def shown_state(program: Program) -> str:
    """The state operators see: the worker's own while it runs, else the program's, with
    BACKOFF shown as CRASHLOOP."""
    worker = program.worker
    if worker is None:
        if program.state is ProgramState.BACKOFF:
            return CRASHLOOP
        return program.state.name.lower()
    if worker.stop_sent:
        return WorkerState.STOPPING.label
    return worker.slot.read().state.label


def health_summary(programs: Iterable[Program]) -> str:
    """The one line systemd shows as the unit's status."""
    programs = list(programs)
    running = sum(1 for p in programs if p.worker is not None)
    backoff = sum(1 for p in programs if p.state is ProgramState.BACKOFF)
    fatal = sum(1 for p in programs if p.state is ProgramState.FATAL)
    summary = f"{running} worker{'s' if running != 1 else ''} running"
    if backoff:
        summary += f", {backoff} in crash backoff"
    if fatal:
        summary += f", {fatal} fatal"
    return summary


def exit_code_when_done(programs: Iterable[Program]) -> int | None:
    """The daemon's exit code once every wanted program has stopped for good (None while
    any still runs or will start): 0 when all finished, 78 when every fatal one is a
    configuration error (systemd's RestartPreventExitStatus=78 applies), else 1."""
    programs = list(programs)
    if not programs or any(p.state not in STOPPED_STATES for p in programs):
        return None
    fatal = [p for p in programs if p.state is ProgramState.FATAL]
    if not fatal:
        return EXIT_OK
    if all(p.last_exit is not None and p.last_exit.code == EXIT_CONFIG for p in fatal):
        return EXIT_CONFIG
    return EXIT_FAILED


# -- the restart policy ----------------------------------------------------------------


class Restart(NamedTuple):
    """What follows a worker's exit."""

    state: ProgramState
    delay: float  # seconds before the next start (BACKOFF), before jitter
    failures: int  # consecutive crashes, this exit included
    crashed: bool  # the exit was a crash
    event: str  # the log line that says so


def after_exit(
    code: int, *, stop_sent: bool, failures: int, uptime: float, progressed: bool
) -> Restart:
    """Decide what happens to a program whose worker exited with ``code``.

    ``stop_sent``: the master asked it to stop. ``failures``: consecutive crashes so far.
    ``progressed``: it finished messages before it ended. A worker that exits 0 without
    being asked is a crash; recycling (75) and stops are not; 78 (configuration) and 79
    (``--message-limit`` reached) end the program until reload.
    """
    if code == EXIT_CONFIG:
        return Restart(
            ProgramState.FATAL,
            0.0,
            failures,
            False,
            "worker cannot run with this configuration; not restarting until reload",
        )
    if code == EXIT_DONE:
        return Restart(ProgramState.EXITED, 0.0, failures, False, "worker finished")
    if stop_sent or code == EXIT_RECYCLE:
        return Restart(ProgramState.STARTING, 0.0, failures, False, "worker exited; replacing")
    # A worker that finished messages before crashing (one poison message among good
    # ones) is not in a crash loop: restart it at once, never give up on it.
    if uptime >= STABLE_AFTER or progressed:
        failures = 0
    failures += 1
    if failures >= FATAL_AFTER:
        return Restart(
            ProgramState.FATAL, 0.0, failures, True, "worker keeps crashing; giving up until reload"
        )
    if failures == 1:
        return Restart(ProgramState.STARTING, 0.0, failures, True, "worker crashed; restarting")
    delay = min(CRASH_BACKOFF_MAX, 2.0 ** (failures - 1))
    return Restart(ProgramState.BACKOFF, delay, failures, True, "worker crashed again; backing off")


def describe_exit(code: int) -> str:
    """An exit code for people ("killed by SIGKILL", "recycled (exit 75)", ...)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    names = {
        EXIT_OK: "exited 0",
        EXIT_RECYCLE: "recycled (exit 75)",
        EXIT_CONFIG: "configuration error (exit 78)",
        EXIT_DONE: "message limit reached (exit 79)",
    }
    return names.get(code, f"exited {code}")


# -- hang detection --------------------------------------------------------------------


def hang_reason(queue: QueueSettings, view: SlotView, now: float) -> str:
    """Why a worker counts as hung, or "" when it is fine."""
    if view.message_started:  # the oldest of the messages running now
        running = now - view.message_started
        if not queue.hard_timeout or running <= queue.hard_timeout:
            return ""
        if view.asyncio and running <= queue.hard_timeout + CANCEL_GRACE:
            return ""  # the worker cancels that task itself
        if view.busy > 1 and running <= queue.hard_timeout + queue.graceful_timeout:
            return ""  # the worker takes nothing new and lets the other handlers finish
        return f"message {view.message_id} ran {running:.0f}s, past hard_timeout"
    silent = now - view.heartbeat
    # A receive may take botocore's three attempts, each up to its read timeout.
    limit = 3 * (queue.wait_time_seconds + READ_TIMEOUT_MARGIN) + SILENCE_MARGIN
    if view.state in CALLING_STATES and silent > limit:
        return f"silent for {silent:.0f}s while {view.state.label}"
    if view.state is WorkerState.IDLE and silent > IDLE_BEAT + SILENCE_MARGIN:
        return f"silent for {silent:.0f}s while idle"
    return ""


def overdue(
    worker: WorkerProcess, queue: QueueSettings, now: float, *, stopping: bool
) -> tuple[signal.Signals, str] | None:
    """The signal a worker that overstays gets now, and why; None when it is fine.

    A hung worker gets SIGABRT (its stack goes to the log), then SIGKILL if it is still
    there KILL_AFTER_ABORT later; a worker that ignores a stop gets SIGKILL after its
    queue's graceful_timeout (the daemon's own stop keeps one deadline for all).
    """
    if worker.abort_sent:
        if now - worker.abort_sent > KILL_AFTER_ABORT:
            return signal.SIGKILL, worker.reason
        return None
    if worker.stop_sent:
        if not stopping and now - worker.stop_sent > queue.graceful_timeout:
            return signal.SIGKILL, worker.reason or "killed after graceful_timeout"
        return None
    reason = hang_reason(queue, worker.slot.read(), now)
    return (signal.SIGABRT, reason) if reason else None
