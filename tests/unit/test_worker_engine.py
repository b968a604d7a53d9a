"""The worker's message engine against an in-memory SQS client: what each outcome does
to a message, with no process, thread of ours or network left behind."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from sqsd import scoreboard
from sqsd.attempts import AttemptTable
from sqsd.config import QueueSettings, Settings
from sqsd.errors import RestartLater
from sqsd.message import Message
from sqsd.plan import WorkerSpec
from sqsd.worker import Housekeeper, QuickStop, Worker

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


@dataclass
class Engine:
    """A queue's handler, its attempts table and the fake SQS its workers talk to."""

    handler: Callable[[Message], Any]
    queue: QueueSettings
    table: AttemptTable = field(default_factory=AttemptTable)
    sqs: FakeSQS = field(default_factory=FakeSQS)
    dead_letter: bool = True
    handled: list[str] = field(default_factory=list)

    def worker(self) -> Worker:
        spec = WorkerSpec(queue=self.queue, suffix="", url_name=self.queue.name,
                          dead_letter_name="dlq" if self.dead_letter else "",
                          handler=self.handler, message_class=Message, after_message=None)
        board = scoreboard.Scoreboard()
        worker = Worker(spec, Settings(), slot=board.allocate(), attempts=self.table,
                        wake_fd=-1, master_pid=os.getppid())
        worker.client, worker.url = self.sqs, "q"
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
                         worker.slot, worker.log, on_deleted=worker.attempts.forget)
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


def test_without_a_dead_letter_queue_a_crashing_message_is_logged_and_deleted(caplog):
    eng = engine(max_retries=0, dead_letter=False)
    eng.run([raw("crash")])
    eng.run([raw("crash", receives=2), raw("ok", receives=2)])
    assert eng.handled == ["crash", "ok"]
    assert eng.deleted() == {"crash", "ok"}
    assert any("dropping message" in r.getMessage() for r in caplog.records)


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


def test_a_handled_message_is_forgotten_once_deleted():
    eng = engine()
    eng.run([raw("ok")])
    assert eng.deleted() == {"ok"}
    assert eng.table.starts("id-ok") == 0


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
def test_sys_exit_and_keyboard_interrupt_in_a_handler_are_failures(body, caplog):
    eng = engine(on_error="dead-letter")
    eng.run([raw(body), raw("ok")])
    assert eng.handled == [body, "ok"]
    assert eng.dead() == [body]
    assert eng.deleted() == {body, "ok"}
    [failure] = [r for r in caplog.records if r.getMessage() == "handler failed"]
    assert failure.exc_info is not None


def test_sys_exit_with_the_retry_policy_leaves_the_message():
    eng = engine(on_error="retry")
    eng.run([raw("exit")])
    assert eng.deleted() == set() and eng.dead() == []
    assert eng.table.starts("id-exit") == 1
