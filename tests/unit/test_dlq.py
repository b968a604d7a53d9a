"""sqsd.tools.dlq against an in-memory SQS with a clock of its own: redrive never loses a
message and never copies one twice in a run, listing leaves every message as it was, and
SQS's message-move task is used where the endpoint has it."""

from __future__ import annotations

import itertools
import os
import signal
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from sqsd.tools import dlq, send
from sqsd.tools.queues import Target, UnknownQueue, find

DLQ, EMAILS, BIG, REPORTS = "q/dlq", "q/emails", "q/emails__big", "q/reports"


class FakeSQS:
    """Queues of messages with visibility timeouts, receipt handles that change at every
    receive, and deletes that can be made to fail."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.queues: dict[str, list[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.refuse_deletes: dict[str, int] = {}  # message id -> deletes to refuse
        self.on_send = lambda: None

    def put(self, url: str, body: str, source: str | None = None, sent: float | None = None,
            **attributes: str) -> str:
        message_id = f"m{next(self.ids):04d}"
        notes = dict(attributes)
        if source is not None:
            notes.update(sqsd_queue=source, sqsd_error="ValueError: boom", sqsd_receive_count="6")
        self.queues.setdefault(url, []).append({
            "id": message_id, "body": body, "visible_at": 0.0, "receipt": None,
            "sent": self.now - 10 if sent is None else sent,
            "attributes": {k: {"DataType": "String", "StringValue": v} for k, v in notes.items()},
            "group": None,
        })
        return message_id

    def bodies(self, url: str) -> list[str]:
        return sorted(m["body"] for m in self.queues.get(url, []))

    # the boto3 calls sqsd.tools.dlq makes

    def receive_message(self, QueueUrl, MaxNumberOfMessages, VisibilityTimeout, **_):  # noqa: N803
        found = []
        for message in self.queues.get(QueueUrl, []):
            if len(found) == MaxNumberOfMessages:
                break
            if message["visible_at"] <= self.now:
                message["visible_at"] = self.now + VisibilityTimeout
                message["receipt"] = f"r{next(self.ids)}"
                found.append({
                    "MessageId": message["id"], "ReceiptHandle": message["receipt"],
                    "Body": message["body"], "MessageAttributes": dict(message["attributes"]),
                    "Attributes": {"SentTimestamp": str(int(message["sent"] * 1000))},
                })
        if not found:
            self.now += 60  # time passes while nothing is there
        return {"Messages": found} if found else {}

    def send_message_batch(self, QueueUrl, Entries):  # noqa: N803
        self.on_send()
        for entry in Entries:
            self.queues.setdefault(QueueUrl, []).append({
                "id": f"m{next(self.ids):04d}", "body": entry["MessageBody"],
                "visible_at": 0.0, "receipt": None, "sent": self.now,
                "attributes": entry.get("MessageAttributes", {}), "entry": entry,
            })
        return {"Successful": [{"Id": e["Id"]} for e in Entries]}

    def delete_message_batch(self, QueueUrl, Entries):  # noqa: N803
        failed = []
        messages = self.queues.get(QueueUrl, [])
        for entry in Entries:
            match = [m for m in messages if m["receipt"] == entry["ReceiptHandle"]]
            if match and self.refuse_deletes.get(match[0]["id"], 0) > 0:
                self.refuse_deletes[match[0]["id"]] -= 1
                failed.append({"Id": entry["Id"], "Code": "InternalError"})
            elif match:
                messages.remove(match[0])
        return {"Successful": [], "Failed": failed}

    def change_message_visibility_batch(self, QueueUrl, Entries):  # noqa: N803
        for entry in Entries:
            for message in self.queues.get(QueueUrl, []):
                if message["receipt"] == entry["ReceiptHandle"]:
                    message["visible_at"] = self.now + entry["VisibilityTimeout"]
        return {"Successful": [{"Id": e["Id"]} for e in Entries]}


TARGETS = [Target("emails", "", "emails", "dlq"), Target("emails", "big", "emails__big", "dlq"),
           Target("reports", "", "reports", "dlq")]


def route_for(queue: str = "emails", to: Target | None = None) -> dlq.Route:
    return dlq.router(TARGETS, queue, to, lambda name: f"q/{name}")


@pytest.fixture
def sqs() -> FakeSQS:
    return FakeSQS()


def test_redrive_sends_each_message_back_where_it_came_from_once(sqs):
    for i in range(25):
        sqs.put(DLQ, f"plain {i}", source="emails")
        sqs.put(DLQ, f"big {i}", source="emails:big")
    sqs.put(DLQ, "no note")  # put there by another tool: to the plain queue
    sqs.put(DLQ, "of reports", source="reports")  # another queue's: left alone
    result = dlq.redrive(sqs, DLQ, route_for(), began=sqs.now)
    assert sqs.bodies(EMAILS) == sorted([f"plain {i}" for i in range(25)] + ["no note"])
    assert sqs.bodies(BIG) == sorted(f"big {i}" for i in range(25))
    assert sqs.bodies(DLQ) == ["of reports"]
    assert sqs.queues[DLQ][0]["visible_at"] <= sqs.now  # released, not hidden
    assert (result.total, dict(result.moved), result.left_other) == (
        51, {"emails": 26, "emails__big": 25}, 1)
    assert result.reply()["ok"] is True


def test_a_copy_carries_the_producers_attributes_not_the_workers_notes(sqs):
    sqs.put(DLQ, "x", source="emails", tenant="acme")
    dlq.redrive(sqs, DLQ, route_for(), began=sqs.now)
    [copy] = sqs.queues[EMAILS]
    assert copy["attributes"] == {
        "tenant": {"DataType": "String", "StringValue": "acme"},
        "sqsd_redriven_from": {"DataType": "String", "StringValue": "m0001"}}


def test_fifo_copies_keep_their_group_and_dedupe_on_the_original_id():
    raw = {"MessageId": "abc", "ReceiptHandle": "r", "Body": "b",
           "Attributes": {"MessageGroupId": "g7", "SentTimestamp": "0"}}
    entry = dlq.DeadLetter(raw).copy_entry(fifo=True)
    assert (entry["MessageGroupId"], entry["MessageDeduplicationId"]) == ("g7", "abc")


def test_a_message_whose_delete_failed_is_deleted_when_seen_again_never_copied_twice(sqs):
    first = sqs.put(DLQ, "stubborn", source="emails")
    for i in range(15):
        sqs.put(DLQ, f"m{i}", source="emails")
    sqs.refuse_deletes[first] = dlq.DELETE_TRIES  # every try of the first round fails
    result = dlq.redrive(sqs, DLQ, route_for(), began=sqs.now)
    assert sqs.bodies(EMAILS).count("stubborn") == 1
    assert sqs.bodies(DLQ) == []  # it came back after its visibility timeout and was deleted
    assert result.undeleted == set() and result.total == 16


def test_a_delete_that_never_succeeds_is_reported_not_hidden(sqs):
    stuck = sqs.put(DLQ, "stuck", source="emails")
    sqs.refuse_deletes[stuck] = 10**6
    result = dlq.redrive(sqs, DLQ, route_for(), began=sqs.now)
    assert sqs.bodies(EMAILS) == ["stuck"] and sqs.bodies(DLQ) == ["stuck"]
    assert result.undeleted == {stuck} and result.reply()["ok"] is False


def test_messages_dead_lettered_after_the_redrive_began_stay(sqs):
    sqs.put(DLQ, "old", source="emails")
    sqs.put(DLQ, "new", source="emails", sent=sqs.now + 5)
    result = dlq.redrive(sqs, DLQ, route_for(), began=sqs.now)
    assert sqs.bodies(EMAILS) == ["old"] and sqs.bodies(DLQ) == ["new"]
    assert result.left_newer == 1


def test_to_and_max_choose_where_and_how_many(sqs):
    for i in range(30):
        sqs.put(DLQ, f"r{i:02d}", source="reports")
    to = find(TARGETS, "emails", "big")[0]
    result = dlq.redrive(sqs, DLQ, route_for(to=to), began=sqs.now, limit=12)
    assert result.total == 12 and len(sqs.bodies(BIG)) == 12 and len(sqs.bodies(DLQ)) == 18


def test_ctrl_c_during_a_batch_lets_its_deletes_finish_first(sqs):
    for i in range(30):
        sqs.put(DLQ, f"m{i}", source="emails")
    sends = itertools.count()
    sqs.on_send = lambda: next(sends) == 1 and os.kill(os.getpid(), signal.SIGINT)
    result = dlq.redrive(sqs, DLQ, route_for(), began=sqs.now)
    assert result.interrupted and result.total == 20
    assert len(sqs.bodies(EMAILS)) == 20 and len(sqs.bodies(DLQ)) == 10  # 30, none twice
    assert all(m["visible_at"] <= sqs.now for m in sqs.queues[DLQ])


def test_listing_leaves_every_message_visible_and_show_finds_one_by_its_start(sqs):
    for i in range(14):
        sqs.put(DLQ, f"m{i}", source="emails")
    listed = dlq.peek(sqs, DLQ, 50)
    assert len(listed) == 14 and listed[0].source == "emails"
    assert listed[0].summary()["error"] == "ValueError: boom"
    [found] = dlq.peek(sqs, DLQ, 50, until=lambda m: m.id.startswith("m0002"))
    assert found.body == "m1"
    assert all(m["visible_at"] <= sqs.now for m in sqs.queues[DLQ])  # the whole batch


def test_the_move_task_is_one_destination_and_reports_what_sqs_moved():
    client = boto3.client("sqs", region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    arn = "arn:aws:sqs:us-east-1:1:{}"

    def arns(name: str) -> dict:
        return {"Attributes": {"QueueArn": arn.format(name)}}

    with Stubber(client) as stub:
        for name in ("dlq", "emails"):
            stub.add_response("get_queue_attributes", arns(name))
        stub.add_response("start_message_move_task", {"TaskHandle": "t1"},
                          {"SourceArn": arn.format("dlq"), "DestinationArn": arn.format("emails")})
        stub.add_response("list_message_move_tasks", {"Results": [
            {"TaskHandle": "t1", "Status": "RUNNING", "ApproximateNumberOfMessagesMoved": 4}]})
        stub.add_response("list_message_move_tasks", {"Results": [
            {"Status": "COMPLETED", "ApproximateNumberOfMessagesMoved": 9}]})
        result = dlq.move_task(client, "https://q/dlq", dlq.Destination("emails", "https://q/e"),
                               poll=0)
    assert (result.method, result.total, result.reply()["ok"]) == ("move-task", 9, True)
    with Stubber(client) as stub:
        for name in ("dlq", "emails"):
            stub.add_response("get_queue_attributes", arns(name))
        stub.add_client_error("start_message_move_task", "InvalidParameterValue",
                              "Source queue must be configured as a Dead Letter Queue.")
        with pytest.raises(dlq.MoveTaskUnavailable, match="InvalidParameterValue"):
            dlq.move_task(client, "https://q/dlq", dlq.Destination("emails", "https://q/e"))


def test_a_move_task_only_when_every_message_has_one_place_to_go():
    assert dlq.single_destination(TARGETS, "emails", None) is None  # two suffixes
    assert dlq.single_destination(TARGETS, "emails", TARGETS[2]) == TARGETS[2]
    alone = [Target("solo", "", "solo", "solo_dlq"), *TARGETS]
    assert dlq.single_destination(alone, "solo", None) == alone[0]
    shared = [Target("solo", "", "solo", "dlq"), *TARGETS]
    assert dlq.single_destination(shared, "solo", None) is None


def test_queue_names_get_the_nearest_known_one():
    with pytest.raises(UnknownQueue, match=r"unknown queue 'emials' \(did you mean 'emails'\?\)"):
        find(TARGETS, "emials", None)
    with pytest.raises(UnknownQueue, match=r"unknown suffix 'bgi' of queue 'emails' \(did you"):
        find(TARGETS, "emails", "bgi")
    assert [t.label for t in find(TARGETS, "emails", None)] == ["emails", "emails:big"]


def test_send_attributes_are_name_value_with_an_optional_number_type():
    assert send.parse_attribute("tenant=acme") == (
        "tenant", {"DataType": "String", "StringValue": "acme"})
    assert send.parse_attribute("tries:Number=3")[1]["DataType"] == "Number"
    for bad in ("novalue", "=x", "n:Number=abc", "n:Binary=AA"):
        with pytest.raises(ValueError):
            send.parse_attribute(bad)
