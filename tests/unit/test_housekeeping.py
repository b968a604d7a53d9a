"""The heartbeat and deleter threads: extensions never wait behind deletes, failed
extensions are retried before the deadline, and every batch call's Failed entries count."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sqsd import scoreboard
from sqsd.housekeeping import Housekeeper, failure_kind
from sqsd.message import Message
from tests.unit.test_worker_engine import RecordingLog, engine, housekeeping, raw

GONE = {"Code": "ReceiptHandleIsInvalid", "SenderFault": True, "Message": "expired"}
THROTTLED = {"Code": "ThrottlingException", "SenderFault": True, "Message": "slow down"}
SERVER = {"Code": "InternalError", "SenderFault": False, "Message": "oops"}


class ScriptedSQS:
    """Answers each batch call from a script (a list of per-call behaviours) and lets the
    test wait for the n-th call of an action."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.calls: list[tuple[str, float, list[dict[str, Any]]]] = []
        self.scripts: dict[str, list[Callable[[list[dict[str, Any]]], dict[str, Any]]]] = {}

    def script(self, action: str, *steps: Callable[[list[dict[str, Any]]], dict[str, Any]]):
        self.scripts[action] = list(steps)

    def _call(self, action: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
        with self.cond:
            self.calls.append((action, time.monotonic(), entries))
            self.cond.notify_all()
            steps = self.scripts.get(action) or []
            step = steps.pop(0) if steps else ok
        return step(entries)

    def change_message_visibility_batch(self, QueueUrl: str, Entries: list) -> dict:  # noqa: N803
        return self._call("visibility", Entries)

    def delete_message_batch(self, QueueUrl: str, Entries: list) -> dict:  # noqa: N803
        return self._call("delete", Entries)

    def wait_calls(self, action: str, count: int, timeout: float = 10.0) -> list:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.of(action)) >= count, timeout), (
                f"{action}: {len(self.of(action))} calls, expected {count}"
            )
            return self.of(action)

    def of(self, action: str) -> list[tuple[str, float, list[dict[str, Any]]]]:
        return [call for call in self.calls if call[0] == action]


