"""4. Master faults under load: SIGKILL of the master (no worker survives it; a new master
handles everything), SIGTERM while handlers run (they finish, unstarted messages are given
back at once, nothing is handled twice), and repeated HUPs with changing configuration
(no message lost, never two workers for one slot, the wanted set in the end)."""

import os
import random
import signal
import time
from collections import Counter

import pytest
from conftest import alive

from chaos.conftest import (
    CHAOS_RECEIVER,
    PROFILE,
    all_workers_running,
    assert_answers_sqsctl_ping,
)

pytestmark = pytest.mark.timeout(PROFILE.timeout)


def handled_count(ledger) -> int:
    return sum(1 for n in ledger.handled().values() if n)


def test_sigkill_of_the_master_leaves_no_worker_and_a_restart_handles_everything(
        harness, ledger, report, profile):
    queues = {"work": {"receiver": CHAOS_RECEIVER, "processes": 3}}
    daemon = harness.start(queues)
    pause = round(8 * 3 / profile.master_messages, 3)  # about 8 s of work for 3 workers
    ledger.send("work", [f"sleep:{pause}|{n}" for n in range(profile.master_messages)])
    harness.wait_for(lambda: handled_count(ledger) >= profile.master_messages // 4, timeout=30,
                     what="a quarter of the messages handled")
    old_workers = {w.pid: daemon.seen[w.pid] for w in daemon.workers()}
    killed_at = time.time()
    daemon.kill_master()

    # PR_SET_PDEATHSIG: idle and polling workers go at once, a busy one after its message.
    harness.wait_for(lambda: not any(alive(p) for p in old_workers.values()), timeout=5,
                     what="every worker of the killed master to exit")
    gone_after = time.time() - killed_at
    late = [r for r in harness.records("start")
            if r["pid"] in old_workers and r["time"] > killed_at + 1.0]
    handled_before_restart = handled_count(ledger)

    restarted = harness.start(queues)
    ledger.wait_settled(timeout=profile.settle, queues=["work"], daemon=restarted)
    figures = report(**ledger.summary(), old_workers=len(old_workers),
                     workers_gone_after=round(gone_after, 2),
                     handled_before_restart=handled_before_restart,
                     started_after_master_died=len(late))
    assert figures["lost"] == 0
    assert not late, f"orphaned workers kept taking messages: {late[:3]}"
    assert_answers_sqsctl_ping(restarted)


