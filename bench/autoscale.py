"""Scenario 10, autoscale: a burst drained by ``processes = 1 … max_processes = 8`` beside
fixed 1 and fixed 8, the API calls it costs, the way back to ``processes`` after the burst,
and a steady load at half of one worker's capacity (no flapping).

``python bench/run.py --only autoscale [--quick]``; its method note is ``METHOD``.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from bench.daemon import Daemon
from bench.queues import DepthWatch, fill
from bench.report import Row
from bench.scenarios import COMPRESSION, Bench, drain_raw, first_events
from tests.support.proxy import SQSProxy

HANDLER = 0.05  # seconds: bench.receivers:work50
MAX = 8
SCALE_DOWN_AFTER = 60.0  # the default, real time: the target is stated in it
# Idle figures are time-compressed like scenario 3: polls of 20 s and sleeps of up to 60 s
# become 1 s and 3 s, so an idle queue-hour is COMPRESSION times shorter.
IDLE = {"wait_time_seconds": 20 // COMPRESSION, "idle_sleep_max": 60 / COMPRESSION}
STEADY_COMPRESSION = 5  # --quick: the steady load's scaling timers run 5× faster
SCENARIO = "10 autoscale"  # after 9 peers in bench/run.py's list


@dataclass
class Burst:
    """One drain of the burst: its time from the first message handled to the queue empty,
    the API calls the daemon made meanwhile and how its process count went."""

    label: str
    seconds: float
    calls: dict[str, int]
    messages: int
    top: int  # most processes reached
    ramp: float | None  # seconds from the first message to ``top`` processes

    @property
    def calls_per_message(self) -> float:
        return sum(self.calls.values()) / self.messages


def autoscale(bench: Bench) -> list[Row]:
    """Scenario 10: see METHOD."""
    n = 2000 if bench.quick else 5000
    if not bench.can_proxy:
        raise RuntimeError("the autoscale scenario counts calls through the proxy: http:// only")
    # The emulator gets up to twice as fast once warm (its JIT): one untimed drain first.
    drain_raw(bench, ["as_warmup"], 2, n)
    with SQSProxy(bench.endpoint_url or "") as proxy:
        fixed1 = burst(bench, proxy, "fixed 1", n, {"processes": 1})
        fixed8 = burst(bench, proxy, "fixed 8", n, {"processes": MAX})
        auto, back, idle = burst(bench, proxy, "autoscaled", n, {"max_processes": MAX}, after=True)
        steady = steady_load(bench, proxy)
    per_hour = 3600 / (COMPRESSION * statistics.fmean(idle)) if idle else float("nan")
    label = f"burst {n:,} × 50 ms"
    return [
        Row(SCENARIO, f"{label}: fixed 1 process (s)", fixed1.seconds, None, "s", "",
            drain_details(fixed1)),
        Row(SCENARIO, f"{label}: fixed {MAX} processes (s)", fixed8.seconds, None, "s", "",
            drain_details(fixed8)),
        Row(SCENARIO, f"{label}: 1…{MAX} autoscaled (s)", auto.seconds, None, "s", "",
            drain_details(auto)),
        Row(SCENARIO, "autoscaled: speed-up over fixed 1", fixed1.seconds / auto.seconds,
            None, "×", "≥ 5"),
        Row(SCENARIO, f"autoscaled: time / fixed {MAX}", auto.seconds / fixed8.seconds,
            None, "×", "≤ 1.3"),
        Row(SCENARIO, "autoscaled: API calls/message", auto.calls_per_message,
            fixed8.calls_per_message, "", "≤ 0.22",
            {"autoscaled": auto.calls, f"fixed {MAX}": fixed8.calls, "messages": n}),
        Row(SCENARIO, "back to processes after the burst (s)", back, None, "s",
            f"≤ {SCALE_DOWN_AFTER + 10:.0f}"),
        Row(SCENARIO, "then idle: receives/queue-hour", per_hour, None, "", "≤ 45",
            {"gaps_s": idle, "compression": COMPRESSION}),
        Row(SCENARIO, "steady 50 %: decisions per 10 min", steady["per_10_min"], None, "",
            "≤ 2", steady),
        Row(SCENARIO, "steady 50 %: mean processes", steady["mean_processes"], None),
    ]


def burst(
    bench: Bench, proxy: SQSProxy, label: str, n: int, options: dict[str, Any], after=False
) -> Any:
    """Pre-fill ``n`` messages, start sqsd behind the proxy, time the drain; with ``after``
    also wait until it is back to ``processes`` and measure its idle receives then."""
    name = f"as_{label.split()[0]}{n}"
    url = bench.queues.create(name)
    fill(bench.client, url, n)
    watch = DepthWatch(bench.client, {url: n})
    queue = {"receiver": "bench.receivers:work50", **options}
    daemon = bench.daemon({name: queue}, defaults=IDLE, endpoint_url=proxy.url)
    bench.events.clear()
    counts = Counts(daemon, name)
    try:
        launched = time.monotonic()
        daemon.launch()
        counts.start()
        empty_at = watch.wait_empty()
        ended = time.monotonic()
        firsts = [e["at"] for e in first_events(bench)]
        start = min(firsts)
        result = Burst(
            label,
            empty_at - start,
            dict(proxy.counts(launched, ended)),
            n,
            counts.top,
            counts.top_at - start if counts.top_at else None,
        )
        if not after:
            return result
        back = wait_back(daemon, name, time.time())
        idle = idle_gaps(proxy, bench.queues.prefix + name, bench.quick)
        return result, back - empty_at, idle
    finally:
        counts.stop()
        daemon.stop()


class Counts(threading.Thread):
    """Polls status (no SQS call) every 0.2 s for the most processes a queue reached."""

    def __init__(self, daemon: Daemon, queue: str):
        super().__init__(daemon=True)
        self.target, self.queue = daemon, queue
        self.top, self.top_at = 0, 0.0
        self.samples: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            try:
                count = processes(self.target, self.queue)
            except Exception:  # not listening yet
                continue
            self.samples.append(count)
            if count > self.top:
                self.top, self.top_at = count, time.time()

    def stop(self) -> None:
        self.done.set()
        if self.is_alive():
            self.join()


def processes(daemon: Daemon, queue: str) -> int:
    [entry] = [q for q in daemon.status()["queues"] if q["queue"] == queue]
    return entry["processes"]


def wait_back(daemon: Daemon, queue: str, since: float, timeout: float = 300.0) -> float:
    """Wall time at which the queue is back to one process, its extra workers gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = daemon.status()
        alive = [w for w in status["workers"] if w["queue"] == queue and w.get("pid")]
        if processes(daemon, queue) == 1 and len(alive) == 1:
            return time.time()
        time.sleep(0.5)
    raise TimeoutError(f"{queue} not back to 1 process {timeout:g}s after the burst")