def ok(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Successful": [{"Id": e["Id"]} for e in entries], "Failed": []}


def failing(failure: dict[str, Any]) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    return lambda entries: {"Successful": [], "Failed": [{"Id": e["Id"], **failure}
                                                         for e in entries]}


def raising(entries: list[dict[str, Any]]) -> dict[str, Any]:
    raise ConnectionError("endpoint unreachable")


def message(body: str) -> Message:
    return Message(raw(body), "q")


@pytest.fixture
def keeper() -> Iterator[tuple[Housekeeper, ScriptedSQS, RecordingLog, list[str]]]:
    sqs, log, deleted = ScriptedSQS(), RecordingLog(), []
    slot = scoreboard.Scoreboard().allocate()
    made = Housekeeper(sqs, "q", 6, slot, log, on_deleted=deleted.append)
    made.start()
    try:
        yield made, sqs, log, deleted
    finally:
        made.stop()
        assert not made.is_alive()


def test_failure_kinds():
    assert failure_kind(GONE) == "gone"
    assert failure_kind({"Code": "MessageNotInflight", "SenderFault": True}) == "gone"
    assert failure_kind(THROTTLED) == failure_kind(SERVER) == "transient"
    assert failure_kind({"Code": "InvalidParameterValue", "SenderFault": True}) == "refused"


def test_a_slow_delete_does_not_hold_up_the_heartbeat(keeper):
    made, sqs, _, deleted = keeper
    release = threading.Event()

    def stuck(entries: list[dict[str, Any]]) -> dict[str, Any]:
        assert release.wait(30)
        return ok(entries)

    sqs.script("delete", stuck)
    made.delete(message("done"))
    made.flush()
    sqs.wait_calls("delete", 1)  # the delete hangs from here on
    made.hold([message("running")], time.monotonic() - 3)  # half its visibility gone
    [(_, _, entries)] = sqs.wait_calls("visibility", 1)
    assert [e["ReceiptHandle"] for e in entries] == ["rh-id-running-1"]
    assert deleted == []
    release.set()
    made.flush(wait=True)
    assert deleted == ["id-done"]


@pytest.mark.parametrize("first", [raising, failing(THROTTLED), failing(SERVER)],
                         ids=["exception", "throttled", "server fault"])
def test_a_failed_extension_is_retried_well_before_the_deadline(keeper, first):
    made, sqs, log, _ = keeper
    sqs.script("visibility", first)
    received = time.monotonic() - 3
    deadline = received + 6
    made.hold([message("running")], received)
    calls = sqs.wait_calls("visibility", 2)
    retried_at = calls[1][1]
    assert retried_at < deadline - 1.0  # at a third of what was left, not at the deadline
    held = made.heartbeat.in_hand["rh-id-running-1"]
    with made.heartbeat.cond:
        assert made.heartbeat.cond.wait_for(lambda: held.deadline > deadline, 10)
    assert held.failures == 0
    assert log.named("visibility heartbeat failed")


def test_an_extension_refused_for_an_invalid_handle_is_logged_once_and_dropped(keeper):
    made, sqs, log, _ = keeper
    sqs.script("visibility", failing(GONE))
    made.hold([message("gone")], time.monotonic() - 3)
    sqs.wait_calls("visibility", 1)
    with made.heartbeat.cond:
        assert made.heartbeat.cond.wait_for(lambda: not made.heartbeat.in_hand, 10)
    [refused] = log.named("no longer ours")
    assert refused["message_id"] == "id-gone"
    assert len(sqs.of("visibility")) == 1


def test_transient_delete_failures_are_retried_and_invalid_handles_logged(keeper):
    made, sqs, log, deleted = keeper

    def mixed(entries: list[dict[str, Any]]) -> dict[str, Any]:
        verdicts = {"rh-id-a-1": None, "rh-id-b-1": THROTTLED, "rh-id-c-1": GONE}
        failed = [{"Id": e["Id"], **verdicts[e["ReceiptHandle"]]} for e in entries
                  if verdicts[e["ReceiptHandle"]]]
        return {"Successful": [], "Failed": failed}

    sqs.script("delete", mixed)
    for body in "abc":
        made.delete(message(body))
    made.flush(wait=True)
    [first, second] = sqs.wait_calls("delete", 2)
    assert [e["ReceiptHandle"] for e in second[2]] == ["rh-id-b-1"]
    made.flush(wait=True)
    assert sorted(deleted) == ["id-a", "id-b"]  # c is not ours: not forgotten as deleted
    [refused] = log.named("delete refused: the message is no longer ours")
    assert refused["message_id"] == "id-c"


def test_give_backs_retry_transient_failures_and_log_invalid_handles():
    eng = engine()
    calls = []

    def verdict(entry: dict[str, Any]) -> dict[str, Any] | None:
        calls.append(entry["ReceiptHandle"])
        if entry["ReceiptHandle"] == "rh-id-g2-1" and calls.count("rh-id-g2-1") == 1:
            return SERVER
        if entry["ReceiptHandle"] == "rh-id-g3-1":
            return GONE
        return None

    eng.sqs.batch_failures["ChangeMessageVisibilityBatch"] = verdict
    eng.run([raw("g1"), raw("g2"), raw("g3")], stop=True)
    assert calls == ["rh-id-g1-1", "rh-id-g2-1", "rh-id-g3-1", "rh-id-g2-1"]
    assert sorted(h for h, _ in eng.sqs.visibility) == ["rh-id-g1-1", "rh-id-g2-1"]
    [refused] = eng.log.named("give back refused")
    assert refused["message_id"] == "id-g3"
    assert eng.handled == []


def test_the_engine_helpers_stop_their_threads():
    eng = engine()
    worker = eng.worker()
    with housekeeping(worker):
        assert worker.housekeeper is not None and worker.housekeeper.is_alive()
    assert not worker.housekeeper.is_alive()


def test_a_message_waiting_for_a_slow_delete_stays_in_hand_until_deleted(keeper):
    made, sqs, log, deleted = keeper
    release = threading.Event()
    sqs.script("delete", lambda entries: (release.wait(30), ok(entries))[1])
    finished = message("finished")
    made.hold([finished], time.monotonic())
    made.delete(finished)
    made.flush()
    sqs.wait_calls("delete", 1)
    held = made.heartbeat.in_hand["rh-id-finished-1"]
    assert held.deleting  # still extended while the delete hangs
    release.set()
    made.flush(wait=True)
    with made.heartbeat.cond:
        assert made.heartbeat.cond.wait_for(lambda: not made.heartbeat.in_hand, 10)
    assert deleted == ["id-finished"]
    assert not log.named("no longer ours")
