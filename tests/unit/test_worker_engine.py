"""The worker's message engine against an in-memory SQS client: what each outcome does
to a message, with no process, thread of ours or network left behind."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from sqsd import scoreboard
from sqsd.attempts import AttemptTable
from sqsd.config import QueueSettings, Settings
from sqsd.errors import RestartLater
from sqsd.housekeeping import Housekeeper
from sqsd.message import Message
from sqsd.plan import WorkerSpec
from sqsd.worker import QuickStop, Worker

_ids = itertools.count(1)


@dataclass
class FakeSQS:
    """Records every call; ``fail`` makes the named actions raise."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # receipt handles
    sent: list[dict[str, Any]] = field(default_factory=list)
    visibility: list[tuple[str, int]] = field(default_factory=list)
    batch_failures: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]] = field(
        default_factory=dict
    )
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, action: str, params: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append((action, params))

    def delete_message(self, **params: Any) -> dict[str, Any]:
        self._record("DeleteMessage", params)
        self.deleted.append(params["ReceiptHandle"])
        return {}

    def delete_message_batch(self, **params: Any) -> dict[str, Any]:
        self._record("DeleteMessageBatch", params)
        return self._batch("DeleteMessageBatch", params, lambda e: self.deleted.append(
            e["ReceiptHandle"]))

    def change_message_visibility(self, **params: Any) -> dict[str, Any]:
        self._record("ChangeMessageVisibility", params)
        self.visibility.append((params["ReceiptHandle"], params["VisibilityTimeout"]))
        return {}

    def change_message_visibility_batch(self, **params: Any) -> dict[str, Any]:
        self._record("ChangeMessageVisibilityBatch", params)
        return self._batch("ChangeMessageVisibilityBatch", params, lambda e: self.visibility.append(
            (e["ReceiptHandle"], e["VisibilityTimeout"])))

    def send_message(self, **params: Any) -> dict[str, Any]:
        self._record("SendMessage", params)
        self.sent.append(params)
        return {"MessageId": f"sent-{next(_ids)}"}

    def _batch(self, action: str, params: dict[str, Any], apply: Callable[[Any], Any]) -> dict:
        failed, ok = [], []
        judge = self.batch_failures.get(action)
        for entry in params["Entries"]:
            failure = judge(entry) if judge else None
            if failure:
                failed.append({"Id": entry["Id"], **failure})
            else:
                apply(entry)
                ok.append({"Id": entry["Id"]})
        return {"Successful": ok, "Failed": failed}

    def actions(self, name: str) -> list[dict[str, Any]]:
        return [params for action, params in self.calls if action == name]


def raw(body: str, *, receives: int = 1, message_id: str | None = None,
        attributes: dict[str, Any] | None = None) -> dict[str, Any]:
    message_id = message_id or f"id-{body}"
    message: dict[str, Any] = {
        "MessageId": message_id,
        "ReceiptHandle": f"rh-{message_id}-{receives}",
        "Body": body,
        "Attributes": {"ApproximateReceiveCount": str(receives), "SentTimestamp": "0"},
    }
    if attributes is not None:
        message["MessageAttributes"] = attributes
    return message


class RecordingLog:
    """Stands in for the worker's structlog logger: keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def log(event: str, *args: Any, **fields: Any) -> None:
            self.events.append((level, event, fields))

        return log

    def named(self, text: str) -> list[dict[str, Any]]:
        return [fields for _, event, fields in self.events if text in event]


class RecordingFailedLog:
    """Stands in for the failed-messages log: keeps each record, always written."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, event: str = "failed message", exc_info: Any = None, **record: Any) -> bool:
        self.records.append({"event": event, "exc_info": exc_info, **record})
        return True


