"""The master and its workers as processes: layout, status, crashes, signals."""

import itertools
import os
import signal

from conftest import log_events

BASIC_RECEIVER = "tests.receivers.basic:handle"
WITH_BIG = {"basic": {"receiver": BASIC_RECEIVER, "suffixes": ["", "big"]}}


def test_each_suffix_queue_is_handled_by_its_own_process(harness):
    daemon = harness.start(WITH_BIG)
    pids = {(w.queue, w.suffix): w.pid for w in daemon.workers()}
    assert set(pids) == {("basic", ""), ("basic", "big")}

    harness.send("basic", "ok|plain")
    harness.send("basic", "ok|big", suffix="big")

    [plain] = harness.wait_for_records(1, body="ok|plain")
    [big] = harness.wait_for_records(1, body="ok|big")
    assert plain["pid"] == pids["basic", ""]
    assert big["pid"] == pids["basic", "big"]
    assert plain["pid"] != big["pid"]
    assert big["suffix"] == "big"


def test_worker_process_title_shows_queue_suffix_and_current_state(harness):
    daemon = harness.start(WITH_BIG)

    daemon.wait_for(
        lambda: {(w.queue, w.suffix, w.state in ("idle", "polling")) for w in daemon.workers()}
        == {("basic", "", True), ("basic", "big", True)},
        what="titles `sqsd: worker basic[:big] idle|polling`",
    )


def test_status_lists_every_worker_with_its_pid_and_counts_processed(harness):
    daemon = harness.start(WITH_BIG)

    status = daemon.status()

    assert status["ok"] is True
    assert status["pid"] == daemon.pid
    listed = {(w["queue"], w["suffix"] or "", w["pid"]) for w in status["workers"]}
    assert listed == {(w.queue, w.suffix, w.pid) for w in daemon.workers()}

    harness.send("basic", "ok|counted")
    harness.wait_for_records(1, body="ok|counted")

    def processed_plain():
        return sum(w["processed"] for w in daemon.status()["workers"]
                   if w["queue"] == "basic" and not w["suffix"])

    daemon.wait_for(lambda: processed_plain() == 1, what="processed == 1 in status")


def test_sigkilled_worker_is_replaced_and_its_queue_still_handled(harness):
    daemon = harness.start()
    [old] = daemon.worker_pids("basic")

    os.kill(old, signal.SIGKILL)

    new = daemon.wait_for(
        lambda: (pids := daemon.worker_pids("basic")) and old not in pids and pids,
        timeout=15, what="a new worker for basic",
    )
    harness.send("basic", "ok|after")
    [call] = harness.wait_for_records(1, body="ok|after")
    assert call["pid"] in new
    daemon.wait_for(
        lambda: any(w["restarts"] >= 1 for w in daemon.status()["workers"]),
        what="restarts >= 1 in status",
    )


def test_message_in_flight_when_worker_is_killed_is_handled_again(harness):
    harness.start()
    harness.send("basic", "hang:60|k")
    [start] = harness.wait_for_records(1, event="start", body="hang:60|k")

    os.kill(start["pid"], signal.SIGKILL)

    [call] = harness.wait_for_records(1, body="hang:60|k", timeout=20)
    assert call["receive_count"] == 2
    assert call["pid"] != start["pid"]
    harness.wait_for(lambda: harness.depth("basic") == 0, what="message deleted")


def test_sigterm_stops_master_and_all_workers_and_removes_socket(harness):
    daemon = harness.start({"basic": {"receiver": BASIC_RECEIVER, "suffixes": ["", "big"],
                                      "processes": 2}})
    assert len(daemon.workers()) == 4

    assert daemon.terminate() == 0

    assert daemon.alive_processes() == []
    assert not daemon.socket_path.exists()


def test_sigterm_lets_the_busy_handler_finish_and_delete_its_message(harness):
    daemon = harness.start()
    harness.send("basic", "sleep:3|busy")
    harness.wait_for_records(1, event="start", body="sleep:3|busy")

    assert daemon.terminate() == 0

    [call] = harness.records(body="sleep:3|busy")
    assert call["outcome"] == "ok"
    assert harness.depth("basic") == 0


def test_workers_exit_within_a_second_of_master_sigkill(harness):
    daemon = harness.start(WITH_BIG)
    assert len(daemon.worker_pids()) == 2

    daemon.kill_master()

    # ~1 s: PR_SET_PDEATHSIG is immediate, a getppid() check needs a tick; 0.5 s of slack.
    harness.wait_for(lambda: not daemon.alive_processes(), timeout=1.5,
                     what="workers to exit after the master was SIGKILLed")


def test_max_messages_recycles_the_worker_for_the_next_message(harness):
    daemon = harness.start({"basic": {"receiver": BASIC_RECEIVER, "max_messages": 2}})
    for n in (1, 2):
        harness.send("basic", f"ok|m{n}")
        harness.wait_for_records(1, body=f"ok|m{n}")
    [first, second] = harness.records()

    daemon.wait_for(lambda: first["pid"] not in daemon.worker_pids("basic"),
                    what="the worker to be recycled after 2 messages")
    harness.send("basic", "ok|m3")

    [third] = harness.wait_for_records(1, body="ok|m3")
    assert first["pid"] == second["pid"] != third["pid"]


def test_hard_timeout_kills_a_stuck_handler_and_the_message_is_redelivered(harness):
    harness.start({"basic": {"receiver": BASIC_RECEIVER, "hard_timeout": 2}})
    harness.send("basic", "hang:60|stuck")
    [start] = harness.wait_for_records(1, event="start", body="hang:60|stuck")

    [call] = harness.wait_for_records(1, body="hang:60|stuck", timeout=20)

    assert call["receive_count"] == 2
    assert call["pid"] != start["pid"]
    assert call["started"] - start["time"] >= 2


def test_sighup_reload_starts_an_added_queue_and_keeps_unchanged_workers(harness):
    daemon = harness.start()
    [basic] = daemon.worker_pids("basic")
    harness.write_config({"basic": {"receiver": BASIC_RECEIVER},
                          "other": {"receiver": BASIC_RECEIVER}})

    daemon.proc.send_signal(signal.SIGHUP)

    daemon.wait_for(lambda: daemon.worker_pids("other"), what="a worker for the added queue")
    assert daemon.worker_pids("basic") == {basic}
    harness.send("other", "ok|reloaded")
    [call] = harness.wait_for_records(1, body="ok|reloaded")
    assert call["pid"] in daemon.worker_pids("other")


def test_concurrency_above_one_runs_messages_at_once_without_a_warning(harness):
    daemon = harness.start({"basic": {"receiver": BASIC_RECEIVER, "concurrency": 4}})
    url = harness.queue_url("basic")
    harness.sqs.send_message_batch(QueueUrl=url, Entries=[
        {"Id": str(i), "MessageBody": f"sleep:0.5|one{i}"} for i in range(3)])
    calls = sorted(harness.wait_for_records(3), key=lambda call: call["started"])
    assert any(after["started"] < before["ended"]
               for before, after in itertools.pairwise(calls)), calls
    assert not log_events(daemon, "concurrency not implemented: one message at a time")
