"""One redaction for everything that leaves the daemon (sqsd/redact.py), and where it is
applied: log lines (structlog and stdlib), sd_notify STATUS=, failed_log's fields."""

import json
import logging
import os
import socket
from pathlib import Path

import pytest

from sqsd import logs, notify, redact

SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(("text", "expected"), [
    ('Could not connect to the endpoint URL: "http://user:pw@host:4566/"',
     'Could not connect to the endpoint URL: "http://***@host:4566/"'),
    ("https://bob:p@ss@sqs.example.com/q", "https://***@sqs.example.com/q"),
    ("key AKIAIOSFODNN7EXAMPLE in use", "key AKIA*** in use"),
    ("temporary ASIAIOSFODNN7EXAMPLE", "temporary ASIA***"),
    (f"aws_secret_access_key={SECRET_KEY}", "aws_secret_access_key=***"),
    (f'{{"SecretAccessKey": "{SECRET_KEY}"}}', '{"SecretAccessKey": "***"}'),
    (f"bare {SECRET_KEY} key", "bare *** key"),
    ("X-Amz-Security-Token=FQoGZXIvYXdzEHoaD&Action=x", "X-Amz-Security-Token=***&Action=x"),
    ("password=hunter2 user=bob", "password=*** user=bob"),
])
def test_credentials_and_key_material_are_masked(text: str, expected: str) -> None:
    assert redact.redact(text) == expected


@pytest.mark.parametrize("text", [
    '{"ok":true,"woken":1}',
    "mail bob@example.com about it",
    "http://127.0.0.1:4566/123456789012/prod_emails",
    "commit 0123456789abcdef0123456789abcdef01234567",
    "message 0455527b-0e44-49b6-9104-35ec464c7a9f handled",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact.redact(text) == text


def test_a_remembered_endpoint_password_is_masked_without_its_url(monkeypatch) -> None:
    monkeypatch.setattr(redact, "_remembered", set())
    redact.remember("http://sqsuser:correct-horse@host:1/")
    assert redact.redact("auth failed for correct-horse") == "auth failed for ***"


@pytest.fixture
def log_pipe(monkeypatch):
    """logs.configure() writing to a pipe the test reads."""
    reader, writer = os.pipe()
    monkeypatch.setattr(logs, "_stream", logs.LogStream(writer))
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield lambda: os.read(reader, 65536).decode()
    root.handlers[:], root.level = saved
    os.close(reader)
    os.close(writer)


def test_log_lines_from_structlog_and_stdlib_are_redacted(log_pipe) -> None:
    logs.configure("json", "info")
    logs.get("sqsd.worker").warning("SQS call failed", error="http://u:pw123456@h:1/ refused")
    logging.getLogger("botocore").error("bad key %s", SECRET_KEY)

    first, second = log_pipe().splitlines()

    assert json.loads(first)["error"] == "http://***@h:1/ refused"
    assert json.loads(second)["event"] == "bad key ***"


def test_failed_log_keeps_the_body_and_redacts_the_rest(log_pipe, tmp_path: Path) -> None:
    logs.configure("json", "info")
    failed = logs.FailedLog(str(tmp_path / "failed.jsonl"))

    assert failed.write(queue="q", error="http://u:pw@h/ down", body=f"x {SECRET_KEY}")

    [line] = (tmp_path / "failed.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["error"] == "http://***@h/ down"
    assert record["body"] == f"x {SECRET_KEY}"


def test_sd_notify_status_is_redacted(monkeypatch, tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        notifier = notify.Notifier()
        notifier.status("endpoint http://u:pw@h:1/ unreachable")
        notifier.close()
        assert systemd.recv(4096) == b"STATUS=endpoint http://***@h:1/ unreachable"