@dataclass
class Engine:
    """A queue's handler, its attempts table and the fake SQS its workers talk to."""

    handler: Callable[[Message], Any]
    queue: QueueSettings
    table: AttemptTable = field(default_factory=AttemptTable)
    sqs: FakeSQS = field(default_factory=FakeSQS)
    dead_letter: bool = True
    handled: list[str] = field(default_factory=list)
    log: RecordingLog = field(default_factory=RecordingLog)
    failed_log: RecordingFailedLog = field(default_factory=RecordingFailedLog)

    def worker(self) -> Worker:
        spec = WorkerSpec(queue=self.queue, suffix="", url_name=self.queue.name,
                          dead_letter_name="dlq" if self.dead_letter else "",
                          handler=self.handler, message_class=Message, after_message=None)
        board = scoreboard.Scoreboard()
        worker = Worker(spec, Settings(), slot=board.allocate(), attempts=self.table,
                        wake_fd=-1, master_pid=os.getppid())
        worker.client, worker.url, worker.log = self.sqs, "q", self.log
        worker.failed_log = self.failed_log  # type: ignore[assignment]
        worker.dead_letter_url = "dlq" if self.dead_letter else ""
        return worker

    def run(self, raws: list[dict[str, Any]], *, stop: bool = False) -> Worker:
        """One worker process receiving ``raws``: it handles the batch, flushes its deletes
        and ends (a QuickStop from a handler stands for the process dying there)."""
        worker = self.worker()
        worker.stop_requested = stop
        with housekeeping(worker), contextlib.suppress(QuickStop):
            worker._process_batch(raws)
        return worker

    def dead(self) -> list[str]:
        return [params["MessageBody"] for params in self.sqs.sent
                if params["QueueUrl"] == "dlq"]

    def deleted(self) -> set[str]:
        return {handle.split("-", 2)[2].rsplit("-", 1)[0] for handle in self.sqs.deleted}


@contextlib.contextmanager
def housekeeping(worker: Worker) -> Iterator[None]:
    """The worker's housekeeper running for the ``with`` block, and gone after it."""
    keeper = Housekeeper(worker.client, worker.url, worker.queue.visibility_timeout,
                         worker.slot, worker.log)
    worker.housekeeper = keeper
    keeper.start()
    try:
        yield
    finally:
        keeper.stop()
        assert not keeper.is_alive()


def recording(engine_ref: list[Engine], outcome: Callable[[Message], Any] | None = None):
    def handler(message: Message) -> Any:
        engine_ref[0].handled.append(message.body)
        if message.body.startswith("crash"):
            raise QuickStop(0)  # the process dies inside the handler
        if message.body.startswith("fail"):
            raise ValueError(f"boom {message.body}")
        if message.body.startswith("exit"):
            sys.exit(3)
        if message.body.startswith("interrupt"):
            raise KeyboardInterrupt
        if message.body.startswith("later"):
            raise RestartLater(delay=7)
        return outcome(message) if outcome else None

    return handler


def engine(**queue_options: Any) -> Engine:
    dead_letter = queue_options.pop("dead_letter", True)
    ref: list[Engine] = []
    queue = replace(QueueSettings(name="q", visibility_timeout=30), **queue_options)
    if dead_letter:
        queue = replace(queue, dead_letter_queue="dlq")
    made = Engine(recording(ref), queue, dead_letter=dead_letter)
    ref.append(made)
    return made


# -- item 1: max_retries counts handler starts ---------------------------------------------


def test_batch_mates_of_a_crashing_message_keep_every_try():
    eng = engine(max_retries=1)
    batch = ["crash", "ok1", "ok2", "ok3", "ok4"]
    for receives in (1, 2):
        eng.run([raw(body, receives=receives) for body in batch])
    assert eng.handled == ["crash", "crash"]
    assert eng.table.starts("id-crash") == 2
    assert [eng.table.starts(f"id-ok{n}") for n in range(1, 5)] == [0] * 4

    eng.run([raw(body, receives=3) for body in batch])

    assert eng.handled == ["crash", "crash", "ok1", "ok2", "ok3", "ok4"]
    assert eng.dead() == ["crash"]
    assert eng.deleted() == set(batch)
    assert eng.table.starts("id-crash") == 0  # forgotten once dead-lettered
    assert "handler started 2 times" in eng.sqs.sent[0]["MessageAttributes"][
        "sqsd_error"]["StringValue"]


