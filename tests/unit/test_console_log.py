"""The console log for people: one record per failed message with its traceback once, short
`handled` lines; json keeps every field in full."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from sqsd import logs

MESSAGE_ID = "856c3623-c1e3-45e1-9d48-1b7e555afdfe"


@pytest.fixture
def configured(monkeypatch):
    """Configure sqsd's logging for one format, on the test's captured stderr."""
    monkeypatch.delenv("SQSD_LOG_LEVEL", raising=False)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield lambda log_format: logs.configure(log_format, "info")
    structlog.reset_defaults()
    root.handlers[:], root.level = saved


def fail_once(tmp_path) -> None:
    """What the worker does for a handler that raised: one failed-log write."""
    try:
        raise ValueError("boom fail|2")
    except ValueError as exc:
        logs.FailedLog(str(tmp_path / "failed.jsonl")).write(
            event="handler failed", exc_info=exc, queue="emails", suffix="big",
            message_id=MESSAGE_ID, receive_count=1, duration=0.0123, policy="dead-letter",
            error="ValueError: boom fail|2", body="fail|2",
        )


def test_a_failed_message_is_one_console_record_with_its_traceback_once(configured, capfd,
                                                                         tmp_path):
    configured("console")
    fail_once(tmp_path)
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert len([line for line in lines if line[:4].isdigit()]) == 1, err  # one record
    assert err.count("Traceback (most recent call last)") == 1
    assert "handler failed" in lines[0] and "queue=emails:big" in lines[0]
    assert "id=856c3623 " in lines[0] + " " and MESSAGE_ID not in err
    assert "policy=dead-letter" in lines[0] and "body=fail|2" in lines[0]
    assert lines[-1] == "ValueError: boom fail|2"
    assert len(lines) <= 8
    [line] = (tmp_path / "failed.jsonl").read_text().splitlines()
    assert json.loads(line)["body"] == "fail|2" and "exc_info" not in json.loads(line)


def test_a_handled_line_is_short_and_scannable(configured, capfd):
    configured("console")
    logs.get("sqsd.worker", queue="emails", suffix="").info(
        "handled", message_id=MESSAGE_ID, receive_count=1, duration=0.00012)
    logs.get("sqsd.worker", queue="emails", suffix="big").info(
        "handled", message_id=MESSAGE_ID, receive_count=3, starts=2, duration=1.5)
    first, second = capfd.readouterr().err.splitlines()
    assert len(first) < 100, first
    assert first.endswith("handled          [worker] queue=emails id=856c3623 duration=0.12ms")
    assert "queue=emails:big" in second and "receive_count=3" in second and "starts=2" in second
    assert "duration=1500ms" in second


def test_json_keeps_full_ids_and_the_traceback_as_a_field(configured, capfd, tmp_path):
    configured("json")
    logs.get("sqsd.worker", queue="emails", suffix="").info(
        "handled", message_id=MESSAGE_ID, receive_count=1, duration=0.00012)
    fail_once(tmp_path)
    handled, failed = (json.loads(line) for line in capfd.readouterr().err.splitlines())
    assert handled["message_id"] == MESSAGE_ID and handled["duration"] == 0.00012
    assert failed["event"] == "handler failed" and failed["message_id"] == MESSAGE_ID
    assert failed["exception"].count("Traceback") == 1 and failed["suffix"] == "big"


def test_no_color_turns_the_console_colours_off(monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    plain = logs.console_renderer()(None, "info", {"event": "x", "level": "info"})
    monkeypatch.delenv("NO_COLOR")
    coloured = logs.console_renderer()(None, "info", {"event": "x", "level": "info"})
    assert "\x1b[" not in plain and "\x1b[" in coloured
