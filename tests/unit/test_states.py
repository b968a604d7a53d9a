"""The state vocabulary, the restart policy and hang detection, as pure functions."""

from __future__ import annotations

import signal
from dataclasses import dataclass

import pytest

from sqsd.config import QueueSettings
from sqsd.errors import EXIT_CONFIG, EXIT_DONE, EXIT_FAILED, EXIT_OK, EXIT_RECYCLE
from sqsd.states import (
    CRASH_BACKOFF_MAX,
    FATAL_AFTER,
    KILL_AFTER_ABORT,
    STABLE_AFTER,
    Program,
    ProgramState,
    WorkerExit,
    WorkerProcess,
    WorkerState,
    after_exit,
    exit_code_when_done,
    hang_reason,
    health_summary,
    overdue,
    shown_state,
)

QUEUE = QueueSettings(name="q", wait_time_seconds=20, hard_timeout=30)


@dataclass
class View:
    state: WorkerState
    heartbeat: float = 0.0
    message_started: float = 0.0
    message_id: str = ""
    busy: int = 1
    slots: int = 1
    asyncio: bool = False


class FakeSlot:
    def __init__(self, state: WorkerState):
        self.view = View(state)

    def read(self) -> View:
        return self.view


def crash(code: int = 1, *, failures: int = 0, uptime: float = 1.0, progressed=False, **kw):
    return after_exit(
        code, stop_sent=kw.get("stop_sent", False), failures=failures, uptime=uptime,
        progressed=progressed,
    )


# -- the restart policy ----------------------------------------------------------------


def test_first_crash_restarts_at_once_then_backoff_doubles_up_to_the_cap():
    first = crash(failures=0)
    assert (first.state, first.delay, first.failures, first.crashed) == (
        ProgramState.STARTING, 0.0, 1, True)
    delays = []
    failures = first.failures
    for _ in range(FATAL_AFTER - 2):
        restart = crash(failures=failures)
        assert restart.state is ProgramState.BACKOFF
        delays.append(restart.delay)
        failures = restart.failures
    assert delays == [min(CRASH_BACKOFF_MAX, 2.0**n) for n in range(1, FATAL_AFTER - 1)]


def test_backoff_is_capped_at_sixty_seconds():
    # the cap applies where the doubling would pass it (7 crashes: 64 s)
    assert crash(failures=6).delay == CRASH_BACKOFF_MAX == 60.0


def test_the_eighth_consecutive_crash_is_fatal():
    restart = crash(failures=FATAL_AFTER - 1)
    assert (restart.state, restart.failures) == (ProgramState.FATAL, FATAL_AFTER)
    assert "giving up" in restart.event


def test_a_worker_that_ran_long_or_finished_messages_starts_a_fresh_crash_count():
    assert crash(failures=5, uptime=STABLE_AFTER).failures == 1
    assert crash(failures=5, progressed=True).state is ProgramState.STARTING


def test_configuration_error_is_fatal_at_once_whatever_the_history():
    for stop_sent in (False, True):
        restart = crash(EXIT_CONFIG, failures=3, stop_sent=stop_sent)
        assert (restart.state, restart.failures, restart.crashed) == (
            ProgramState.FATAL, 3, False)


def test_recycling_and_asked_for_stops_are_replaced_without_counting_a_crash():
    for code, stop_sent in [(EXIT_RECYCLE, False), (EXIT_OK, True), (1, True),
                            (-signal.SIGKILL, True)]:
        restart = crash(code, failures=2, stop_sent=stop_sent)
        assert (restart.state, restart.delay, restart.failures, restart.crashed) == (
            ProgramState.STARTING, 0.0, 2, False), code


def test_signals_the_master_did_not_send_are_crashes():
    assert crash(-signal.SIGKILL).crashed


def test_exit_0_without_being_asked_is_a_crash():
    # sys.exit() in a handler, a stray SIGTERM: the queue must not stop for good (#10)
    first = crash(EXIT_OK)
    assert (first.state, first.crashed, first.failures) == (ProgramState.STARTING, True, 1)
    assert crash(EXIT_OK, failures=1).state is ProgramState.BACKOFF
    assert crash(EXIT_OK, failures=FATAL_AFTER - 1).state is ProgramState.FATAL


def test_message_limit_reached_is_finished_for_good():
    for stop_sent in (False, True):
        restart = crash(EXIT_DONE, failures=2, stop_sent=stop_sent)
        assert (restart.state, restart.crashed, restart.failures) == (
            ProgramState.EXITED, False, 2)


# -- what operators see ----------------------------------------------------------------


def program(state: ProgramState, worker_state: WorkerState | None = None, **worker) -> Program:
    p = Program(spec=None, state=state)  # type: ignore[arg-type]
    if worker_state is not None:
        p.worker = WorkerProcess(pid=1, slot=FakeSlot(worker_state), wake_fd=-1, started=0.0,
                                 **worker)
    return p


