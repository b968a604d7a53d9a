"""A model-based test of the worker's message engine (issue #10, "Must show").

A ``hypothesis.stateful`` machine drives the real ``sqsd.worker.Worker`` in this process:
its ``_receive`` and ``_process_batch``, and the real ``run()`` loops of its helper threads
(heartbeat and deleter; before #10 one housekeeper), stepped by a small discrete-event
scheduler on a fake clock: the threads are never started, their conditions are replaced by
ones that hand control back instead of blocking, and while one of them (or the main thread)
is inside a slow call the others run. SQS is the in-process fake of tests/support/fake_sqs.py.
At every SQS call, before every handler start and inside every handler the machine draws
what goes wrong: throttling, a 5xx, a ``Failed`` batch entry, a call that stalls for 5 to 40
seconds, a SIGTERM, or the worker process dying (before or after SQS applied the call,
before a handler, while it runs, after it returned but before the delete, during a delete,
a dead-letter send, a heartbeat or a give-back). A death raises ``Killed`` and the Worker
object is thrown away with all its memory; the next one shares only what survives a crash:
the fake SQS and the attempt table. A master restart (graceful or killed) also reopens the
attempt table from its file (before #10: a new give-back table, which lived in the master's
anonymous memory). Messages: plain, slow (2.5 visibility timeouts), poison, crashing,
RestartLater, failing once, delayed beyond SQS's 15 minutes, garbage ``sqsd_not_before``.

The invariant, checked at every delete and dead-letter send, after every step and after
draining without faults at the end: every message sent is still in the queue, or was
deleted after a handler returned, or failed under the queue's on_error policy (with its
failed-log record), or was dead-lettered (or logged and dropped) after exactly
max_retries + 1 handler starts of that SQS message (or past the max_receives safety net);
no handler starts more than max_retries + 1 times without a success, none before its
``sqsd_not_before``; a message is hidden from other workers while its handler runs and
until its delete after success, unless an extension call failed (since #10: stalled past
the margin; a failed one must be retried before the deadline); no exception escapes the
engine; after draining nothing is left in the queue.

``make test`` runs a few hundred cases; ``SQSD_CHAOS=long`` (``make chaos``) many thousands.
Figures: tests/unit/worker-model-last-run.json and the terminal summary.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import note as _hypothesis_note
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import sqsd.worker as worker_module
from sqsd import logs
from sqsd.config import QueueSettings, Settings
from sqsd.errors import RestartLater
from sqsd.message import Message
from sqsd.plan import WorkerSpec
from tests.support import fake_sqs
from tests.support.fake_sqs import FakeClock, FakeSQS, Killed

LONG = os.environ.get("SQSD_CHAOS", "").lower() == "long"
FIGURES_PATH = Path(__file__).with_name("worker-model-last-run.json")
QUEUE, DEAD_LETTERS = "model", "model_failed"
VISIBILITY = 30
# What a message's handler does: return (ok), take 2.5 visibility timeouts (slow), raise
# (poison), kill the worker (crash), raise RestartLater (transient), raise the first time
# (flaky); and messages a producer delayed beyond SQS's 15 minutes (delayed: the worker
# re-sends them until due) or whose sqsd_not_before is garbage (treated as absent).
KINDS = ("ok", "slow", "poison", "crash", "transient", "flaky", "delayed", "garbage")
# Exploration knob: SQSD_MODEL_WITHOUT="kill,crash,stall" leaves out every fate and kind
# whose name contains one of the words (to find the next kind of counterexample).
WITHOUT = tuple(w for w in os.environ.get("SQSD_MODEL_WITHOUT", "").split(",") if w)
KINDS = tuple(k for k in KINDS if not any(w in k for w in WITHOUT))
GARBAGE = ("nan", "inf", "-inf", "-5", "abc", "1e400", "")
DELAY = 1000  # seconds: beyond SQS's longest DelaySeconds (900)
CLOCK = FakeClock()
# Issue #10 asks for extensions never queued behind deletes and failed ones retried well
# before the deadline: then only an extension call stalled past the margin excuses a lapse.
# Where the worker's helper threads live (sqsd.housekeeping since #10): its ``time`` is
# patched too.
housekeeping = sys.modules[worker_module.Housekeeper.__module__]
# Where the worker's actions on one message live (sqsd.message_actions since #15): its
# ``time`` is patched too (re-delays read the wall clock, give backs sleep).
message_actions = sys.modules[worker_module.Worker._give_back.__module__]
STRICT_HEARTBEAT = os.environ.get(
    "SQSD_MODEL_STRICT_HEARTBEAT", "1" if hasattr(housekeeping, "Heartbeat") else "") == "1"
if hasattr(worker_module, "QuickStop"):
    # A real crash (os._exit, SIGKILL) cannot be caught. The worker of issue #10 catches
    # every BaseException a handler raises but the QuickStop of its SIGQUIT handler, so a
    # death inside a handler travels as one of those (nothing in the worker acts on it but
    # `finally` clauses, which touch neither SQS nor the attempt table).
    class HandlerKilled(Killed, worker_module.QuickStop):
        pass
else:  # today's main catches Exception only
    HandlerKilled = Killed  # type: ignore[misc]

TABLE_KEYWORD = "attempts" if "attempts" in inspect.signature(worker_module.Worker).parameters \
    else "givebacks"

# Figures over all cases of this session.
FIGURES: dict[str, Any] = {
    "cases": 0, "steps": 0, "longest_run": 0, "messages": 0, "most_messages": 0,
    "handled": 0, "failed": 0, "dead_lettered": 0, "safety_net": 0, "re_delayed": 0,
    "dead_lettered_after_success": 0, "kills": 0,
    "graceful_stops": 0, "master_restarts": 0, "faults": 0, "lapses": 0, "drain_rounds": 0,
}


def note(text: str) -> None:
    """hypothesis.note, shown with a failing case; printed when the machine runs by hand."""
    try:
        _hypothesis_note(text)
    except InvalidArgument:
        if os.environ.get("SQSD_MODEL_VERBOSE"):
            print(text)


class Violation(AssertionError):
    """The at-least-once contract is broken. One subclass per rule, so that hypothesis
    reports each broken rule with its own shrunk case."""


class Vanished(Violation):
    """A message left the queue without a delete."""


class DeletedUnhandled(Violation):
    """Deleted with no handler returned, no failure to log and no dead-letter record."""


class WrongStarts(Violation):
    """Dead-lettered (or logged and dropped) for max_retries after other than exactly
    max_retries + 1 handler starts."""


class TooManyStarts(Violation):
    """A handler started more than max_retries + 1 times without ever succeeding."""


class TwoAtOnce(Violation):
    """A handler starts on a message SQS already shows to other workers (no heartbeat
    call failed to explain it)."""


class FailedUnlogged(Violation):
    """A failed message left the queue without its failure record."""


class Spins(Violation):
    """A worker thread wakes up again and again without time passing."""


class TooEarly(Violation):
    """A delayed message's handler ran before its sqsd_not_before."""


