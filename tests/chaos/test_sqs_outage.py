"""2. SQS outage: a loopback proxy between sqsd and the emulator answers 503s, throttles,
resets connections and stalls responses for several seconds while messages flow. Workers
back off (their calls during the outage are counted per process: no tight loop) and
recover on their own, with no restart and nothing lost."""

import math
import threading
import time
from collections import Counter

import pytest

from chaos.conftest import (
    CHAOS_RECEIVER,
    PROFILE,
    all_workers_running,
    assert_answers_sqsctl_ping,
    log_events,
)

pytestmark = pytest.mark.timeout(PROFILE.timeout)

QUEUES = {
    "north": {"receiver": CHAOS_RECEIVER, "processes": 2},
    "south": {"receiver": CHAOS_RECEIVER},
}
HOUSEKEEPING = {"DeleteMessageBatch", "ChangeMessageVisibilityBatch"}
ATTEMPTS = 3  # botocore's standard retry mode, as sqsd configures it


def backoff_bound(seconds: float) -> int:
    """Most requests one worker's main loop may make in ``seconds`` of failures.

    sqsd sleeps at least 0.5, 1, 2, 4 ... s (half of 1, 2, 4 ... with jitter) between
    failed calls, and botocore makes up to three attempts per call: k calls need
    0.5 * (2**(k-1) - 1) s, so k <= 1 + log2(1 + 2 * seconds); one more for the call in
    progress when the failures began. A success (a stalled response, a lucky request in
    the mixed phase) starts the backoff afresh, so each phase gets its own bound.
    """
    return ATTEMPTS * (2 + math.floor(math.log2(1 + 2 * seconds)))


def test_sqs_outage_workers_back_off_and_recover(harness, ledger, report, profile,
                                                  fault_proxy):
    proxy = fault_proxy(stall_seconds=profile.stall_seconds)
    daemon = harness.start(QUEUES, endpoint_url=proxy.url, defaults={"max_retries": 50})
    proxy.candidates = lambda: [p.pid for p in daemon.descendants()]
    third = profile.outage_messages // 3
    # Handlers take long enough for the load to outlast the outage.
    outage = sum(seconds for _, seconds in profile.outage_phases)
    pause = round((outage + 3) * 3 / profile.outage_messages, 3)
    names = [f"sleep:{pause}|{n}" for n in range(profile.outage_messages)]
    ledger.send("north", names[:third])
    ledger.send("south", names[third:2 * third])
    harness.wait_for(lambda: sum(ledger.handled().values()) >= third // 2, timeout=30,
                     what="messages flowing before the outage")

    # More arrive during the outage, straight into the emulator.
    sender = threading.Thread(target=ledger.send, args=("north", names[2 * third:]))
    states: Counter[str] = Counter()
    started = time.monotonic()
    sender.start()
    for mode, seconds in profile.outage_phases:
        proxy.set_mode(mode)
        phase_end = time.monotonic() + seconds
        while time.monotonic() < phase_end:  # sample worker states, paced
            for w in daemon.status()["workers"]:
                states[w["state"]] += 1
            time.sleep(0.2)
    proxy.set_mode("pass")
    ended = time.monotonic()
    sender.join()

    ledger.wait_settled(timeout=profile.settle, queues=["north", "south"], daemon=daemon)
    recovered = time.monotonic() - ended
    assert all_workers_running(daemon)

    calls = proxy.calls_between(started, ended)
    backoffs = Counter(e.get("queue") for e in log_events(daemon, "SQS call failed; backing off"))
    workers = {p["pid"] for p in daemon.status()["workers"]}
    # Status requests fork short-lived depth queries that call SQS too: not workers.
    by_pid: Counter = Counter(c.pid for c in calls
                              if c.pid in workers and c.action not in HOUSEKEEPING)
    housekeeping: Counter = Counter(c.pid for c in calls
                                    if c.pid in workers and c.action in HOUSEKEEPING)
    others = Counter(f"{c.pid}:{c.action}" for c in calls if c.pid not in workers)
    bound = sum(backoff_bound(seconds) for _, seconds in profile.outage_phases)
    figures = report(
        **ledger.summary(), outage_seconds=outage, phases=dict(profile.outage_phases),
        requests_during_outage=len(calls),
        faults=dict(Counter(c.fault for c in calls)),
        actions=dict(Counter(c.action for c in calls)),
        main_loop_requests_per_worker={str(k): v for k, v in by_pid.items()},
        housekeeping_requests_per_worker={str(k): v for k, v in housekeeping.items()},
        other_processes_requests=dict(others), bound_per_worker=bound, states_sampled=dict(states),
        recovered_after=round(recovered, 1),
        restarts=sum(w["restarts"] for w in daemon.status()["workers"]),
    )
    assert figures["lost"] == 0
    assert by_pid, "no worker request was attributed to its process"
    assert max(by_pid.values()) <= bound, f"a worker did not back off: {by_pid} > {bound}"
    assert backoffs, "no worker backed off"
    assert figures["restarts"] == 0, "the outage cost a worker its life"
    assert_answers_sqsctl_ping(daemon)