@pytest.mark.parametrize(("prog", "shown"), [
    (program(ProgramState.BACKOFF), "crashloop"),
    (program(ProgramState.FATAL), "fatal"),
    (program(ProgramState.EXITED), "exited"),
    (program(ProgramState.STARTING), "starting"),
    (program(ProgramState.RUNNING, WorkerState.IDLE), "idle"),
    (program(ProgramState.RUNNING, WorkerState.BUSY), "busy"),
    (program(ProgramState.RUNNING, WorkerState.STARTING), "starting"),
    (program(ProgramState.STOPPING, WorkerState.BUSY, stop_sent=1.0), "stopping"),
])
def test_shown_state(prog, shown):
    assert shown_state(prog) == shown


def test_exits_read_as_before():
    assert str(WorkerExit(1)) == "exited 1"
    assert str(WorkerExit(EXIT_CONFIG)) == "configuration error (exit 78)"
    assert str(WorkerExit(EXIT_RECYCLE)) == "recycled (exit 75)"
    assert str(WorkerExit(-signal.SIGKILL, "killed after graceful_timeout")) == (
        "killed by SIGKILL (killed after graceful_timeout)")
    assert str(WorkerExit(-200)) == "killed by signal 200"
    assert str(WorkerExit(EXIT_DONE)) == "message limit reached (exit 79)"


def test_an_unknown_slot_byte_reads_as_starting():
    assert WorkerState.from_byte(200) is WorkerState.STARTING
    assert WorkerState.from_byte(3) is WorkerState.BUSY


# -- hang detection --------------------------------------------------------------------


def test_a_message_past_hard_timeout_is_a_hang():
    busy = View(WorkerState.BUSY, heartbeat=0.0, message_started=100.0, message_id="m1")
    assert hang_reason(QUEUE, busy, 100.0 + 29) == ""
    assert hang_reason(QUEUE, busy, 100.0 + 31) == "message m1 ran 31s, past hard_timeout"
    assert hang_reason(QueueSettings(name="q"), busy, 1e6) == ""  # no hard_timeout


def test_silence_while_polling_allows_botocore_retries_but_not_more():
    limit = 3 * (20 + 10) + 30
    polling = View(WorkerState.POLLING, heartbeat=0.0)
    assert hang_reason(QUEUE, polling, limit - 1) == ""
    assert hang_reason(QUEUE, polling, limit + 1) == f"silent for {limit + 1}s while polling"


def test_silence_while_idle_is_a_hang_after_half_a_minute():
    idle = View(WorkerState.IDLE, heartbeat=0.0)
    assert hang_reason(QUEUE, idle, 30) == ""
    assert hang_reason(QUEUE, idle, 32) == "silent for 32s while idle"


def test_a_hung_worker_is_aborted_then_killed():
    worker = WorkerProcess(pid=1, slot=FakeSlot(WorkerState.IDLE), wake_fd=-1, started=0.0)
    assert overdue(worker, QUEUE, 10.0, stopping=False) is None
    assert overdue(worker, QUEUE, 40.0, stopping=False) == (
        signal.SIGABRT, "silent for 40s while idle")
    worker.abort_sent, worker.reason = 40.0, "silent for 40s while idle"
    assert overdue(worker, QUEUE, 40.0 + KILL_AFTER_ABORT, stopping=False) is None
    assert overdue(worker, QUEUE, 41.0 + KILL_AFTER_ABORT, stopping=False) == (
        signal.SIGKILL, "silent for 40s while idle")


def test_a_worker_ignoring_its_stop_is_killed_after_graceful_timeout():
    worker = WorkerProcess(pid=1, slot=FakeSlot(WorkerState.BUSY), wake_fd=-1, started=0.0,
                           stop_sent=100.0)
    deadline = 100.0 + QUEUE.graceful_timeout
    assert overdue(worker, QUEUE, deadline, stopping=False) is None
    assert overdue(worker, QUEUE, deadline + 1, stopping=False) == (
        signal.SIGKILL, "killed after graceful_timeout")
    assert overdue(worker, QUEUE, deadline + 1, stopping=True) is None  # one deadline for all


def test_health_summary_is_systemds_status_line():
    programs = [program(ProgramState.RUNNING, WorkerState.IDLE), program(ProgramState.BACKOFF),
                program(ProgramState.FATAL)]
    assert health_summary(programs[:1]) == "1 worker running"
    assert health_summary(programs) == "1 worker running, 1 in crash backoff, 1 fatal"
    assert health_summary([]) == "0 workers running"


def given_up(code: int) -> Program:
    p = program(ProgramState.FATAL)
    p.last_exit = WorkerExit(code)
    return p


def test_the_daemon_ends_once_every_program_stopped_for_good():
    assert exit_code_when_done([]) is None
    assert exit_code_when_done([program(ProgramState.EXITED), program(ProgramState.BACKOFF)]) \
        is None
    assert exit_code_when_done([program(ProgramState.EXITED)]) == EXIT_OK
    assert exit_code_when_done([given_up(EXIT_CONFIG), program(ProgramState.EXITED)]) \
        == EXIT_CONFIG
    assert exit_code_when_done([given_up(EXIT_CONFIG), given_up(1)]) == EXIT_FAILED