class WorkerCrashed(Violation):
    """An exception escaped the worker's message engine (the process would exit)."""


class Stuck(Violation):
    """Without faults, a message never leaves the queue."""


class Abort(BaseException):  # noqa: N818 - carries a violation through the worker's
    """``except Exception`` clauses (a check fails inside an SQS call or a handler)."""


# -- stand-ins for the master's side and the worker's threads --------------------------------


class NullLog:
    """structlog's interface, saying nothing (the default renderer would print every line)."""

    def __getattr__(self, name: str) -> Any:
        return self._nothing

    def _nothing(self, *args: Any, **kwargs: Any) -> Any:
        return self

    def bind(self, **kwargs: Any) -> NullLog:
        return self


class _Pause(BaseException):  # noqa: N818 - control flow of the scheduler
    def __init__(self, timeout: float | None):
        super().__init__(timeout)
        self.timeout = timeout


class SimThread:
    """A worker thread (the housekeeper) that the scheduler runs in this OS thread."""

    def __init__(self, name: str, run: Any):
        self.name = name
        self.run = run
        self.wake: float | None = 0.0  # when it is due to run; None = waits for a notify
        self.resuming = False  # its next wait() returns: the wait it paused in is over
        self.done = False
        self.active = False


class Scheduler:
    """Runs SimThreads on the fake clock: each runs until it would block, then pauses."""

    SPIN_LIMIT = 20_000

    def __init__(self, clock: FakeClock, fail: Any):
        self.clock = clock
        self.fail = fail
        self.threads: list[SimThread] = []
        self.stack: list[SimThread] = []
        self.spins = 0

    def run_until(self, end: float) -> None:
        """Let every thread not already on the stack run what falls due up to ``end``."""
        while True:
            ready = [t for t in self.threads if not (t.done or t.active)
                     and t.wake is not None and t.wake <= end]
            if not ready:
                break
            thread = min(ready, key=lambda t: t.wake or 0.0)
            self.clock.now = max(self.clock.now, thread.wake or 0.0)
            self.spins += 1
            if self.spins > self.SPIN_LIMIT:
                self.fail(f"{thread.name} spins: {self.spins} wake-ups without blocking", Spins)
            thread.active = True
            self.stack.append(thread)
            try:
                thread.run()
                thread.done = True
            except _Pause as pause:
                thread.resuming = True
                thread.wake = None if pause.timeout is None else self.clock.now + pause.timeout
            finally:
                thread.active = False
                self.stack.pop()
        self.clock.now = max(self.clock.now, end)

    def pass_time(self, seconds: float) -> None:
        self.run_until(self.clock.now + max(0.0, seconds))