def idle_gaps(proxy: SQSProxy, url_name: str, quick: bool) -> list[float]:
    """Seconds between the idle receives of the one worker left, after its backoff settled."""
    settle, window = 10.0, 40.0 if quick else 90.0
    time.sleep(settle + window)
    cutoff = time.monotonic() - window
    times = [t for t in proxy.receive_times(url_name) if t >= cutoff]
    return [b - a for a, b in zip(times[:-1], times[1:], strict=True)]


def steady_load(bench: Bench, proxy: SQSProxy) -> dict[str, Any]:
    """Poisson arrivals at half of one worker's capacity (10 msg/s for a 50 ms handler);
    decisions counted from status over 10 minutes, or 2 minutes with timers ÷5 (--quick)."""
    factor = STEADY_COMPRESSION if bench.quick else 1
    seconds = 600 / factor
    rate = 0.5 / HANDLER
    name = f"as_steady{factor}"
    url = bench.queues.create(name)
    queue = {
        "receiver": "bench.receivers:work50",
        "max_processes": MAX,
        "scale_up_interval": 2.0 / factor,
        "scale_down_after": SCALE_DOWN_AFTER / factor,
        "wait_time_seconds": max(1, 20 // factor),
        "idle_sleep_max": 60.0 / factor,
    }
    stop = threading.Event()
    sent = [0]

    def produce() -> None:
        pace = random.Random(1)
        due = time.monotonic()
        while not stop.is_set():
            due += pace.expovariate(rate)
            stop.wait(max(0.0, due - time.monotonic()))
            bench.client.send_message(QueueUrl=url, MessageBody="x")
            sent[0] += 1

    with ExitStack() as stack:
        daemon = stack.enter_context(bench.daemon({name: queue}, endpoint_url=proxy.url))
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        stack.callback(producer.join)
        stack.callback(stop.set)
        counts = Counts(daemon, name)
        counts.start()
        stack.callback(counts.stop)
        time.sleep(seconds)
        [entry] = [q for q in daemon.status()["queues"] if q["queue"] == name]
    decisions = entry["scaling_decisions"]
    return {
        "per_10_min": decisions * 600 / (seconds * factor),
        "decisions": decisions,
        "last": entry["last_scaling"],
        "mean_processes": statistics.fmean(counts.samples) if counts.samples else float("nan"),
        "seconds": seconds,
        "timers_compressed": factor,
        "messages_sent": sent[0],
        "rate_per_s": rate,
    }


def drain_details(drain: Burst) -> dict[str, Any]:
    return {
        "seconds": drain.seconds,
        "messages": drain.messages,
        "calls": drain.calls,
        "calls_per_message": drain.calls_per_message,
        "most_processes": drain.top,
        "seconds_to_most_processes": drain.ramp,
    }


METHOD = (
    "After one untimed drain that warms the emulator up (as in scenario 1), burst: "
    "pre-fill N messages (5,000; 2,000 with --quick) with SendMessageBatch, start "
    "`sqsd run` behind the counting proxy with the 50 ms handler (bench.receivers:work50): "
    f"fixed processes = 1, fixed processes = {MAX}, and processes = 1 with max_processes = "
    f"{MAX} (scale_up_interval 2 s, scale_down_after 60 s: the defaults). The time runs from "
    "the first message any worker handled (each worker reports its first over the event "
    "socket) to the queue seen empty (GetQueueAttributes every 25 ms, straight to the "
    "endpoint). API calls: every call the daemon made from its start until the queue was "
    "empty, start-up included. Back to processes: from the queue seen empty until status "
    "shows one process and one worker alive. Idle receives: then, after 10 s for the backoff "
    f"to settle, the mean gap between ReceiveMessage calls over 90 s (40 s), with wait 1 s "
    f"and idle_sleep_max 3 s (defaults ÷ {COMPRESSION}, as in scenario 3): receives/hour = "
    f"3600 / ({COMPRESSION} × gap). Steady: Poisson arrivals of 10 msg/s (half of one "
    "50 ms worker), SendMessage from the bench, processes 1, max_processes 8; scaling "
    "decisions from status (`scaling_decisions`) over 10 minutes in real time; with --quick "
    f"over 2 minutes with the scaling timers (scale_up_interval, scale_down_after, wait, "
    f"idle sleep) ÷ {STEADY_COMPRESSION}, which gives scale-down as many chances as in 10 "
    "minutes but evaluates the policy only about 120 times (once a second), against 600."
)