def test_without_a_dead_letter_queue_a_crashing_message_is_logged_and_deleted():
    eng = engine(max_retries=0, dead_letter=False)
    eng.run([raw("crash")])
    eng.run([raw("crash", receives=2), raw("ok", receives=2)])
    assert eng.handled == ["crash", "ok"]
    assert eng.deleted() == {"crash", "ok"}
    [dropped] = eng.failed_log.records
    assert (dropped["event"], dropped["body"]) == ("dropping message", "crash")


def test_given_back_messages_are_not_starts():
    eng = engine(max_retries=0)
    eng.run([raw("g1"), raw("g2")], stop=True)
    assert eng.handled == []
    assert eng.table.starts("id-g1") == 0
    assert [v for _, v in eng.sqs.visibility] == [0, 0]

    eng.run([raw("g1", receives=2), raw("g2", receives=2)])
    assert eng.handled == ["g1", "g2"] and eng.dead() == []


def test_retry_policy_dead_letters_after_max_retries_plus_one_failed_starts():
    eng = engine(max_retries=2, on_error="retry")
    for receives in (1, 2, 3):
        eng.run([raw("fail", receives=receives)])
        assert eng.dead() == ([] if receives < 3 else ["fail"])
    assert eng.handled == ["fail"] * 3
    assert eng.deleted() == {"fail"}


def test_max_receives_is_a_safety_net_for_starts_this_host_never_saw():
    eng = engine(max_retries=1)  # receive limit 10 x 2 = 20
    eng.run([raw("ok1", receives=20), raw("ok2", receives=21)])
    assert eng.handled == ["ok1"]
    assert eng.dead() == ["ok2"]
    eng2 = engine(max_retries=1, max_receives=3)
    eng2.run([raw("ok", receives=4)])
    assert eng2.handled == [] and eng2.dead() == ["ok"]


def test_a_handled_message_is_marked_finished_before_its_delete():
    eng = engine()
    eng.run([raw("ok")])
    assert eng.deleted() == {"ok"}
    assert eng.table.finished("id-ok")


def test_a_handled_message_whose_delete_was_lost_is_deleted_when_it_comes_back():
    eng = engine(max_retries=0)
    eng.table.start("id-ok")  # its handler ran and returned; the worker died before the delete
    eng.table.finish("id-ok")

    eng.run([raw("ok", receives=2)])

    assert eng.handled == []
    assert eng.dead() == []
    assert eng.deleted() == {"ok"}


def test_restart_later_counts_as_a_start_and_leaves_the_message():
    eng = engine(max_retries=1)
    eng.run([raw("later")])
    eng.run([raw("later", receives=2)])
    assert eng.table.starts("id-later") == 2
    eng.run([raw("later", receives=3)])
    assert eng.handled == ["later", "later"]
    assert eng.dead() == ["later"]


# -- item 2: sys.exit() and KeyboardInterrupt in a handler are handler failures ------------


@pytest.mark.parametrize("body", ["exit", "interrupt"])
def test_sys_exit_and_keyboard_interrupt_in_a_handler_are_failures(body):
    eng = engine(on_error="dead-letter")
    eng.run([raw(body), raw("ok")])
    assert eng.handled == [body, "ok"]
    assert eng.dead() == [body]
    assert eng.deleted() == {body, "ok"}
    [failure] = eng.failed_log.records
    assert failure["event"] == "handler failed" and failure["body"] == body
    assert isinstance(failure["exc_info"], SystemExit | KeyboardInterrupt)


def test_sys_exit_with_the_retry_policy_leaves_the_message():
    eng = engine(on_error="retry")
    eng.run([raw("exit")])
    assert eng.deleted() == set() and eng.dead() == []
    assert eng.table.starts("id-exit") == 1


# -- item 5: nothing a producer puts in a message stops the worker ---------------------------