class SimCondition:
    """Replaces a worker thread's threading.Condition: the lock is never contended (one OS
    thread), notify wakes the sleeper at the current time, wait pauses the thread."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        self.thread: SimThread | None = None

    def __enter__(self) -> bool:
        return True

    def __exit__(self, *exc: Any) -> bool:
        return False

    def acquire(self, *args: Any) -> bool:
        return True

    def release(self) -> None:
        pass

    def notify_all(self) -> None:
        if self.thread is not None and not self.thread.done:
            now = self.scheduler.clock.now
            self.thread.wake = now if self.thread.wake is None else min(self.thread.wake, now)

    notify = notify_all

    def wait(self, timeout: float | None = None) -> bool:
        stack = self.scheduler.stack
        if not stack or stack[-1] is not self.thread:
            # The main thread waits for the housekeeper: let it run until then.
            self.scheduler.pass_time(0.0 if timeout is None else timeout)
            return True
        thread = stack[-1]
        if thread.resuming:
            thread.resuming = False
            return False
        raise _Pause(timeout)

    def wait_for(self, predicate: Any, timeout: float | None = None) -> Any:
        end = self.scheduler.clock.now + (timeout if timeout is not None else 60.0)
        while not predicate() and self.scheduler.clock.now < end:
            self.scheduler.run_until(min(end, self.scheduler.clock.now + 0.5))
        return predicate()


def housekeeping_threads(housekeeper: Any) -> list[tuple[str, Any]]:
    """The worker's helper threads: a heartbeat and a deleter (issue #10), or before it one
    housekeeper doing both."""
    if hasattr(housekeeper, "heartbeat") and hasattr(housekeeper, "deleter"):
        return [("heartbeat", housekeeper.heartbeat), ("deleter", housekeeper.deleter)]
    return [("housekeeper", housekeeper)]


class FakeSlot:
    """The scoreboard slot: ignored, except as the last moment before a handler starts on
    main (where no attempt table records starts)."""

    def __init__(self, machine: WorkerModel):
        self.machine = machine

    def start_message(self, message_id: str) -> None:
        if TABLE_KEYWORD == "givebacks":
            self.machine.before_handler(message_id)

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class TableProxy:
    """The worker's view of the attempt table: the process may die just before a start is
    recorded (the last moment before a handler)."""

    def __init__(self, table: Any, machine: WorkerModel):
        self._table = table
        self._machine = machine

    def start(self, message_id: str) -> int:
        self._machine.before_handler(message_id)
        return self._table.start(message_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


class RecordingFailedLog(logs.FailedLog):
    """The failed-messages log, recorded for the ledger instead of written."""

    def __init__(self, machine: WorkerModel):
        super().__init__("")
        self.machine = machine

    def write(self, event: str = "failed message", exc_info: Any = None, **record: Any) -> bool:
        self.machine.failed_log.append((event, record.get("message_id"), record.get("body")))
        if event == "dropping message":
            self.machine.dead_lettered_after_success(record.get("body", ""))
        return True


# -- the ledger ------------------------------------------------------------------------------


@dataclass
class Entry:
    """What the machine knows about one message (by body: a re-sent copy is the same one)."""

    kind: str
    starts: int = 0
    completions: int = 0
    failures: int = 0  # the handler raised an ordinary exception
    last: str = ""  # outcome of the last start: completed, failed, restart, killed
    removed: str = ""  # why it left the queue, once it did
    dead_lettered: int = 0
    not_before: float = 0.0  # epoch seconds (delayed)
    id_starts: dict[str, int] = field(default_factory=dict)  # per SQS message (copy)


class WorkerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = CLOCK  # the one patched into sqsd.worker as its ``time``
        self.clock.now = 1000.0
        self.sqs = FakeSQS(self.clock)
        self.url = self.sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
        self.dlq_url = self.sqs.create_queue(QueueName=DEAD_LETTERS)["QueueUrl"]
        self.scheduler = Scheduler(self.clock, self.fail)
        self.ledger: dict[str, Entry] = {}
        self.failed_log: list[tuple[str, str | None, str | None]] = []
        self.running: set[str] = set()
        self.completed_handles: set[str] = set()  # receipts whose handler returned
        self.worker: Any = None
        self.data: Any = None
        self.chaos_on = True
        self.in_a_row: dict[str, int] = {}
        self.excuses = self.strict_excuses = 0
        self.excuses_at: dict[str, tuple[int, int]] = {}  # receipt handle -> counts then
        self.directory = tempfile.mkdtemp(prefix="sqsd-model-")
        self.table_path = os.path.join(self.directory, "attempts")
        self.table: Any = self.open_table()
        self.sent = 0
        self.steps = 0
        self.figures = {k: 0 for k in FIGURES if k not in ("cases", "steps", "longest_run")}
        self.broken = False
        self.interrupted = False
        self.violation = ""
        self.violation_kind: type[Violation] = Violation
        self.sqs.chaos = self.chaos
        self.sqs.chaos_entry = self.chaos_entry
        self.sqs.stall_seconds = self.stall_seconds
        self.sqs.on_stall = lambda operation, seconds: self.scheduler.pass_time(seconds)
        self.sqs.on_wait = self.scheduler.pass_time
        self.clock.on_sleep = self.scheduler.pass_time  # time.sleep() in the worker
        self.sqs.on_delete = self.on_delete
        self.sqs.on_send = self.on_send
        # configured by initialize()
        self.max_retries = 1
        self.queue_settings: QueueSettings = QueueSettings(name=QUEUE)

    # -- configuration --------------------------------------------------------------------

    @initialize(
        max_retries=st.integers(0, 2),
        dead_letter=st.booleans(),
        retry_on_error=st.booleans(),
        batch_size=st.integers(1, 10),
        max_receives=st.sampled_from([0, 4]),
    )
    def configure(self, max_retries, dead_letter, retry_on_error, batch_size, max_receives):
        self.max_retries = max_retries
        self.queue_settings = QueueSettings(
            name=QUEUE,
            visibility_timeout=VISIBILITY,
            wait_time_seconds=20,
            idle_sleep_max=0,
            batch_size=batch_size,
            max_retries=max_retries,
            dead_letter_queue=DEAD_LETTERS if dead_letter else "",
            on_error="retry" if retry_on_error else "",
            max_receives=max_receives,
        )
        note(f"queue: max_retries={max_retries} dead_letter={dead_letter} "
             f"on_error={self.queue_settings.error_policy} batch_size={batch_size} "
             f"max_receives={self.queue_settings.receive_limit}")

    def open_table(self) -> Any:
        if TABLE_KEYWORD == "attempts":  # the file-backed attempt table of issue #10
            from sqsd.attempts import AttemptTable

            return AttemptTable.open(self.table_path)
        from sqsd.givebacks import GiveBacks  # before it: anonymous memory, gone with the master

        return GiveBacks()

    # -- chaos ----------------------------------------------------------------------------

    def draw(self, point: str, options: list[tuple[int, str]]) -> str:
        """One fate out of weighted ``options`` (the first is "nothing happens", which is
        what hypothesis shrinks towards); at most three misfortunes in a row per point."""
        options = [option for i, option in enumerate(options)
                   if i == 0 or not any(w in option[1] for w in WITHOUT)]
        if self.data is None or not self.chaos_on or self.in_a_row.get(point, 0) >= 3:
            self.in_a_row[point] = 0
            return options[0][1]
        total = sum(weight for weight, _ in options)
        roll = self.data.draw(st.integers(0, total - 1), label=point)
        fate = options[-1][1]
        for weight, option in options:
            if roll < weight:
                fate = option
                break
            roll -= weight
        if fate == options[0][1]:
            self.in_a_row[point] = 0
        else:
            self.in_a_row[point] = self.in_a_row.get(point, 0) + 1
            self.figures["faults"] += 1
            note(f"  t={self.clock.now - 1000:.1f} {point}: {fate}")
        return fate

    def chaos(self, operation: str) -> str:
        options = [
            (86, fake_sqs.OK), (3, fake_sqs.THROTTLE), (2, fake_sqs.SERVER_ERROR),
            (3, fake_sqs.FAIL_ENTRY), (2, fake_sqs.STALL), (2, fake_sqs.KILL_BEFORE),
            (2, fake_sqs.KILL_AFTER),
        ]
        if not operation.endswith("_batch"):
            options = [option for option in options if option[1] != fake_sqs.FAIL_ENTRY]
        fate = self.draw(operation, options)
        # What may make a visibility extension late: a failed or stalled extension call, or
        # (when deletes and extensions share a thread) a stalled call of that thread.
        extension = operation.startswith("change_message_visibility")
        if fate != fake_sqs.OK and (extension or (fate == fake_sqs.STALL and self.scheduler.stack)):
            self.excuses += 1
        if fate == fake_sqs.STALL and extension:
            self.strict_excuses += 1  # the one call took longer than the margin
        return fate

    def chaos_entry(self, count: int) -> int:
        if self.data is None:
            return 0
        return self.data.draw(st.integers(0, count - 1), label="failed entry")

    def stall_seconds(self) -> float:
        if self.data is None:
            return 20.0
        return float(self.data.draw(st.sampled_from([20, 5, 40]), label="stall seconds"))

    def before_handler(self, message_id: str) -> None:
        if self.draw("before handler", [(96, "ok"), (4, "kill")]) == "kill":
            raise Killed("killed before a handler started")

    # -- the handler ----------------------------------------------------------------------

    def handler(self, message: Message) -> None:
        body = message.body
        entry = self.ledger[body]
        self.check_start(message, entry)
        entry.starts += 1
        entry.id_starts[message.id] = entry.id_starts.get(message.id, 0) + 1
        self.running.add(body)
        try:
            fate = self.draw("handler", [(85, "ok"), (5, "kill"), (5, "kill after return"),
                                         (5, "sigterm")])
            try:  # the housekeeper runs meanwhile: the process may die in its calls
                # A slow handler's visibility must be extended while it runs.
                self.scheduler.pass_time(VISIBILITY * 2.5 if entry.kind == "slow" else 0.01)
                self.check_hidden(message.id, message.receipt_handle, body, "its handler ends")
            except (Killed, Abort) as exc:
                entry.last = "killed"
                if isinstance(exc, HandlerKilled):
                    raise
                raise HandlerKilled(str(exc)) from exc
            if fate == "kill":
                entry.last = "killed"
                raise HandlerKilled("killed while a handler ran")
            if fate == "sigterm":
                self.worker._on_stop_signal(signal.SIGTERM, None)
            if entry.kind == "crash":
                entry.last = "killed"
                raise HandlerKilled("the handler crashed the worker")
            if entry.kind == "poison" or (entry.kind == "flaky" and entry.starts == 1):
                entry.last = "failed"
                entry.failures += 1
                raise ValueError(f"poison {body}")
            if entry.kind == "transient":
                entry.last = "restart"
                raise RestartLater(delay=0 if entry.starts % 2 else 3)
            entry.completions += 1
            entry.last = "completed"
            self.completed_handles.add(message.receipt_handle)
            if fate == "kill after return":
                raise HandlerKilled("killed after a handler returned, before its delete")
        finally:
            self.running.discard(body)

    def check_start(self, message: Message, entry: Entry) -> None:
        body = message.body
        if body in self.running:
            self.fail(f"{body}: handler started while it already runs", TwoAtOnce)
        if entry.not_before and self.clock.time() < entry.not_before:
            self.fail(f"{body}: handler started {entry.not_before - self.clock.time():.0f} s "
                      "before its sqsd_not_before", TooEarly)
        limit = self.max_retries + 1
        starts = entry.id_starts.get(message.id, 0)
        if entry.completions == 0 and starts >= limit:
            self.fail(f"{body}: handler started a {starts + 1}th time, "
                      f"max_retries={self.max_retries} allows {limit} "
                      f"(receives: {self.receives_of(body)})", TooManyStarts)
        self.check_hidden(message.id, message.receipt_handle, message.body, "its handler starts")

    def check_hidden(self, message_id: str, handle: str, body: str, when: str) -> None:
        """SQS must keep a message hidden from other workers while it is in hand; a lapse is
        excused only by heartbeat calls that failed since the batch was received (with
        STRICT_HEARTBEAT, only by one that stalled past the margin: a failed extension must
        be retried well before the deadline)."""
        stored = self.sqs.queues[self.url].messages.get(message_id)
        if stored is None:
            return  # deleted meanwhile (a late delete with an older handle): handled before
        if stored.receipt == handle and stored.visible_at > self.clock.now:
            return
        self.figures["lapses"] += 1
        at = self.excuses_at.get(handle, (0, 0))
        if STRICT_HEARTBEAT:
            excused, excuse = self.strict_excuses > at[1], "stalled past the margin"
        else:
            excused, excuse = self.excuses > at[0], "failed"
        if not excused:
            self.fail(f"{body}: {when} while SQS shows it to other workers (visible since "
                      f"t={stored.visible_at - 1000:.1f}), and no extension call {excuse} "
                      "since it was received", TwoAtOnce)

    # -- what SQS sees --------------------------------------------------------------------

    def receives_of(self, body: str) -> int:
        for message in self.sqs.queues[self.url].messages.values():
            if message.body == body:
                return message.receives
        return -1

    def justify(self, body: str, copies: list[fake_sqs.StoredMessage], how: str) -> str:
        """Why ``body`` may leave the queue (``how``: deleted / dead-lettered); raises when
        nothing justifies it. ``copies``: the SQS messages with that body it may be (more
        than one when a re-delayed message was sent again): max_retries counts per copy."""
        entry = self.ledger[body]
        starts = [entry.id_starts.get(copy.id, 0) for copy in copies] or [0]
        receives = max((copy.receives for copy in copies), default=-1)
        limit = self.max_retries + 1
        policy = self.queue_settings.error_policy
        if how == "deleted" and entry.completions:
            return "handled"
        if how == "deleted" and sum(b == body for b in self.sqs.bodies(self.url)) > 1:
            return "re-delayed"  # a copy is queued (with the rest of its delay)
        if entry.last == "failed" and policy != "retry":
            logged = any(e == "handler failed" and b == body for e, _, b in self.failed_log)
            if not logged:
                self.fail(f"{body}: failed and {how} without a failed-log record",
                          FailedUnlogged)
            return "failed"
        if how == "deleted":
            dead = entry.dead_lettered or any(
                e == "dropping message" and b == body for e, _, b in self.failed_log)
            if not dead:
                self.fail(f"{body}: deleted without a completed handler "
                          f"(starts={entry.starts}, last={entry.last or 'never ran'}, "
                          f"receives={receives})", DeletedUnhandled)
        if entry.completions:
            # Its delete was lost (the worker died first): its start still counts.
            return "dead-lettered after success"
        if limit in starts:
            return "dead-lettered"
        if receives > self.queue_settings.receive_limit:
            return "safety net"
        self.fail(f"{body}: {how} after {max(starts)} handler starts, max_retries="
                  f"{self.max_retries} wants exactly {limit} (receives={receives}, "
                  f"last={entry.last or 'never ran'})", WrongStarts)
        return ""

    def on_delete(self, url: str, message: fake_sqs.StoredMessage, handle: str) -> None:
        if url != self.url:
            return
        entry = self.ledger[message.body]
        if handle in self.completed_handles and handle == message.receipt:
            # Finished, waiting for its delete: still hidden, or another worker runs it again.
            self.check_hidden(message.id, handle, message.body, "is deleted after its handler")
        reason = self.justify(message.body, [message], "deleted")
        entry = self.ledger[message.body]
        if not entry.removed:
            entry.removed = "" if reason == "re-delayed" else reason
            key = {"handled": "handled", "failed": "failed", "safety net": "safety_net",
                   "re-delayed": "re_delayed"}.get(reason, "dead_lettered")
            self.figures[key] += 1

    def on_send(self, url: str, message: fake_sqs.StoredMessage) -> None:
        if url == self.dlq_url:
            body = message.body
            copies = [m for m in self.sqs.queues[self.url].messages.values() if m.body == body]
            self.justify(body, copies, "dead-lettered")
            self.dead_lettered_after_success(body)
            self.ledger[body].dead_lettered += 1

    def dead_lettered_after_success(self, body: str) -> None:
        """Allowed (a handler returned), but worth a figure: the worker died (or gave up on
        the delete) after the handler returned, and the start it had recorded then counted
        against the message on its next receive."""
        if self.ledger[body].completions:
            self.figures["dead_lettered_after_success"] += 1

    def fail(self, text: str, kind: type[Violation] = Violation) -> None:
        self.broken = True
        if not self.violation:
            self.violation, self.violation_kind = text, kind
        raise Abort(text)

    def act(self, data: Any, action: Any, *, step: bool = True) -> None:
        """Run ``action`` with chaos drawn from ``data``; a death ends the worker, a broken
        rule the case."""
        self.data = data
        try:
            action()
        except Killed as killed:
            self.crashed(str(killed))
        except Abort:
            pass
        except Exception as exc:  # out of the worker's engine: its process would exit
            where = traceback.extract_tb(exc.__traceback__)[-1]
            with contextlib.suppress(Abort):
                self.fail(f"the worker crashed: {type(exc).__name__}: {exc} "
                          f"({Path(where.filename).name}:{where.lineno})", WorkerCrashed)
        except BaseException:  # hypothesis ending the case (StopTest): no drain after it
            self.interrupted = True
            raise
        finally:
            self.data = None
            self.steps += step
        if self.violation:
            raise self.violation_kind(self.violation)

    # -- the worker's life ----------------------------------------------------------------

    def build_worker(self) -> Any:
        spec = WorkerSpec(
            queue=self.queue_settings,
            suffix="",
            url_name=QUEUE,
            dead_letter_name=self.queue_settings.dead_letter_queue,
            handler=self.handler,
            message_class=Message,
            after_message=None,
        )
        kwargs = {TABLE_KEYWORD: TableProxy(self.table, self)}
        worker = worker_module.Worker(
            spec, Settings(), slot=FakeSlot(self), wake_fd=-1, master_pid=os.getpid(), **kwargs
        )
        worker.log = NullLog()
        worker.failed_log = RecordingFailedLog(self)
        worker.client = self.sqs
        # Seam: the worker's sleeps (error backoff) wait on the wake-up pipe with select();
        # here time passes on the fake clock, the housekeeper running meanwhile.
        worker._wait_for_wake = lambda timeout: self.scheduler.pass_time(timeout) or False
        self.worker = worker
        worker._resolve_queues()
        options: dict[str, Any] = {}  # as Worker.run() makes it: nothing but the defaults
        housekeeper = worker_module.Housekeeper(
            self.sqs, worker.url, self.queue_settings.visibility_timeout, worker.slot,
            worker.log, **options
        )
        self.scheduler.threads = []
        for name, target in housekeeping_threads(housekeeper):
            condition = SimCondition(self.scheduler)
            target.cond = condition
            thread = SimThread(name, target.run)
            condition.thread = thread
            self.scheduler.threads.append(thread)
        worker.housekeeper = housekeeper
        return worker

    def crashed(self, why: str) -> None:
        note(f"  t={self.clock.now - 1000:.1f} worker dies: {why}")
        self.figures["kills"] += 1
        self.discard_worker()

    def discard_worker(self) -> None:
        self.worker = None
        self.scheduler.threads = []
        self.scheduler.stack = []
        self.running.clear()

    def stop_worker(self) -> None:
        """What Worker.run() does on its way out after a SIGTERM: flush pending deletes."""
        worker = self.worker
        if worker is None:
            return
        worker.stop_requested = True
        threads = dict(zip(
            [t.name for t in self.scheduler.threads],
            self.scheduler.threads, strict=True))
        # As Housekeeper.stop(): the deleter flushes (the heartbeat still running), then the
        # heartbeat ends.
        for name, target in sorted(housekeeping_threads(worker.housekeeper),
                                   key=lambda pair: pair[0] == "heartbeat"):
            with target.cond:
                target.stopping = True
                target.cond.notify_all()
            thread = threads[name]
            end = self.clock.now + 600
            while not thread.done and self.clock.now < end:
                self.scheduler.run_until(min(end, self.clock.now + 1.0))
            assert thread.done, f"the {name} did not finish after a stop"
        self.figures["graceful_stops"] += 1
        self.discard_worker()

    def work_once(self) -> None:
        """One round of Worker._loop: receive, process the batch, let the housekeeper act."""
        if self.worker is None:
            self.build_worker()
        worker = self.worker
        messages = worker._receive()
        if messages:
            for raw in messages:
                self.excuses_at[raw["ReceiptHandle"]] = (self.excuses, self.strict_excuses)
            note(f"  t={self.clock.now - 1000:.1f} received "
                 + ", ".join(f"{m['Body']}#{m['Attributes']['ApproximateReceiveCount']}"
                             for m in messages))
            worker._process_batch(messages)
        self.scheduler.pass_time(0.0)
        if worker.stop_requested:
            self.stop_worker()

    # -- rules ----------------------------------------------------------------------------

    @rule(kind=st.sampled_from(KINDS), count=st.integers(1, 4), tagged=st.booleans(),
          garbage=st.sampled_from(GARBAGE))
    def send(self, kind, count, tagged, garbage):
        for _ in range(count):
            self.sent += 1
            body = f"{kind}-{self.sent}"
            attributes = {}
            if tagged:
                attributes["tenant"] = {"DataType": "String", "StringValue": "acme"}
            entry = Entry(kind)
            if kind == "delayed":
                entry.not_before = self.clock.time() + DELAY
                attributes["sqsd_not_before"] = {
                    "DataType": "Number", "StringValue": repr(entry.not_before)}
            elif kind == "garbage":
                attributes["sqsd_not_before"] = {"DataType": "String", "StringValue": garbage}
            self.ledger[body] = entry
            self.sqs.put(self.url, body, attributes)
        self.steps += 1

    @rule(data=st.data(), rounds=st.integers(1, 3))
    def work(self, data, rounds):
        """Rounds of the worker's loop; the master restarts a worker that died."""
        for _ in range(rounds):
            self.act(data, self.work_once, step=False)
        self.steps += 1

    @rule(seconds=st.sampled_from([1, 10, VISIBILITY + 1, 300, 901]), data=st.data())
    def time_passes(self, seconds, data):
        self.act(data, lambda: self.scheduler.pass_time(seconds))

    @precondition(lambda self: self.worker is not None)
    @rule(data=st.data())
    def sigterm_worker(self, data):
        self.act(data, self.stop_worker)

    @rule(data=st.data(), graceful=st.booleans())
    def master_restart(self, data, graceful):
        """The master stops (gracefully: its workers flush; or killed: they die with it) and
        starts again: a new attempt table, opened from its file when there is one."""

        def restart() -> None:
            if graceful:
                self.stop_worker()
            if self.worker is not None:
                self.crashed("the master died")
            close = getattr(self.table, "close", None)
            if close is not None:
                close()
            self.table = self.open_table()
            self.figures["master_restarts"] += 1
            how = "graceful" if graceful else "killed"
            note(f"  t={self.clock.now - 1000:.1f} master restarted ({how})")

        self.act(data, restart)

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def nothing_vanished(self):
        if self.violation:
            raise self.violation_kind(self.violation)
        assert not self.running, f"handlers still marked running: {self.running}"
        present = set(self.sqs.bodies(self.url))
        for body, entry in self.ledger.items():
            if body not in present and not entry.removed:
                self.fail(f"{body}: gone from the queue without a delete", Vanished)

    def teardown(self):
        try:
            if not (self.broken or self.interrupted):
                self.drain()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
            FIGURES["cases"] += 1
            FIGURES["steps"] += self.steps
            FIGURES["longest_run"] = max(FIGURES["longest_run"], self.steps)
            FIGURES["messages"] += self.sent
            FIGURES["most_messages"] = max(FIGURES["most_messages"], self.sent)
            for key, value in self.figures.items():
                if key != "most_messages":
                    FIGURES[key] = FIGURES.get(key, 0) + value

    def drain(self) -> None:
        """No more faults (crashing handlers still crash): every message must leave the
        queue, each for a reason the contract allows."""
        self.chaos_on = False
        rounds = 0
        bound = 20 + 4 * len(self.ledger) * (self.max_retries + 2)
        while self.sqs.queues[self.url].messages and rounds < bound:
            rounds += 1
            self.act(None, self.work_once, step=False)
            due = [m.visible_at for m in self.sqs.queues[self.url].messages.values()]
            self.scheduler.pass_time(max([VISIBILITY + 1, *[t - self.clock.now for t in due]]))
        self.figures["drain_rounds"] += rounds
        left = {m.body: m.receives for m in self.sqs.queues[self.url].messages.values()}
        if left:
            raise Stuck(f"after {rounds} rounds without faults, still queued "
                            f"(receives): {left}")
        for body, entry in self.ledger.items():
            if not entry.removed:
                raise Vanished(f"{body}: gone without a reason")