def test_sigterm_finishes_running_handlers_and_gives_back_the_rest(harness, ledger, report,
                                                                   profile):
    # A long visibility timeout: only a give-back makes unstarted messages visible soon.
    queues = {"slow": {"receiver": CHAOS_RECEIVER, "processes": 2, "batch_size": 5}}
    defaults = {"visibility_timeout": 30, "graceful_timeout": 20}
    daemon = harness.start(queues, defaults=defaults)
    count = 20 if profile.name == "short" else 60
    ledger.send("slow", [f"sleep:1.0|{n}" for n in range(count)])
    harness.wait_for(lambda: len({r["pid"] for r in harness.records("start")}) >= 2,
                     timeout=15, what="both workers in a handler")
    code = daemon.terminate()
    stopped = time.monotonic()

    starts = Counter(r["key"] for r in harness.records("start"))
    ends = Counter(r["key"] for r in harness.records("end", outcome="ok"))
    cut_short = sorted(set(starts) - set(ends))
    handled = len(ends)

    def given_back() -> bool:
        attrs = harness.sqs.get_queue_attributes(
            QueueUrl=harness.queue_url("slow"),
            AttributeNames=["ApproximateNumberOfMessages",
                            "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return (int(attrs["ApproximateNumberOfMessages"]) == count - handled
                and int(attrs["ApproximateNumberOfMessagesNotVisible"]) == 0)

    harness.wait_for(given_back, timeout=5, what="every unhandled message visible again")
    given_back_after = time.monotonic() - stopped

    restarted = harness.start(queues, defaults=defaults)
    ledger.wait_settled(timeout=profile.settle, queues=["slow"], daemon=restarted)
    figures = report(**ledger.summary(), exit_code=code, in_flight_at_term=len(starts),
                     cut_short=len(cut_short), handled_before_restart=handled,
                     given_back_after=round(given_back_after, 2))
    assert code == 0
    assert not cut_short, f"handlers cut short by SIGTERM: {cut_short}"
    assert figures["lost"] == 0
    assert figures["duplicates"] == 0, "a graceful stop should not cause a duplicate"
    assert_answers_sqsctl_ping(restarted)


def test_repeated_hup_under_load_loses_nothing_and_never_doubles_a_worker(
        harness, ledger, report, profile):
    def config(flip: bool) -> dict:
        return {
            # A changed setting restarts these workers gracefully on every flip.
            "h1": {"receiver": CHAOS_RECEIVER, "processes": 2,
                   "max_messages": 1000 if flip else 0},
            # Resized on every flip: a second process comes and goes.
            "h2": {"receiver": CHAOS_RECEIVER, "processes": 2 if flip else 1},
            "h3": {"receiver": CHAOS_RECEIVER},  # unchanged: keeps its pid throughout
        }

    daemon = harness.start(config(False))
    steady_pid = next(iter(daemon.worker_pids("h3")))
    pause = round((profile.hup_seconds + 3) * 4 / profile.master_messages, 3)
    per_queue = profile.master_messages // 3
    for queue in ("h1", "h3"):
        ledger.send(queue, [f"sleep:{pause}|{queue}:{n}" for n in range(per_queue)])
    # h2's handlers take a second: a process retired by one flip is still finishing its
    # message when the next flip wants it back.
    ledger.send("h2", [f"sleep:1.0|h2:{n}" for n in range(int(profile.hup_seconds + 3) * 2)])

    rng = random.Random()
    hups = flips = 0
    flip = False
    most: Counter[str] = Counter()
    end = time.monotonic() + profile.hup_seconds
    while time.monotonic() < end:
        if rng.random() < 0.6:
            flip = not flip
            flips += 1
            tmp = harness.config_path.with_suffix(".new")
            harness.write_config(config(flip), path=tmp)
            os.replace(tmp, harness.config_path)  # never a half-written file
        daemon.proc.send_signal(signal.SIGHUP)  # HUPs may coalesce: that is fine
        hups += 1
        deadline = time.monotonic() + rng.uniform(0.1, 0.4)
        while time.monotonic() < deadline:  # watch the processes between HUPs
            for queue, n in Counter(w.queue for w in daemon.workers()).items():
                most[queue] = max(most[queue], n)
            time.sleep(0.02)

    # Last, deterministically: retire h2's second process while it is busy, and want it
    # back (a synchronous reload each) before it has finished its message.
    def apply(flip: bool) -> None:
        tmp = harness.config_path.with_suffix(".new")
        harness.write_config(config(flip), path=tmp)
        os.replace(tmp, harness.config_path)
        assert daemon.ctl("reload")["ok"]

    ledger.send("h2", [f"sleep:1.0|h2:last{n}" for n in range(6)])
    apply(True)
    daemon.wait_for(lambda: any(w["queue"] == "h2" and w["index"] == 1 and w["state"] == "busy"
                                for w in daemon.status()["workers"]),
                    what="h2's second worker in a handler (status lacks it when an earlier "
                         "reload wanted back a slot that was still stopping)")
    apply(False)
    apply(True)
    final = config(True)
    wanted = sum(q.get("processes", 1) for q in final.values())
    daemon.expected_workers = wanted

    def settled_workers() -> bool:
        if not all_workers_running(daemon):
            return False
        pids = {w["pid"] for w in daemon.status()["workers"]}
        return {w.pid for w in daemon.workers()} == pids and len(pids) == wanted

    ledger.wait_settled(timeout=profile.settle, queues=["h1", "h2", "h3"], daemon=daemon)
    daemon.wait_for(settled_workers, timeout=30,
                    what=f"exactly the {wanted} wanted workers, one process each")
    figures = report(**ledger.summary(), hups=hups, config_flips=flips + 3,
                     most_processes_seen=dict(most), wanted_at_end=wanted,
                     reload_failures=daemon.log_text().count("reload failed"))
    assert figures["lost"] == 0
    # A stopping worker and its replacement may overlap, never more.
    assert most["h1"] <= 2 * 2 and most["h2"] <= 2 * 2 and most["h3"] == 1
    assert daemon.worker_pids("h3") == {steady_pid}, "an unchanged queue's worker restarted"
    assert figures["reload_failures"] == 0
    assert_answers_sqsctl_ping(daemon)


def test_graceful_restarts_do_not_use_up_a_messages_retries(harness, ledger, report, profile):
    """The HUP storm above, made deterministic: each reload that changes a queue's settings
    restarts its worker gracefully, which gives back the unstarted rest of its batch. SQS
    counts the next receive of each, so restarts alone must not push a message past
    ``max_retries`` into the dead-letter path unhandled."""
    def config(generation: int) -> dict:
        return {"gen": {"receiver": CHAOS_RECEIVER, "max_retries": 2,
                        "max_messages": 1000 + generation}}

    daemon = harness.start(config(0))
    ledger.send("gen", [f"sleep:0.3|gen{n}" for n in range(10)])
    restarts = 4  # > max_retries + 1 receives for a message given back every time
    for generation in range(1, restarts + 1):
        daemon.wait_for(lambda: daemon.status()["workers"][0]["state"] == "busy"
                        or ledger.dropped(), what="the worker in a handler")
        tmp = harness.config_path.with_suffix(".new")
        harness.write_config(config(generation), path=tmp)
        os.replace(tmp, harness.config_path)
        assert daemon.ctl("reload")["ok"]
    try:
        ledger.wait_settled(timeout=profile.settle, queues=["gen"], daemon=daemon)
    finally:
        figures = report(**ledger.summary(), graceful_restarts=restarts,
                         dropped_unhandled=len(ledger.dropped()))
    assert figures["lost"] == 0
