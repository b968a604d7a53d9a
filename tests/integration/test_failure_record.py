"""What a failed message writes to the daemon's log: one record, its traceback once (the
contract the worker engine keeps), in json as in the console format."""

from conftest import log_events

BASIC_RECEIVER = "tests.receivers.basic:handle"
LEVELS = ("info", "warning", "error", "critical")


def test_a_dead_lettered_failure_is_one_record_with_its_traceback_once(harness):
    daemon = harness.start({"basic": {"receiver": BASIC_RECEIVER,
                                      "dead_letter_queue": "basic_failed"}})
    message_id = harness.send("basic", "fail|one")
    harness.wait_for(lambda: harness.receive("basic_failed"), what="message in DLQ")
    harness.wait_for(lambda: harness.depth("basic") == 0, what="original deleted")

    records = [e for e in log_events(daemon, message_id=message_id) if e["level"] in LEVELS]
    assert [(r["event"], r["logger"]) for r in records] == [("handler failed", "sqsd.failed")]
    [record] = records
    assert record["exception"].count("Traceback") == 1
    assert (record["policy"], record["body"], record["queue"]) == ("dead-letter", "fail|one",
                                                                    "basic")
    assert daemon.log_text().count("Traceback") == 1


def test_the_console_format_shows_a_failure_in_a_few_lines_and_handled_in_one_short_one(harness):
    daemon = harness.start(log_format="console")
    harness.send("basic", "ok|fine")
    harness.send("basic", "fail|bad")
    harness.wait_for_records(2, event="start")
    harness.wait_for(lambda: harness.depth("basic") == 0, what="both gone")

    text = daemon.log_text()
    [handled] = [line for line in text.splitlines() if " handled " in line]
    assert len(handled) < 100 and "queue=basic id=" in handled, handled
    failure = text[text.index("handler failed"):].splitlines()
    assert failure[0].count("body=fail|bad") == 1
    end = next(i for i, line in enumerate(failure) if line.startswith("ValueError"))
    assert end <= 8, "\n".join(failure)
    assert text.count("Traceback") == 1