@pytest.mark.timeout(7200 if LONG else 900)  # a failure's shrinking takes minutes
def test_every_message_is_handled_failed_or_dead_lettered_by_the_rules():
    started = time.monotonic()
    figures_before = dict(FIGURES)
    machine_settings = settings(
        max_examples=int(os.environ.get("SQSD_MODEL_EXAMPLES", 0)) or (5000 if LONG else 300),
        stateful_step_count=100 if LONG else 60,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )
    with contextlib.ExitStack() as patches:
        patches.enter_context(mock.patch.object(worker_module, "time", CLOCK))
        patches.enter_context(mock.patch.object(worker_module, "setproctitle", mock.Mock()))
        if housekeeping is not worker_module:
            patches.enter_context(mock.patch.object(housekeeping, "time", CLOCK))
        if message_actions is not worker_module:
            patches.enter_context(mock.patch.object(message_actions, "time", CLOCK))
        try:
            run_state_machine_as_test(WorkerModel, settings=machine_settings)
        finally:
            report = {k: v - figures_before.get(k, 0) if k not in ("longest_run", "most_messages")
                      else v for k, v in FIGURES.items()}
            report["profile"] = "long" if LONG else "short"
            report["seconds"] = round(time.monotonic() - started, 1)
            FIGURES_PATH.write_text(json.dumps(report, indent=2) + "\n")
            print(f"\nworker model: {json.dumps(report)}")

