"""What happens to a message, per handler outcome (DESIGN "Message lifecycle").

Handlers are tests.receivers.basic:handle; the message body picks the outcome.
"""

BASIC_RECEIVER = "tests.receivers.basic:handle"


def flat_values(obj):
    """Every scalar inside a JSON value, so a check need not know the field names."""
    if isinstance(obj, dict):
        for value in obj.values():
            yield from flat_values(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from flat_values(value)
    else:
        yield obj


def test_returning_handler_deletes_the_message(harness):
    harness.start()
    message_id = harness.send("basic", "ok|one")

    [call] = harness.wait_for_records(1, body="ok|one")

    assert call["message_id"] == message_id
    assert call["outcome"] == "ok"
    assert call["receive_count"] == 1
    harness.wait_for(lambda: harness.depth("basic") == 0, what="queue empty")
    assert len(harness.records(body="ok|one")) == 1


def test_restart_later_leaves_message_until_its_delay_without_traceback(harness):
    daemon = harness.start()
    harness.send("basic", "restart:3|r")

    first, second = harness.wait_for_records(2, body="restart:3|r", timeout=20)

    assert (first["outcome"], second["outcome"]) == ("restart", "ok")
    assert (first["receive_count"], second["receive_count"]) == (1, 2)
    assert second["started"] >= first["ended"] + 3 - 0.05, "reappeared before its delay"
    harness.wait_for(lambda: harness.depth("basic") == 0, what="queue empty")
    assert "Traceback" not in daemon.log_text()


def test_handler_exception_logs_traceback_and_body_then_deletes(harness):
    daemon = harness.start({"basic": {"receiver": BASIC_RECEIVER, "on_error": "delete"}})
    harness.send("basic", "fail|f1")

    harness.wait_for_records(1, body="fail|f1")
    [line] = harness.wait_for(harness.failed_lines, what="a line in failed_log")

    values = [str(v) for v in flat_values(line)]
    assert "fail|f1" in values, line
    assert any("basic" in v for v in values), f"queue name missing: {line}"
    harness.wait_for(lambda: harness.depth("basic") == 0, what="failed message deleted")
    log = daemon.log_text()
    assert "Traceback" in log
    assert "boom fail|f1" in log
    assert len(harness.records(body="fail|f1")) == 1


def test_handler_exception_moves_message_to_dead_letter_queue_with_error(harness):
    harness.start({"basic": {"receiver": BASIC_RECEIVER, "dead_letter_queue": "basic_failed"}})
    harness.send("basic", "fail|d1")

    [dead] = harness.wait_for(lambda: harness.receive("basic_failed"), what="message in DLQ")

    assert dead["Body"] == "fail|d1"
    error = dead.get("MessageAttributes", {}).get("sqsd_error", {}).get("StringValue", "")
    assert "boom fail|d1" in error, dead.get("MessageAttributes")
    harness.wait_for(lambda: harness.depth("basic") == 0, what="source queue empty")
    assert len(harness.records(body="fail|d1")) == 1


def test_on_error_retry_calls_handler_max_retries_plus_one_times_then_dead_letters(harness):
    harness.start({"basic": {
        "receiver": BASIC_RECEIVER, "on_error": "retry", "max_retries": 2,
        "dead_letter_queue": "basic_failed",
    }})
    harness.send("basic", "fail|again")

    [dead] = harness.wait_for(lambda: harness.receive("basic_failed"), timeout=45,
                              what="message in DLQ after retries")

    assert dead["Body"] == "fail|again"
    calls = harness.records(body="fail|again")
    assert [c["receive_count"] for c in calls] == [1, 2, 3]
    assert harness.depth("basic") == 0


def worn_message(harness, queues, body, receives):
    """Create the queues with a first daemon, then send ``body`` and receive it ``receives``
    times with plain boto3, so the next daemon sees a receive count of ``receives + 1``."""
    first = harness.start(queues)
    url = harness.queue_url("basic")
    assert first.terminate() == 0
    harness.sqs.send_message(QueueUrl=url, MessageBody=body)
    for _ in range(receives):
        harness.wait_for(
            lambda: harness.sqs.receive_message(
                QueueUrl=url, VisibilityTimeout=0, WaitTimeSeconds=0).get("Messages"),
            what="a receive with boto3",
        )


def test_message_received_too_often_goes_to_dead_letter_queue_without_handler(harness):
    # Receives elsewhere are not starts on this host: only max_receives gives up on it.
    queues = {"basic": {"receiver": BASIC_RECEIVER, "max_retries": 1, "max_receives": 2,
                        "dead_letter_queue": "basic_failed"}}
    worn_message(harness, queues, "ok|worn", receives=2)

    harness.start(queues)

    [dead] = harness.wait_for(lambda: harness.receive("basic_failed"), what="message in DLQ")
    assert dead["Body"] == "ok|worn"
    assert "(max_receives)" in dead["MessageAttributes"]["sqsd_error"]["StringValue"]
    assert harness.depth("basic") == 0
    assert harness.records(None, body="ok|worn") == []


def test_message_received_too_often_without_dead_letter_queue_is_logged_and_deleted(harness):
    queues = {"basic": {"receiver": BASIC_RECEIVER, "max_retries": 1, "max_receives": 2}}
    worn_message(harness, queues, "ok|worn", receives=2)

    harness.start(queues)

    [line] = harness.wait_for(harness.failed_lines, what="a line in failed_log")
    assert "ok|worn" in [str(v) for v in flat_values(line)], line
    harness.wait_for(lambda: harness.depth("basic") == 0, what="worn message deleted")
    assert harness.records(None, body="ok|worn") == []


def test_delete_on_start_deletes_before_handler_so_failure_is_not_retried(harness):
    harness.start({"basic": {"receiver": BASIC_RECEIVER, "delete_on_start": True,
                             "on_error": "retry"}})
    harness.send("basic", "fail|once")

    harness.wait_for_records(1, body="fail|once")
    harness.wait_for(lambda: harness.depth("basic") == 0, timeout=5, what="message deleted")
    # A message sent now becomes visible only after the failed one would have reappeared
    # (visibility_timeout 2 s), so by the time it is handled a redelivery would be recorded.
    harness.send("basic", "ok|marker", DelaySeconds=3)
    harness.wait_for_records(1, body="ok|marker")

    assert len(harness.records("start", body="fail|once")) == 1


def test_heartbeat_keeps_a_long_handler_message_from_second_delivery(harness):
    # Two processes: if visibility lapsed, the idle one would receive the message again.
    harness.start({"basic": {"receiver": BASIC_RECEIVER, "processes": 2}})
    harness.send("basic", "sleep:6|hb")  # 3 x visibility_timeout

    [call] = harness.wait_for_records(1, body="sleep:6|hb", timeout=20)
    harness.wait_for(lambda: harness.depth("basic") == 0, what="message deleted")

    assert call["ended"] - call["started"] >= 6
    assert len(harness.records("start", body="sleep:6|hb")) == 1


def test_fifo_group_keeps_order_after_restart_later(harness):
    harness.start({"orders.fifo": {"receiver": BASIC_RECEIVER}})
    url = harness.queue_url("orders.fifo")
    sent = [("g1", "restart:2|a1"), ("g1", "ok|a2"), ("g1", "ok|a3"),
            ("g2", "ok|b1"), ("g2", "ok|b2")]
    harness.sqs.send_message_batch(QueueUrl=url, Entries=[
        {"Id": str(i), "MessageBody": body, "MessageGroupId": group,
         "MessageDeduplicationId": body.partition("|")[2]}
        for i, (group, body) in enumerate(sent)
    ])

    harness.wait_for(lambda: len(harness.records(outcome="ok")) == 5, timeout=20,
                     what="all five messages handled")

    order = [r["body"].partition("|")[2] for r in harness.records("start")]
    assert [tag for tag in order if tag.startswith("a")] == ["a1", "a1", "a2", "a3"]
    assert [tag for tag in order if tag.startswith("b")] == ["b1", "b2"]
    harness.wait_for(lambda: harness.depth("orders.fifo") == 0, what="queue empty")


def test_fifo_group_is_unlocked_before_the_next_long_poll(harness):
    # A FIFO group stays locked until its received messages are deleted; a long poll
    # issued before the deletes land would not see the group's next messages until it
    # times out (regression: three messages of one group took over 20 s).
    harness.start({"orders.fifo": {"receiver": BASIC_RECEIVER}},
                  defaults={"wait_time_seconds": 10, "idle_sleep_max": 0})
    url = harness.queue_url("orders.fifo")
    for tag in ("c1", "c2", "c3"):
        harness.sqs.send_message(QueueUrl=url, MessageBody=f"ok|{tag}", MessageGroupId="g",
                                 MessageDeduplicationId=tag)

    harness.wait_for(lambda: len(harness.records(outcome="ok")) == 3, timeout=8,
                     what="the whole group handled well within one long poll")

    order = [r["body"].partition("|")[2] for r in harness.records("start")]
    assert order == ["c1", "c2", "c3"]



def test_after_message_hook_runs_after_each_handled_message(harness):
    harness.start({"basic": {"receiver": BASIC_RECEIVER,
                             "after_message": "tests.receivers.basic:after_message"}})
    harness.send("basic", "ok|h1")
    harness.send("basic", "fail|h2")

    harness.wait_for(lambda: len(harness.records("after")) == 2, what="two after_message calls")

    assert len(harness.records()) == 2