HOSTILE_NOT_BEFORE = [
    {"DataType": "String", "StringValue": "nan"},
    {"DataType": "String", "StringValue": "inf"},
    {"DataType": "Number", "StringValue": "-inf"},
    {"DataType": "String", "StringValue": "-1"},
    {"DataType": "Number", "StringValue": "1e400"},
    {"DataType": "String", "StringValue": ""},
    {"DataType": "String", "StringValue": "abc"},
    {"DataType": "String", "StringValue": "9" * 5000},
    {"DataType": "String", "StringValue": "4102444800000"},  # year 131970: absurd
    {"DataType": "Binary", "BinaryValue": b"\xff\x00\x01"},
    {"DataType": "String"},
    {"DataType": "String", "StringValue": 12},
    {"StringValue": "1"},
    "not an attribute",
]


@pytest.mark.parametrize("value", HOSTILE_NOT_BEFORE, ids=[str(v)[:40] for v in HOSTILE_NOT_BEFORE])
def test_a_hostile_not_before_attribute_is_ignored_and_logged_once(value):
    eng = engine()
    attributes = {"sqsd_not_before": value}
    eng.run([raw("ok", attributes=attributes), raw("ok", attributes=attributes, receives=2)])
    # The second delivery of the handled message is deleted without running again.
    assert eng.handled == ["ok"]
    assert sorted(eng.sqs.deleted) == ["rh-id-ok-1", "rh-id-ok-2"]
    assert eng.sqs.sent == []  # not re-delayed
    [warning] = eng.log.named("sqsd_not_before ignored")
    assert warning["message_id"] == "id-ok"


def test_a_not_before_in_the_future_is_honoured():
    eng = engine()
    not_before = {"DataType": "String", "StringValue": repr(time.time() + 3600)}
    eng.run([raw("ok", attributes={"sqsd_not_before": not_before})])
    assert eng.handled == []
    assert eng.sqs.sent[0]["DelaySeconds"] > 0
    assert eng.deleted() == {"ok"}


def test_garbage_bodies_and_attributes_reach_the_handler_and_the_loop_goes_on():
    eng = engine()
    attributes = {"blob": {"DataType": "Binary", "BinaryValue": bytes(range(256))},
                  "weird": {"DataType": "Number.x", "StringValue": "NaN"},
                  "sqsd_queue": {"DataType": "Binary", "BinaryValue": b"\0"}}
    eng.run([raw("\ufffd\x00garbage", attributes=attributes), raw("ok")])
    assert eng.handled == ["\ufffd\x00garbage", "ok"]


def test_a_message_class_failing_on_a_message_is_that_handler_failure():
    class Picky(Message):
        __slots__ = ()

        def __init__(self, raw: dict[str, Any], queue: str = "", suffix: str = "") -> None:
            if raw["Body"] == "bad":
                raise ValueError("picky")
            super().__init__(raw, queue, suffix)

    eng = engine(on_error="dead-letter")
    worker = eng.worker()
    worker.spec = replace(worker.spec, message_class=Picky)
    with housekeeping(worker):
        worker._process_batch([raw("bad"), raw("ok")])
    assert eng.handled == ["ok"]
    assert eng.dead() == ["bad"]
    assert "picky" in eng.sqs.sent[0]["MessageAttributes"]["sqsd_error"]["StringValue"]


def test_an_unexpected_error_outside_the_handler_leaves_the_message_and_goes_on():
    eng = engine()
    worker = eng.worker()

    def broken_given_up(message: Message) -> str:
        if message.body == "odd":
            raise OverflowError("sqsd's own bug")
        return ""

    worker._given_up = broken_given_up  # type: ignore[method-assign]
    with housekeeping(worker):
        worker._process_batch([raw("odd"), raw("ok")])
    assert eng.handled == ["ok"]
    assert eng.deleted() == {"ok"}
    [failure] = eng.log.named("message not processed")
    assert failure["message_id"] == "id-odd"


