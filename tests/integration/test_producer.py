"""The producer API (`import sqsd` in another process, configured by SQSD_CONFIG) and the
daemon side of what it sends."""

import json
import time

BASIC_RECEIVER = "tests.receivers.basic:handle"


def test_send_from_another_process_reaches_handler_on_each_suffix(harness):
    harness.start({"basic": {"receiver": BASIC_RECEIVER, "suffixes": ["", "big"]}})

    harness.produce("""
        import sqsd
        sqsd.send("basic", "ok|plain")
        sqsd.send("basic", "ok|big", suffix="big")
    """)

    [plain] = harness.wait_for_records(1, body="ok|plain")
    [big] = harness.wait_for_records(1, body="ok|big")
    assert not plain["suffix"]
    assert big["suffix"] == "big"


def test_calling_a_receiver_with_body_sends_to_its_queue(harness):
    harness.start({"decorated": {}}, imports=["tests.receivers.decorated"])

    harness.produce("""
        from tests.receivers.decorated import echo
        echo(body="hello")
    """)

    [call] = harness.wait_for_records(1, body="hello")
    assert call["receive_count"] == 1


def test_send_wakes_an_idle_worker_at_once(harness):
    daemon = harness.start(defaults={"idle_sleep_max": 60})

    def in_long_idle_sleep():
        [worker] = daemon.status()["workers"]
        if worker["state"] == "idle" and worker.get("idle_seconds", 0) >= 3:
            return time.time() + worker["idle_seconds"]
        return None

    # Backoff 1, 2, 4 ... s: about 5 s after start the worker begins a 4 s sleep.
    would_poll_at = daemon.wait_for(in_long_idle_sleep, timeout=30,
                                    what="an idle sleep with 3 s or more left")
    out = harness.produce("""
        import time, sqsd
        print(time.time(), flush=True)
        sqsd.send("basic", "ok|wake")
    """)

    sent_at = float(out.split()[0])
    [call] = harness.wait_for_records(1, body="ok|wake", timeout=60)
    assert sent_at < would_poll_at - 0.5, "producer too slow to start for this test"
    assert call["started"] < would_poll_at, "handled only when the idle sleep ran out"
    assert call["started"] - sent_at < 2.0


def test_task_delay_sends_args_and_kwargs_as_json(harness):
    harness.write_config({"tasks_add": {}}, imports=["tests.receivers.tasks"])
    harness.sqs.create_queue(QueueName=harness.queue_name("tasks_add"))

    harness.produce("""
        from tests.receivers.tasks import add
        add.delay(1, 2, x=3)
    """)

    [message] = harness.wait_for(lambda: harness.receive("tasks_add"), what="the task message")
    assert json.loads(message["Body"]) == [[1, 2], {"x": 3}]


def test_daemon_calls_task_with_args_and_kwargs_from_the_message(harness):
    harness.start({"tasks_add": {}}, imports=["tests.receivers.tasks"])

    harness.send("tasks_add", json.dumps([[1, 2], {"x": 3}]))

    [call] = harness.wait_for_records(1, event="task")
    assert call["args"] == [1, 2]
    assert call["kwargs"] == {"x": 3}
    harness.wait_for(lambda: harness.depth("tasks_add") == 0, what="task message deleted")


def test_delay_above_the_sqs_maximum_is_honoured_by_redelaying(harness):
    # SQSD_MAX_SQS_DELAY=2 stands in for SQS's 900 s cap, for producer and daemon alike.
    capped = {"SQSD_MAX_SQS_DELAY": "2"}
    harness.start(env=capped)

    out = harness.produce("""
        import time, sqsd
        print(time.time(), flush=True)
        sqsd.send("basic", "ok|late", delay_seconds=5)
    """, env=capped)

    sent_at = float(out.split()[0])
    [call] = harness.wait_for_records(1, body="ok|late", timeout=20)
    assert call["started"] >= sent_at + 5, f"handled {call['started'] - sent_at:.2f} s after send"
    harness.wait_for(lambda: harness.depth("basic") == 0, what="queue empty")
    assert len(harness.records("start", body="ok|late")) == 1
