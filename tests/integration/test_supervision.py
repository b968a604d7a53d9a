"""The master as a production supervisor (DESIGN "Processes"): crash backoff, graceful stop
that gives messages back, and queues that cannot run ("fatal") beside queues that can.

The daemon's JSON log is read as evidence of what the master did and when.
"""

import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from conftest import REPO, child_env, log_events, queue_counts

import sqsd_client

BASIC_RECEIVER = "tests.receivers.basic:handle"
CRASHY_RECEIVER = "tests.receivers.crashy:handle"
SQSCTL_SCRIPT = Path(sys.executable).parent / "sqsctl"
CRASHY_AND_BASIC = {
    "crashy": {"receiver": CRASHY_RECEIVER, "batch_size": 1},
    "basic": {"receiver": BASIC_RECEIVER},
}


def sqsctl(daemon, *args: str) -> subprocess.CompletedProcess:
    if SQSCTL_SCRIPT.exists():
        command = [str(SQSCTL_SCRIPT)]
    else:
        command = [sys.executable, "-c", "from sqsd.cli import sqsctl_main; sqsctl_main()"]
    return subprocess.run([*command, "--socket", str(daemon.socket_path), *args],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=30)


def at(entry: dict) -> float:
    return datetime.fromisoformat(entry["timestamp"]).timestamp()


def worker_status(daemon, queue: str) -> dict:
    [entry] = [w for w in daemon.status()["workers"] if w["queue"] == queue]
    return entry


def send_batch(harness, queue: str, bodies: list[str]) -> None:
    entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies)]
    response = harness.sqs.send_message_batch(QueueUrl=harness.queue_url(queue), Entries=entries)
    assert len(response["Successful"]) == len(entries)


# --- crash backoff -------------------------------------------------------------------------


def test_crashing_worker_restarts_at_once_then_backs_off_while_other_queues_run(harness):
    daemon = harness.start(CRASHY_AND_BASIC)
    # Each crash hides one message for visibility_timeout (2 s): eight keep the queue busy.
    send_batch(harness, "crashy", [f"exit|{n}" for n in range(8)])

    def crashes() -> list[dict]:
        return [e for e in log_events(daemon, queue="crashy")
                if e["event"].startswith("worker crashed")]

    daemon.wait_for(lambda: len(crashes()) >= 2, timeout=15, what="two crashes")
    # One broken queue never stops the others, nor the master.
    assert daemon.pings()
    harness.send("basic", "ok|meanwhile")
    harness.wait_for_records(1, body="ok|meanwhile")

    def spawns() -> list[float]:
        return [at(e) for e in log_events(daemon, "worker spawned", queue="crashy")]

    # The fourth worker's start ends the third backoff: three restart delays to compare.
    daemon.wait_for(lambda: len(crashes()) >= 3 and len(spawns()) >= 4, timeout=20,
                    what="three crashes and four spawns")
    assert daemon.pings()
    delays = []
    for crash in crashes()[:3]:
        crashed = at(crash)
        delays.append(min(s for s in spawns() if s >= crashed) - crashed)
    print("\nrestart delays after crashes 1-3: " + ", ".join(f"{d:.2f} s" for d in delays))

    assert delays[0] < 1.0, "the first restart should be immediate"
    assert delays[1] >= 0.8, "a second crash in a row should back off"
    assert delays[2] > 1.5 * delays[1], "the backoff should grow (exponentially, with jitter)"
    assert worker_status(daemon, "crashy")["restarts"] >= 3


# --- graceful stop -------------------------------------------------------------------------