# -- item 6: a handler that forks ------------------------------------------------------------


def test_a_child_forked_by_a_handler_leaves_at_once_and_is_reaped(tmp_path):
    trace = tmp_path / "trace"
    children: list[int] = []

    def forking(message: Message) -> None:
        with open(trace, "a") as fh:
            fh.write(f"{os.getpid()} {message.body}\n")
        if message.body == "fork":
            pid = os.fork()
            if pid:
                children.append(pid)

    eng = engine()
    eng.handler = forking
    worker = eng.worker()
    with housekeeping(worker):
        worker._process_batch([raw("fork"), raw("ok1"), raw("ok2")])
    [child] = children
    # The child left without touching the batch: one process handled every message.
    assert trace.read_text().split() == [str(os.getpid()), "fork", str(os.getpid()), "ok1",
                                         str(os.getpid()), "ok2"]
    assert eng.deleted() == {"fork", "ok1", "ok2"}
    # Reaped by the worker, not by this test: no zombie is left.
    exited = os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)  # exited, still unreaped
    assert (exited.si_code, exited.si_status) == (os.CLD_EXITED, 0)
    worker._reap_forks()
    with pytest.raises(ChildProcessError):
        os.waitpid(child, os.WNOHANG)
    assert worker.forks_seen == sys.modules["sqsd.worker"]._forks


# -- item 3: async def receivers and tasks run ---------------------------------------------


def test_async_handlers_are_awaited_on_one_loop_with_the_same_outcomes():
    loops: list[int] = []

    async def handler(message: Message) -> None:
        loops.append(id(asyncio.get_running_loop()))
        await asyncio.sleep(0)
        eng.handled.append(message.body)
        if message.body == "fail":
            raise ValueError("async boom")
        if message.body == "later":
            raise RestartLater(delay=9)
        if message.body == "exit":
            sys.exit(1)

    eng = engine(on_error="dead-letter")
    eng.handler = handler
    worker = eng.worker()
    with housekeeping(worker):
        worker._process_batch([raw("ok"), raw("fail"), raw("later"), raw("exit")])
        worker._process_batch([raw("ok2")])
    assert worker.runner is not None
    worker.runner.close()

    assert eng.handled == ["ok", "fail", "later", "exit", "ok2"]
    assert len(set(loops)) == 1  # one loop per worker, reused
    assert eng.deleted() == {"ok", "fail", "exit", "ok2"}
    assert eng.dead() == ["fail", "exit"]
    assert ("rh-id-later-1", 9) in eng.sqs.visibility


def test_async_tasks_run_with_their_arguments():
    from sqsd.decorators import Task
    from sqsd.message import encode_call

    got: list[tuple[int, int]] = []

    async def add(a: int, b: int) -> int:
        got.append((a, b))
        return a + b

    eng = engine()
    eng.handler = Task("q", add).handle
    worker = eng.worker()
    with housekeeping(worker):
        worker._process_batch([raw(encode_call([1, 2], {}))])
    assert got == [(1, 2)]
    assert len(eng.sqs.deleted) == 1


def test_a_message_deleted_at_once_stays_hidden_while_the_delete_is_in_flight():
    eng = engine(max_retries=0, dead_letter=False)
    eng.table.start("id-worn")  # started once already: given up on this receive
    worker = eng.worker()
    seen: list[bool] = []
    plain_delete = eng.sqs.delete_message

    def delete_message(**params: Any) -> dict[str, Any]:
        assert worker.housekeeper is not None
        held = worker.housekeeper.heartbeat.in_hand.get(params["ReceiptHandle"])
        seen.append(held is not None and held.deleting)
        return plain_delete(**params)

    eng.sqs.delete_message = delete_message  # type: ignore[method-assign]
    with housekeeping(worker):
        worker._process_batch([raw("worn", receives=2)])
        assert worker.housekeeper is not None
        assert not worker.housekeeper.heartbeat.in_hand
    assert seen == [True]
    assert eng.handled == [] and eng.deleted() == {"worn"}
