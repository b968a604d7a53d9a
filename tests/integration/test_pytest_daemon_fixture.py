"""The `sqsd_daemon` fixture users get from the pytest plugin: a real daemon on moto."""

from __future__ import annotations

import json
import os

import sqsd


def test_sqsd_daemon_fixture_runs_the_users_receivers(sqsd_daemon, tmp_path, monkeypatch):
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("SQSD_TEST_RECORD", str(record))  # inherited by the daemon
    daemon = sqsd_daemon(
        imports=["tests.receivers.decorated"], queue_prefix=f"fixture{os.getpid()}_"
    )
    producer = sqsd.configure(daemon.config_path)
    try:
        producer.send("decorated", "ok|from-the-fixture")
        daemon.wait_idle(timeout=30)
    finally:
        sqsd.producer._producer = None  # leave no configured producer to later tests

    bodies = [json.loads(line)["body"] for line in record.read_text().splitlines()]
    assert "ok|from-the-fixture" in bodies
    assert daemon.stop() == 0
