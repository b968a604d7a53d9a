"""`sqsctl send` and `sqsctl dlq` against a real `sqsd run` on moto: a test message reaches
its handler, dead-lettered messages are listed, shown and moved back, none lost or twice."""

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, child_env, wait_for

BASIC_RECEIVER = "tests.receivers.basic:handle"
SQSCTL_SCRIPT = Path(sys.executable).parent / "sqsctl"


def sqsctl(harness, *args: str, stdin: str | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    """The `sqsctl` console script with the test's configuration (socket, prefix, endpoint)."""
    if SQSCTL_SCRIPT.exists():
        command = [str(SQSCTL_SCRIPT)]
    else:
        command = [sys.executable, "-c", "from sqsd.cli import sqsctl_main; sqsctl_main()"]
    return subprocess.run(
        [*command, "-c", str(harness.config_path), *args], input=stdin,
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout,
    )


def dead_letter_config(**extra) -> dict:
    return {"basic": {"receiver": BASIC_RECEIVER, "suffixes": ["", "big"],
                      "dead_letter_queue": "basic_dead", **extra}}


def test_send_reaches_the_handler_of_the_queue_and_suffix_at_once(harness):
    # Idle workers sleep up to 60 s: only the wake-up sqsctl sends brings the message in.
    harness.start(dead_letter_config(), defaults={"idle_sleep_max": 60, "wait_time_seconds": 1})
    time.sleep(3)  # let the workers fall into their idle sleep

    sent = sqsctl(harness, "send", "basic:big", "ok|hello", "--json")

    assert sent.returncode == 0, sent.stderr
    reply = json.loads(sent.stdout)
    assert reply["url_name"] == harness.queue_name("basic", "big") and reply["woken"] == 1
    [record] = harness.wait_for_records(1, body="ok|hello", timeout=5)
    assert (record["suffix"], record["message_id"]) == ("big", reply["message_id"])

    piped = sqsctl(harness, "send", "basic", "-", "--delay", "2", stdin="ok|from stdin\n")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.startswith("sent ") and "visible in 2s" in piped.stdout
    [late] = harness.wait_for_records(1, body="ok|from stdin\n", timeout=15)
    assert late["suffix"] == "" and late["started"] - reply_time(harness, "ok|hello") >= 2


def reply_time(harness, body: str) -> float:
    return harness.records(body=body)[0]["ended"]


def test_send_refuses_unknown_queues_and_fifo_options_on_standard_queues(harness):
    harness.start(dead_letter_config())

    mistyped = sqsctl(harness, "send", "bsaic", "ok|x")
    assert mistyped.returncode == 2
    assert mistyped.stderr == "sqsctl: unknown queue 'bsaic' (did you mean 'basic'?)\n"
    wrong_suffix = sqsctl(harness, "send", "basic:bgi", "ok|x")
    assert wrong_suffix.returncode == 2 and "(did you mean 'big'?)" in wrong_suffix.stderr
    fifo_only = sqsctl(harness, "send", "basic", "ok|x", "--group", "g")
    assert fifo_only.returncode == 2 and "not a FIFO queue" in fifo_only.stderr
    bad_attribute = sqsctl(harness, "send", "basic", "ok|x", "--attr", "novalue")
    assert bad_attribute.returncode == 2 and "NAME=VALUE" in bad_attribute.stderr


def test_send_to_a_fifo_queue_takes_a_group_and_a_deduplication_id_without_a_daemon(harness):
    # No daemon runs: the queue comes from the configuration file.
    harness.write_config({"orders.fifo": {"receiver": BASIC_RECEIVER}})
    harness.sqs.create_queue(QueueName=harness.queue_name("orders.fifo"),
                             Attributes={"FifoQueue": "true"})
    for _ in range(2):
        sent = sqsctl(harness, "send", "orders.fifo", "ok|order 1", "--group", "customer-7",
                      "--dedup", "order-1")
        assert sent.returncode == 0, sent.stderr
        assert "woke" not in sent.stdout
    [message] = harness.sqs.receive_message(
        QueueUrl=harness.queue_url("orders.fifo"), MaxNumberOfMessages=10,
        AttributeNames=["All"])["Messages"]  # SQS dropped the second copy
    assert message["Attributes"]["MessageGroupId"] == "customer-7"
    assert message["Attributes"]["MessageDeduplicationId"] == "order-1"


def test_dlq_lists_and_shows_dead_lettered_messages_and_status_counts_them(harness):
    daemon = harness.start(dead_letter_config())
    for n in (1, 2):
        sent = sqsctl(harness, "send", "basic", f"fail|{n}", "--attr", "tenant=acme")
        assert sent.returncode == 0, sent.stderr
    wait_for(lambda: sqsctl(harness, "--json", "status").stdout.count('"visible": 2') >= 1,
             timeout=20, what="two messages in the dead-letter queue")

    status = json.loads(sqsctl(harness, "status", "--json").stdout)
    [dead] = status["dead_letters"]
    assert (dead["url_name"], dead["queues"], dead["visible"]) == (
        harness.queue_name("basic_dead"), ["basic", "basic:big"], 2)
    table = sqsctl(harness, "status").stdout
    [row] = [line for line in table.splitlines() if line.startswith("basic DLQ")]
    assert row.split()[2:5] == [harness.queue_name("basic_dead"), "-", "2"]

    listed = sqsctl(harness, "dlq", "basic")
    assert listed.returncode == 0, listed.stderr
    assert "ValueError: boom fail|1" in listed.stdout and "ValueError: boom fail|2" in listed.stdout
    messages = json.loads(sqsctl(harness, "dlq", "basic", "list", "--json").stdout)["messages"]
    assert sorted(m["body"] for m in messages) == ["fail|1", "fail|2"]
    first = messages[0]
    assert first["source"] == "basic" and first["attributes"] == {"tenant": "acme"}

    shown = sqsctl(harness, "dlq", "basic", "show", first["id"][:8], "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["body"] == first["body"]
    # Listing and showing left every message where it was, visible.
    assert harness.depth("basic_dead") == 2
    assert daemon.status()["ok"]


@pytest.mark.timeout(900)  # moto answers in O(queue length): ~100 s here, 400 calls
def test_redrive_moves_1000_messages_back_none_lost_none_twice(harness):
    harness.start(dead_letter_config(batch_size=10))
    dead = harness.queue_url("basic_dead")
    bodies = [f"ok|{n}" for n in range(1000)]
    for start in range(0, 1000, 10):  # as the worker leaves them: its notes as attributes
        entries = [{"Id": str(i), "MessageBody": body, "MessageAttributes": {
            "sqsd_queue": {"DataType": "String",
                           "StringValue": "basic:big" if n % 2 else "basic"},
            "sqsd_error": {"DataType": "String", "StringValue": "ValueError: boom"}}}
            for i, (n, body) in enumerate(list(enumerate(bodies))[start:start + 10])]
        harness.sqs.send_message_batch(QueueUrl=dead, Entries=entries)

    started = time.monotonic()
    moved = sqsctl(harness, "dlq", "basic", "redrive", "--yes", "--json", timeout=600)
    print(f"redrive of 1000 messages on moto: {time.monotonic() - started:.1f} s")

    assert moved.returncode == 0, moved.stderr
    reply = json.loads(moved.stdout)
    assert reply["method"] == "receive" and reply["total"] == 1000
    assert reply["moved"] == {harness.queue_name("basic"): 500,
                              harness.queue_name("basic", "big"): 500}
    records = harness.wait_for_records(1000, timeout=300)
    handled = Counter(r["body"] for r in records)
    assert set(handled) == set(bodies), "lost"
    assert max(handled.values()) == 1, f"twice: {[b for b, n in handled.items() if n > 1][:5]}"
    assert all(r["suffix"] == ("big" if int(r["body"][3:]) % 2 else "") for r in records)
    assert harness.depth("basic_dead") == 0


def test_redrive_falls_back_from_the_move_task_where_the_endpoint_lacks_it(harness):
    harness.start({"solo": {"receiver": BASIC_RECEIVER, "dead_letter_queue": "solo_dead"}})
    harness.send("solo", "fail|once")
    wait_for(lambda: harness.depth("solo_dead") == 1, timeout=20, what="a dead letter")

    refused = sqsctl(harness, "dlq", "solo", "redrive")  # stdin is not a terminal
    assert refused.returncode == 2 and "--yes" in refused.stderr

    moved = sqsctl(harness, "dlq", "solo", "redrive", "--yes")

    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.startswith(f"moved 1 message(s) from {harness.queue_name('solo_dead')}")
    assert "by receive, send, delete (message-move task not available" in moved.stdout
    harness.wait_for_records(2, body="fail|once", timeout=20)  # handled (and failed) again
    only_task = sqsctl(harness, "dlq", "solo", "redrive", "--yes", "--method", "move-task")
    assert only_task.returncode == 1 and "message-move task not available" in only_task.stderr
