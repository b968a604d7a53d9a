"""6. Resource limits: a handler that leaks memory past ``max_memory_mb`` gets its worker
recycled (not counted as a crash) and every message is still handled; a failed-messages
log on a full disk (/dev/full) or at an unwritable path is reported clearly and loses no
message: the messages stay in the queue until the log can be written again."""

import os
import time

import pytest

from chaos.conftest import (
    CHAOS_RECEIVER,
    PROFILE,
    all_workers_running,
    assert_answers_sqsctl_ping,
    log_events,
)

pytestmark = pytest.mark.timeout(PROFILE.timeout)

LEAK_MB = 16
HEADROOM_MB = 48


def reconfigure(harness, daemon, queues, **sqsd_options) -> None:
    tmp = harness.config_path.with_suffix(".new")
    harness.write_config(queues, sqsd=sqsd_options, path=tmp)
    os.replace(tmp, harness.config_path)
    reply = daemon.ctl("reload")
    assert reply["ok"], reply


def test_a_leaking_handler_is_recycled_and_handles_everything(harness, ledger, report,
                                                              profile):
    queues = {"leaky": {"receiver": CHAOS_RECEIVER, "batch_size": 1, "max_memory_mb": 100_000}}
    daemon = harness.start(queues)
    [before] = daemon.status()["workers"]
    limit = before["rss"] // 2**20 + HEADROOM_MB
    queues["leaky"]["max_memory_mb"] = limit
    reconfigure(harness, daemon, queues)
    daemon.wait_for(lambda: (w := daemon.status()["workers"][0])["pid"] != before["pid"]
                    and w["state"] not in ("starting", "stopping"),
                    what="the worker restarted with max_memory_mb")

    ledger.send("leaky", [f"leak:{LEAK_MB}|{n}" for n in range(profile.leak_messages)])
    most = 0
    deadline = time.monotonic() + 60
    while ledger.outstanding() and time.monotonic() < deadline:
        for w in daemon.status()["workers"]:
            most = max(most, (w.get("rss") or 0) // 2**20)
        time.sleep(0.1)  # sampling pace
    ledger.wait_settled(timeout=profile.settle, queues=["leaky"], daemon=daemon)
    daemon.wait_for(lambda: all_workers_running(daemon), what="the worker running")
    [after] = daemon.status()["workers"]
    recycles = len(log_events(daemon, "recycling worker"))
    figures = report(**ledger.summary(), max_memory_mb=limit, leak_mb_per_message=LEAK_MB,
                     most_rss_mb_seen=most, recycles=recycles, restarts=after["restarts"],
                     failures=after["failures"], last_exit=after["last_exit"])
    assert figures["lost"] == 0
    expected = profile.leak_messages * LEAK_MB // HEADROOM_MB
    assert recycles >= max(1, expected - 1), "the leaking worker was not recycled"
    assert "recycled (exit 75)" in after["last_exit"]
    assert after["failures"] == 0, "recycling counted as a crash"
    # Checked before each receive: at most one message's leak beyond the limit.
    assert most <= limit + LEAK_MB + 8
    assert_answers_sqsctl_ping(daemon)


def test_unwritable_failed_log_is_reported_and_keeps_the_messages(harness, ledger, report,
                                                                  profile):
    queues = {"keep": {"receiver": CHAOS_RECEIVER, "max_retries": 1}}
    daemon = harness.start(queues, failed_log="/dev/full")  # a disk that is always full
    ledger.failed_log_queues.add("keep")
    count = 5 if profile.name == "short" else 20
    ledger.send("keep", [f"fail|keep{n}" for n in range(count)], expect="dead")

    def unwritable(path: str) -> list[dict]:
        return [e for e in log_events(daemon, "failed_log not writable") if e.get("path") == path]

    def reached(path: str, events: int) -> bool:
        return len(unwritable(path)) >= events or harness.depth("keep") == 0

    # Two failed deliveries each (max_retries = 1), then the dead-letter path: no DLQ, so
    # the failed log again.
    harness.wait_for(lambda: reached("/dev/full", 3 * count), timeout=profile.settle / 2,
                     what="every message past max_retries with the disk full")
    full_depth = harness.depth("keep")

    blocker = harness.tmp_path / "not-a-directory"
    blocker.write_text("")
    unwritable_path = str(blocker / "failed.log")
    reconfigure(harness, daemon, queues, failed_log=unwritable_path)
    harness.wait_for(lambda: reached(unwritable_path, count), timeout=profile.settle / 2,
                     what="every message tried again with an unwritable failed_log")
    unwritable_depth = harness.depth("keep")

    reconfigure(harness, daemon, queues, failed_log=str(harness.failed_log))
    ledger.wait_settled(timeout=profile.settle, queues=["keep"], daemon=daemon)
    full, bad = unwritable("/dev/full"), unwritable(unwritable_path)
    figures = report(**ledger.summary(), failed_log_errors={"disk full": len(full),
                                                            "unwritable path": len(bad)},
                     still_queued_while_disk_full=full_depth,
                     still_queued_while_unwritable=unwritable_depth,
                     dropped=len(log_events(daemon, "dropping message")))
    assert full and "No space left on device" in full[0]["error"] and full[0]["level"] == "error"
    assert bad and "Not a directory" in bad[0]["error"]
    assert figures["lost"] == 0, "messages deleted although their body was written nowhere"
    assert full_depth == count and unwritable_depth == count
    assert_answers_sqsctl_ping(daemon)
