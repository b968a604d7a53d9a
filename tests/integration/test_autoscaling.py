"""Autoscaling with a real ``sqsd run`` on moto: processes follow the backlog, within the
host budget, and every decision shows in status and in the log."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from conftest import REPO, child_env, log_events

from sqsd.control.render import render_status

BASIC = "tests.receivers.basic:handle"


def sqsctl(daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from sqsd.cli import sqsctl_main; sqsctl_main()",
         "--socket", str(daemon.socket_path), *args],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=30,
    )


def fill(harness, queue: str, count: int, command: str = "sleep:0.2") -> None:
    """``count`` messages with SendMessageBatch, no wake-up: a backlog to find."""
    url = harness.queue_url(queue)
    for start in range(0, count, 10):
        entries = [{"Id": str(i), "MessageBody": f"{command}|{queue}{start + i}"}
                   for i in range(min(10, count - start))]
        harness.sqs.send_message_batch(QueueUrl=url, Entries=entries)


def size(daemon, queue: str) -> dict:
    [entry] = [q for q in daemon.status()["queues"] if q["queue"] == queue]
    return entry


def decisions(daemon, queue: str) -> list[str]:
    return [f"{e['change']}: {e['reason']}"
            for e in log_events(daemon, "scaling decision", queue=queue)]


class WorkerCount(threading.Thread):
    """Watches the daemon's worker processes (stopping ones included) for the largest
    number alive at once, per queue and in all."""

    def __init__(self, daemon):
        super().__init__(daemon=True)
        self.watched = daemon
        self.most: dict[str, int] = {}
        self.most_in_all = 0
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.is_set():
            workers = self.watched.workers()
            self.most_in_all = max(self.most_in_all, len(workers))
            for queue in {w.queue for w in workers}:
                alive = sum(1 for w in workers if w.queue == queue)
                self.most[queue] = max(self.most.get(queue, 0), alive)
            time.sleep(0.02)

    def stop(self) -> WorkerCount:
        self.done.set()
        self.join()
        return self


def test_a_backlog_adds_workers_one_at_a_time_up_to_max_processes(harness):
    daemon = harness.start({"basic": {"receiver": BASIC, "max_processes": 3,
                                      "scale_up_interval": 0.5, "scale_down_after": 60}})
    assert (size(daemon, "basic")["processes"], size(daemon, "basic")["max_processes"]) == (1, 3)

    fill(harness, "basic", 120)

    daemon.wait_for(lambda: len(daemon.worker_pids("basic")) == 3, timeout=20,
                    what="3 workers for the backlog")
    assert decisions(daemon, "basic") == ["1→2: all busy, receives full",
                                          "2→3: all busy, receives full"]
    entry = size(daemon, "basic")
    assert (entry["processes"], entry["min_processes"], entry["pinned"]) == (3, 1, False)
    assert entry["last_scaling"]["text"] == "2→3: all busy, receives full"
    assert entry["scaling_decisions"] == 2
    table = render_status(daemon.status())
    assert "3 (1-3)" in table and "2→3: all busy, receives full" in table
    assert max(len(line) for line in table.splitlines()[-3:]) <= 100
    harness.wait_for(lambda: harness.depth("basic") == 0, timeout=30, what="the backlog drained")
    assert len({r["message_id"] for r in harness.records()}) == 120


def test_idle_workers_stop_gracefully_back_to_processes(harness):
    daemon = harness.start({"basic": {"receiver": BASIC, "max_processes": 3,
                                      "scale_up_interval": 0.3, "scale_down_after": 2}})
    fill(harness, "basic", 80)
    daemon.wait_for(lambda: len(daemon.worker_pids("basic")) >= 2, timeout=20,
                    what="more workers for the backlog")
    harness.wait_for(lambda: harness.depth("basic") == 0, timeout=40, what="the backlog drained")

    daemon.wait_for(lambda: size(daemon, "basic")["processes"] == 1
                    and len(daemon.worker_pids("basic")) == 1, timeout=20,
                    what="back to one worker")

    downs = [d for d in decisions(daemon, "basic") if "idle" in d]
    assert downs and all(" idle " in d for d in downs)
    # The last worker can be gone from the process list before the master logs its exit.
    exits = daemon.wait_for(
        lambda: len(found := log_events(daemon, "worker exited", queue="basic")) >= len(downs)
        and found, timeout=5, what="one exit logged per scale-down")
    assert len(exits) == len(downs)
    assert all(e["exit"].startswith("exited 0 (scaled ") and " idle " in e["exit"]
               for e in exits)
    records = harness.records()
    assert len(records) == 80 == len({r["message_id"] for r in records})  # each once


def test_the_budget_goes_to_the_higher_priority_queue_first(harness):
    autoscaled = {"receiver": BASIC, "max_processes": 3, "scale_up_interval": 0.3,
                  "scale_down_after": 60}
    daemon = harness.start({"low": autoscaled, "high": {**autoscaled, "priority": 5}},
                           max_workers=3)
    watch = WorkerCount(daemon)
    fill(harness, "low", 150)
    daemon.wait_for(lambda: size(daemon, "low")["processes"] == 2, timeout=20,
                    what="low to take the spare worker")

    fill(harness, "high", 100)

    daemon.wait_for(lambda: size(daemon, "high")["processes"] == 2
                    and len(daemon.worker_pids("high")) == 2, timeout=30,
                    what="high to take the worker back from low")
    time.sleep(2)  # no flapping back and forth
    counted = watch.stop()
    assert (size(daemon, "low")["processes"], size(daemon, "high")["processes"]) == (1, 2)
    assert counted.most_in_all <= 3
    assert decisions(daemon, "low") == ["1→2: all busy, receives full",
                                        "2→1: max_workers budget: for high (priority 5)"]
    assert decisions(daemon, "high") == ["1→2: all busy, receives full"]


def test_sqsctl_scale_pins_a_count_until_the_next_reload(harness):
    daemon = harness.start({"basic": {"receiver": BASIC, "max_processes": 3,
                                      "scale_down_after": 1}})

    pinned = sqsctl(daemon, "scale", "basic", "2")

    assert pinned.returncode == 0, pinned.stderr
    daemon.wait_for(lambda: len(daemon.worker_pids("basic")) == 2, what="two workers")
    time.sleep(4)  # idle well past scale_down_after: a pin is not autoscaled
    entry = size(daemon, "basic")
    assert (entry["processes"], entry["pinned"]) == (2, True)
    assert entry["last_scaling"]["text"] == "1→2: pinned by sqsctl scale"
    assert len(daemon.worker_pids("basic")) == 2
    assert "2 pinned" in render_status(daemon.status())

    assert sqsctl(daemon, "reload").returncode == 0

    assert size(daemon, "basic")["pinned"] is False
    daemon.wait_for(lambda: len(daemon.worker_pids("basic")) == 1, timeout=15,
                    what="the idle extra worker to be scaled down after the reload")


def test_a_reload_that_raises_max_processes_lets_a_backlog_scale_up(harness):
    queue = {"receiver": BASIC, "scale_up_interval": 0.3, "scale_down_after": 60}
    daemon = harness.start({"basic": queue})
    [first] = daemon.worker_pids("basic")
    fill(harness, "basic", 150)
    time.sleep(3)
    assert size(daemon, "basic")["processes"] == 1  # max_processes 0: not autoscaled
    harness.write_config({"basic": {**queue, "max_processes": 3}})

    daemon.proc.send_signal(signal.SIGHUP)

    daemon.wait_for(lambda: len(daemon.worker_pids("basic")) == 3, timeout=20,
                    what="3 workers once max_processes allows")
    assert first in daemon.worker_pids("basic")  # max_processes restarts no worker
    assert size(daemon, "basic")["max_processes"] == 3
    harness.write_config({"basic": {**queue, "max_processes": 2}})

    daemon.proc.send_signal(signal.SIGHUP)

    daemon.wait_for(lambda: len(daemon.worker_pids("basic")) == 2, timeout=20,
                    what="one worker stopped when max_processes went down to 2")
    assert size(daemon, "basic")["processes"] == 2


def test_minimums_above_max_workers_are_refused_at_start_and_at_reload(harness):
    queues = {"a": {"receiver": BASIC, "processes": 2}, "b": {"receiver": BASIC}}
    config = harness.write_config(queues, sqsd={"max_workers": 2})

    refused = harness.run_sqsd("run", "-c", str(config))

    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"sqsd: {config}: [sqsd] max_workers: expected 0 (no limit) or at least 3, "
        "the processes of every queue and suffix added up; got 2"]
    daemon = harness.start(queues, max_workers=3)
    harness.write_config(queues, sqsd={"max_workers": 2})

    reload = sqsctl(daemon, "reload")

    assert reload.returncode == 1 and "[sqsd] max_workers" in reload.stderr
    assert len(daemon.worker_pids()) == 3