def test_sigterm_finishes_the_busy_message_and_gives_back_the_rest_of_the_batch(harness):
    # Short polls and a long idle sleep: the batch lands while the worker sleeps, so one
    # receive (after the wake-up) takes all five. The visibility timeout is long, so only
    # a give-back can make the unstarted four visible again soon after the stop.
    daemon = harness.start(defaults={"visibility_timeout": 30, "wait_time_seconds": 0,
                                     "idle_sleep_max": 30})
    daemon.wait_for(lambda: (w := worker_status(daemon, "basic"))["state"] == "idle"
                    and w["idle_seconds"] >= 1, what="the worker asleep for a second or more")
    send_batch(harness, "basic", ["sleep:3|first", *(f"ok|{n}" for n in range(1, 5))])
    assert sqsd_client.wake("basic", socket_path=str(daemon.socket_path), timeout=2.0)
    [start] = harness.wait_for_records(1, "start", body="sleep:3|first")

    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=15) == 0
    exited = time.time()

    [call] = harness.records(body="sleep:3|first")
    assert call["outcome"] == "ok"
    assert call["ended"] - start["time"] >= 2.9, "the busy handler was cut short"
    harness.wait_for(lambda: queue_counts(harness, "basic") == (4, 0), timeout=1.5,
                     what="4 messages visible again and none in flight")
    assert time.time() - exited < 2, "messages came back by visibility timeout, not give-back"
    assert not [r for r in harness.records("start") if r["body"] != "sleep:3|first"]
    peeked = harness.receive("basic")
    assert sorted(m["Body"] for m in peeked) == [f"ok|{n}" for n in range(1, 5)]
    # Received once by the worker (then given back), once by this peek.
    assert {m["Attributes"]["ApproximateReceiveCount"] for m in peeked} == {"2"}
    assert daemon.alive_processes() == []


# --- fatal queues --------------------------------------------------------------------------


def test_worker_exiting_78_makes_its_queue_fatal_and_reload_retries_it(harness):
    daemon = harness.start(CRASHY_AND_BASIC)
    harness.send("crashy", "exit:78|config")

    fatal = daemon.wait_for(lambda: (w := worker_status(daemon, "crashy"))["state"] == "fatal"
                            and w, what="crashy fatal")
    assert fatal["pid"] is None
    assert fatal["last_exit"] == "configuration error (exit 78)"
    assert fatal["restarts"] == 1

    harness.send("basic", "ok|meanwhile")
    harness.wait_for_records(1, body="ok|meanwhile")
    assert worker_status(daemon, "crashy")["state"] == "fatal"
    assert daemon.worker_pids("crashy") == set()
    assert len(log_events(daemon, "worker spawned", queue="crashy")) == 1, "restarted anyway"

    reloaded = sqsctl(daemon, "reload")

    assert reloaded.returncode == 0, reloaded.stderr
    # Retried: a new worker takes the message again (once it is visible) and exits 78 again.
    second = harness.wait_for_records(2, "start", body="exit:78|config", timeout=10)[1]
    assert second["receive_count"] == 2
    again = daemon.wait_for(lambda: (w := worker_status(daemon, "crashy"))["state"] == "fatal"
                            and w["restarts"] == 2 and w, what="crashy fatal again")
    assert again["pid"] is None
    assert len(log_events(daemon, "worker spawned", queue="crashy")) == 2


def test_missing_queue_without_create_queues_is_fatal_with_a_clear_log_line(harness):
    harness.sqs.create_queue(QueueName=harness.queue_name("basic"))
    daemon = harness.start(
        {"basic": {"receiver": BASIC_RECEIVER}, "missing": {"receiver": BASIC_RECEIVER}},
        create_queues=False, ready=False,
    )
    missing_name = harness.queue_name("missing")

    fatal = daemon.wait_for(lambda: daemon.pings()
                            and (w := worker_status(daemon, "missing"))["state"] == "fatal"
                            and w, timeout=20, what="the missing queue's worker fatal")
    assert fatal["last_exit"] == "configuration error (exit 78)"
    harness.send("basic", "ok|runs")
    harness.wait_for_records(1, body="ok|runs")
    assert worker_status(daemon, "missing")["state"] == "fatal"

    complaints = [line for line in daemon.log_text().splitlines() if "does not exist" in line]

    harness.sqs.create_queue(QueueName=missing_name)
    reloaded = sqsctl(daemon, "reload")

    assert reloaded.returncode == 0, reloaded.stderr
    daemon.wait_for(lambda: worker_status(daemon, "missing")["state"] in ("idle", "polling"),
                    what="the missing queue's worker running after reload")
    harness.send("missing", "ok|created")
    harness.wait_for_records(1, body="ok|created")

    # The one line an operator reads must say which SQS queue (prefix included) is missing.
    assert complaints, "no log line says the queue does not exist"
    assert any(missing_name in line for line in complaints), \
        f"no 'does not exist' line names the SQS queue {missing_name}: {complaints}"
