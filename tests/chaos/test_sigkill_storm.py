"""1. SIGKILL storm: messages over several queues and processes while a random worker is
SIGKILLed every few hundred milliseconds. Killed workers' messages reappear after the
visibility timeout and are handled again; the master restarts every worker (with crash
backoff) and nothing is lost."""

import random
import signal
import threading
import time

import psutil
import pytest

from chaos.conftest import (
    CHAOS_RECEIVER,
    PROFILE,
    all_workers_running,
    assert_answers_sqsctl_ping,
)

pytestmark = pytest.mark.timeout(PROFILE.timeout)

QUEUES = {
    "alpha": {"receiver": CHAOS_RECEIVER, "processes": 2},
    "beta": {"receiver": CHAOS_RECEIVER, "processes": 2},
    "gamma": {"receiver": CHAOS_RECEIVER, "suffixes": ["", "x"]},
}
TARGETS = [("alpha", ""), ("beta", ""), ("gamma", ""), ("gamma", "x")]


def test_sigkill_storm_loses_nothing(harness, ledger, report, profile):
    # max_retries high: being killed mid-batch raises receive counts, which is not poison.
    daemon = harness.start(QUEUES, defaults={"max_retries": 50})
    rng = random.Random()
    per_target = profile.storm_messages // len(TARGETS)
    # Handlers take long enough for the work to outlast the storm, so kills land in
    # handlers as well as in polls, deletes and start-up.
    pause = round(profile.storm_seconds * 0.8 * daemon.expected_workers
                  / profile.storm_messages, 3)
    bodies = {t: [f"sleep:{pause}|{t[0]}:{t[1]}:{n}" for n in range(per_target)]
              for t in TARGETS}
    half = per_target // 2
    for (queue, suffix), items in bodies.items():
        ledger.send(queue, items[:half], suffix=suffix)

    kills: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def storm() -> None:
        end = time.monotonic() + profile.storm_seconds
        while not stop.is_set() and time.monotonic() < end:
            # The worker's state from status (its process title does not show "busy").
            states = {w["pid"]: w["state"] for w in daemon.status()["workers"] if w.get("pid")}
            workers = [w for w in daemon.workers() if w.pid in states]
            if workers:
                victim = rng.choice(workers)
                try:
                    daemon.seen[victim.pid].send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:  # it died meanwhile: not a kill
                    pass
                else:
                    kills.append((time.monotonic(), victim.pid, states[victim.pid]))
            stop.wait(rng.uniform(0.15, 0.45))

    killer = threading.Thread(target=storm, name="storm")
    killer.start()
    try:
        # The second half arrives during the storm.
        for (queue, suffix), items in bodies.items():
            ledger.send(queue, items[half:], suffix=suffix)
    finally:
        killer.join()
        stop.set()
    storm_end = time.monotonic()

    ledger.wait_settled(timeout=profile.settle,
                        queues=[f"{q}:{s}" for q, s in TARGETS], daemon=daemon)
    settled = time.monotonic() - storm_end
    daemon.wait_for(lambda: all_workers_running(daemon), timeout=profile.settle,
                    what="every worker running again after the storm")
    figures = report(
        **ledger.summary(), kills=len(kills), storm_seconds=profile.storm_seconds,
        killed_while={s: sum(1 for k in kills if k[2] == s) for s in {k[2] for k in kills}},
        workers=daemon.expected_workers, settled_after_storm=round(settled, 1),
        restarts=sum(w["restarts"] for w in daemon.status()["workers"]),
    )
    assert figures["lost"] == 0
    assert not figures["dead_but_expected_handled"]
    assert len(kills) >= profile.storm_seconds / 0.6
    assert_answers_sqsctl_ping(daemon)
