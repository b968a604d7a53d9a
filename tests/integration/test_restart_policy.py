"""The master's restart policy against real workers: an exit 0 nobody asked for is a crash,
and `--message-limit` is the one way for a worker to finish for good."""

import os
import signal

from conftest import BASIC_RECEIVER, log_events


def worker_entry(daemon, queue: str = "basic") -> dict:
    [entry] = [w for w in daemon.status()["workers"] if w["queue"] == queue]
    return entry


def test_worker_stopped_behind_the_masters_back_is_restarted_as_a_crash(harness):
    daemon = harness.start()
    [before] = daemon.worker_pids()

    os.kill(before, signal.SIGTERM)  # the worker stops gracefully and exits 0

    entry = daemon.wait_for(lambda: (w := worker_entry(daemon))["pid"] not in (None, before)
                            and w, what="a new worker")
    assert (entry["restarts"], entry["failures"], entry["last_exit"]) == (1, 1, "exited 0")
    [crash] = log_events(daemon, "worker crashed; restarting")
    assert crash["pid"] == before
    assert not log_events(daemon, "worker finished")


def test_message_limit_finishes_the_worker_for_good_and_the_daemon_with_it(harness, sqs):
    config = harness.write_config({"basic": {"receiver": BASIC_RECEIVER}})
    url = sqs.create_queue(QueueName=harness.queue_name("basic"))["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="ok|only")

    result = harness.run_sqsd("run", "-c", str(config), "--message-limit", "1", timeout=60)

    assert result.returncode == 0, result.stderr
    assert len(harness.records(body="ok|only")) == 1
    assert '"worker finished"' in result.stderr
    assert "message limit reached (exit 79)" in result.stderr
    assert '"all done"' in result.stderr
    assert "crashed" not in result.stderr
