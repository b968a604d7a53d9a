"""The eight benchmark scenarios. Each takes the run's ``Bench`` and returns its rows.

Every scenario uses its own freshly created queues and its own daemon, and stops that
daemon before it returns. ``METHODS`` says in one paragraph how each figure is measured.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

import sqsd_client
from bench.baseline import RawLoops
from bench.daemon import Daemon
from bench.echo import EchoServer
from bench.events import EventSink
from bench.queues import DepthWatch, Queues, fill, wait_empty
from bench.report import Row, percentile, spread
from tests.support.proxy import SQSProxy

MIB = 1024 * 1024
COMPRESSION = 20  # idle scenario: wait_time_seconds 20 -> 1, idle_sleep_max divided alike


@dataclass
class Bench:
    """What every scenario shares: the endpoint, the run's queues, a work directory."""

    endpoint_url: str | None  # None = AWS itself
    region: str
    client: Any  # boto3 SQS client straight to the endpoint (never through the proxy)
    queues: Queues
    workdir: Path
    events: EventSink
    quick: bool
    daemons: int = 0

    @property
    def messages(self) -> int:
        """Messages per throughput run."""
        return 3000 if self.quick else 5000

    @property
    def can_proxy(self) -> bool:
        """Whether the counting proxy can sit in front of the endpoint (plain HTTP only)."""
        return bool(self.endpoint_url) and self.endpoint_url.startswith("http://")

    def counting_proxy(self, stack: ExitStack) -> SQSProxy | None:
        """A counting proxy in front of the endpoint, closed with ``stack``; None over HTTPS."""
        if not self.can_proxy:
            return None
        return stack.enter_context(SQSProxy(self.endpoint_url or ""))

    def daemon(
        self,
        queues: dict[str, dict[str, Any]],
        defaults: dict[str, Any] | None = None,
        endpoint_url: str | None = None,
    ) -> Daemon:
        """A daemon (not started yet) for ``queues``, all of which are created first."""
        for name in queues:
            self.queues.create(name)
        self.daemons += 1
        return Daemon(
            self.workdir / f"daemon{self.daemons}",
            queues=queues,
            prefix=self.queues.prefix,
            endpoint_url=endpoint_url or self.endpoint_url,
            region=self.region,
            defaults=defaults,
            env={"SQSD_BENCH_EVENTS": str(self.events.path)},
        )


def count_of(worker: dict[str, Any], *names: str) -> int:
    """A counter from a status worker entry, looked up under ``api``, ``counters`` or top."""
    for place in (worker.get("api") or {}, worker.get("counters") or {}, worker):
        for name in names:
            if name in place:
                return int(place[name])
    return 0


def fill_split(bench: Bench, urls: list[str], count: int) -> dict[str, int]:
    """Spread ``count`` messages evenly over the queues; returns how many each got."""
    counts = {}
    for i, url in enumerate(urls):
        counts[url] = count // len(urls) + (1 if i < count % len(urls) else 0)
        fill(bench.client, url, counts[url])
    return counts


# --- 1. throughput and 8. handler with work ---------------------------------------------


@dataclass
class Drain:
    """One timed drain: the messages handled while every consumer was running."""

    messages: float
    seconds: float
    consumers: int  # consumer processes that handled at least one message
    processed: int | None = None  # messages handled in all, as a cross-check
    cpu: float | None = None  # consumer CPU seconds from each one's first message to empty
    ended: float = 0.0  # time.monotonic() when the queues were seen empty

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_per_message(self) -> float | None:
        """Consumer CPU microseconds per message handled."""
        if self.cpu is None or not self.processed:
            return None
        return 1e6 * self.cpu / self.processed


def first_events(bench: Bench) -> list[dict[str, Any]]:
    """The "first message" events of the consumers started since the last clear."""
    return [e for e in bench.events.drain() if e.get("kind") == "first"]


def timed_drain(bench: Bench, watch: DepthWatch, empty_at: float, **extra: Any) -> Drain:
    """The drain from the moment the last consumer handled its first message to empty.

    Starting the clock only when every consumer runs leaves out start-up skew (forking
    workers, importing boto3 in raw loop processes); the messages counted are those
    left in the queues at that moment.
    """
    firsts = [e["at"] for e in first_events(bench)]
    if not firsts:
        raise RuntimeError("no consumer reported its first message")
    start = max(firsts)
    return Drain(watch.remaining_at(start), empty_at - start, len(firsts), **extra)


def worker_cpu(bench: Bench) -> float:
    """CPU seconds the reporting sqsd workers used since their first message."""
    used = 0.0
    for event in first_events(bench):
        times = psutil.Process(event["pid"]).cpu_times()
        used += times.user + times.system - event["cpu"]
    return used


def drain_sqsd(
    bench: Bench,
    names: list[str],
    processes: int,
    count: int,
    receiver: str = "noop",
    endpoint_url: str | None = None,
) -> Drain:
    """Pre-fill, start sqsd, and time the drain (see ``timed_drain``)."""
    urls = [bench.queues.create(name) for name in names]
    watch = DepthWatch(bench.client, fill_split(bench, urls, count))
    options = {"receiver": f"bench.receivers:{receiver}", "processes": processes}
    daemon = bench.daemon({name: options for name in names}, endpoint_url=endpoint_url)
    bench.events.clear()
    try:
        daemon.launch()
        empty_at = watch.wait_empty()
        ended = time.monotonic()
        cpu = worker_cpu(bench)
        processed = sum(count_of(w, "processed") for w in daemon.workers())
    finally:
        daemon.stop()
    return timed_drain(bench, watch, empty_at, processed=processed, cpu=cpu, ended=ended)


def drain_raw(
    bench: Bench,
    names: list[str],
    processes: int,
    count: int,
    work: float = 0.0,
    endpoint_url: str | None = None,
) -> tuple[Drain, dict[str, int]]:
    """The same drain with raw boto3 loops; also returns the loops' calls by action."""
    urls = [bench.queues.create(name) for name in names]
    watch = DepthWatch(bench.client, fill_split(bench, urls, count))
    loops = RawLoops(
        urls,
        processes,
        endpoint_url or bench.endpoint_url,
        bench.region,
        work,
        events=str(bench.events.path),
    )
    bench.events.clear()
    loops.start()
    try:
        empty_at = watch.wait_empty()
    except BaseException:
        loops.kill()
        raise
    ended = time.monotonic()
    result = loops.finish()
    drain = timed_drain(
        bench, watch, empty_at, processed=result.messages, cpu=result.cpu, ended=ended
    )
    return drain, dict(result.calls)


def throughput(bench: Bench) -> list[Row]:
    """Scenario 1: no-op handler, one worker, then 2 and 4 processes, then 8 queues.

    After one untimed drain to warm the endpoint up, each shape runs three times, sqsd and
    raw taking turns to go first, and the medians are reported (with --quick only the
    one-worker shape, the one with a target, is repeated).
    """
    n = bench.messages
    shapes = [
        ("1 worker", 1, 1),
        ("2 processes, 1 queue", 1, 2),
        ("4 processes, 1 queue", 1, 4),
        ("8 queues × 1 process", 8, 1),
    ]
    # The emulator gets faster as its JIT warms up: one untimed drain first.
    drain_raw(bench, ["tp_warmup"], 2, n)
    rows = []
    for label, queue_count, processes in shapes:
        repeats = 1 if bench.quick and label != "1 worker" else 3
        ours: list[Drain] = []
        raw: list[Drain] = []
        for r in range(repeats):
            tag = f"{queue_count}q{processes}p{r}"
            sqsd_names = [f"tp_{tag}_{i}" for i in range(queue_count)]
            raw_names = [f"tpraw_{tag}_{i}" for i in range(queue_count)]
            if r % 2:  # alternate which goes first
                raw.append(drain_raw(bench, raw_names, processes, n)[0])
                ours.append(drain_sqsd(bench, sqsd_names, processes, n))
            else:
                ours.append(drain_sqsd(bench, sqsd_names, processes, n))
                raw.append(drain_raw(bench, raw_names, processes, n)[0])
        rows.append(
            Row(
                "1 throughput",
                f"{label}: msg/s",
                statistics.median(d.rate for d in ours),
                statistics.median(d.rate for d in raw),
                "msg/s",
                "≥ 0.9× raw" if label == "1 worker" else "",
                {
                    "messages_filled": n,
                    "sqsd": [drain_figures(d) for d in ours],
                    "raw": [drain_figures(d) for d in raw],
                },
            )
        )
        rows.append(
            Row(
                "1 throughput",
                f"{label}: consumer CPU/msg",
                statistics.median(d.cpu_per_message or 0 for d in ours),
                statistics.median(d.cpu_per_message or 0 for d in raw),
                "µs",
            )
        )
    return rows


def drain_figures(drain: Drain) -> dict[str, float | int | None]:
    """A drain's figures for the JSON details."""
    return {
        "rate": drain.rate,
        "messages_timed": drain.messages,
        "seconds": drain.seconds,
        "consumers": drain.consumers,
        "processed": drain.processed,
        "cpu_us_per_message": drain.cpu_per_message,
    }


def work50(bench: Bench) -> list[Row]:
    """Scenario 8: a 50 ms handler with 4 processes against the ideal 4 / 0.05 s = 80/s."""
    n = 200 if bench.quick else 400
    ideal = 4 / 0.05
    ours = drain_sqsd(bench, ["work"], 4, n, receiver="work50")
    raw, _ = drain_raw(bench, ["workraw"], 4, n, work=0.05)
    details = {
        "messages": n,
        "ideal": ideal,
        "sqsd": drain_figures(ours),
        "raw": drain_figures(raw),
    }
    return [
        Row(
            "8 50 ms handler",
            "4 processes: msg/s",
            ours.rate,
            raw.rate,
            "msg/s",
            f"ideal {ideal:.0f}",
            details,
        ),
        Row(
            "8 50 ms handler",
            "share of ideal",
            100 * ours.rate / ideal,
            100 * raw.rate / ideal,
            "%",
            "100",
        ),
    ]


# --- 2. API cost at saturation ----------------------------------------------------------


def api_cost(bench: Bench) -> list[Row]:
    """Scenario 2: SQS calls per message by type while one worker drains a full queue."""
    n = bench.messages
    if not bench.can_proxy:
        return api_cost_from_counters(bench, n)
    with SQSProxy(bench.endpoint_url or "") as proxy:
        # Count from the start until the queue is seen empty: later calls (the status
        # call of drain_sqsd, the loops' final empty receive) are left out on both sides.
        since = time.monotonic()
        drain = drain_sqsd(bench, ["api"], 1, n, endpoint_url=proxy.url)
        ours = proxy.counts(since, drain.ended)
        ours_empty = proxy.empty_receives(since, drain.ended)
        since = time.monotonic()
        drain, _ = drain_raw(bench, ["apiraw"], 1, n, endpoint_url=proxy.url)
        raw = proxy.counts(since, drain.ended)
    rows = [
        Row(
            "2 API cost",
            "calls/message (all)",
            sum(ours.values()) / n,
            sum(raw.values()) / n,
            "",
            "≤ 0.21",
            {
                "sqsd": dict(ours),
                "raw": dict(raw),
                "messages": n,
                "sqsd_empty_receives": ours_empty,
            },
        ),
    ]
    for action in sorted(set(ours) | set(raw)):
        rows.append(Row("2 API cost", f"{action}/message", ours[action] / n, raw[action] / n))
    return rows


def api_cost_from_counters(bench: Bench, n: int) -> list[Row]:
    """Scenario 2 without the proxy (HTTPS endpoints): sqsd's own counters from status."""
    url = bench.queues.create("api")
    fill(bench.client, url, n)
    daemon = bench.daemon({"api": {"receiver": "bench.receivers:noop"}})
    try:
        daemon.launch()
        wait_empty(bench.client, [url])
        workers = daemon.workers()
    finally:
        daemon.stop()
    ours = {
        "ReceiveMessage": sum(count_of(w, "receive", "receives") for w in workers),
        "DeleteMessage(Batch)": sum(count_of(w, "delete", "deletes") for w in workers),
        "ChangeMessageVisibility": sum(
            count_of(w, "change_visibility", "visibility_changes") for w in workers
        ),
    }
    _, raw = drain_raw(bench, ["apiraw"], 1, n)
    raw_named = {
        "ReceiveMessage": raw.get("ReceiveMessage", 0),
        "DeleteMessage(Batch)": raw.get("DeleteMessageBatch", 0),
    }
    rows = [
        Row(
            "2 API cost",
            "calls/message (all, sqsd counters)",
            sum(ours.values()) / n,
            sum(raw.values()) / n,
            "",
            "≤ 0.21",
            {"sqsd": ours, "raw": raw},
        )
    ]
    for action, value in ours.items():
        rows.append(Row("2 API cost", f"{action}/message", value / n, raw_named.get(action, 0) / n))
    return rows


# --- 3. idle cost -----------------------------------------------------------------------


IDLE_CASES = [  # label, real idle_sleep_max, target
    ("defaults (idle_sleep_max 60)", 60, "≤ 45"),
    ("idle_sleep_max 600", 600, "≤ 6"),
    ("idle_sleep_max 0 (plain long polling)", 0, "180"),
]


def idle_cost(bench: Bench) -> list[Row]:
    """Scenario 3: ReceiveMessage calls per idle queue per hour, time-compressed 20×."""
    total = 75.0 if bench.quick else 150.0
    warmup = total / 3
    per_case = 4
    queues: dict[str, dict[str, Any]] = {}
    for case, (_, sleep_max, _) in enumerate(IDLE_CASES):
        for i in range(per_case):
            queues[f"idle{case}_{i}"] = {
                "receiver": "bench.receivers:noop",
                "wait_time_seconds": 20 // COMPRESSION,
                "idle_sleep_max": sleep_max / COMPRESSION,
            }
    with ExitStack() as stack:
        proxy = bench.counting_proxy(stack)
        daemon = stack.enter_context(
            bench.daemon(queues, endpoint_url=proxy.url if proxy else None)
        )
        started = time.monotonic()
        time.sleep(warmup)
        before = {w["pid"]: w for w in daemon.workers()}
        time.sleep(total - warmup)
        after = daemon.workers()
    rows = []
    for case, (label, _, target) in enumerate(IDLE_CASES):
        names = [f"idle{case}_{i}" for i in range(per_case)]
        if proxy:
            gaps = []
            for name in names:
                times = proxy.receive_times(bench.queues.prefix + name)
                gaps += [
                    b - a for a, b in zip(times, times[1:], strict=False) if a >= started + warmup
                ]
            per_hour = 3600 / (COMPRESSION * statistics.fmean(gaps)) if gaps else float("nan")
            details = {"gaps_s": gaps, "method": "mean gap between receives after warm-up"}
        else:
            window = total - warmup
            receives = [
                count_of(w, "receive", "receives")
                - count_of(before.get(w["pid"], {}), "receive", "receives")
                for w in after
                if w.get("queue") in names
            ]
            per_hour = statistics.fmean(receives) / window * 3600 / COMPRESSION
            details = {"receives": receives, "window_s": window, "method": "status counters"}
        rows.append(
            Row("3 idle cost", f"{label}: receives/queue-hour", per_hour, None, "", target, details)
        )
    return rows


# --- 4. latency ---------------------------------------------------------------------------


@dataclass
class Delivery:
    """One latency sample: wall times before SendMessage, after it, and at handler start."""

    sent: float
    enqueued: float
    started: float = 0.0

    @property
    def latency_ms(self) -> float:
        """Enqueued (SendMessage returned) → handler start."""
        return 1000 * (self.started - self.enqueued)

    @property
    def with_send_ms(self) -> float:
        """Before SendMessage → handler start: what the producer's caller sees."""
        return 1000 * (self.started - self.sent)


def send_stamped(bench: Bench, url: str, seq: int) -> Delivery:
    """Send one message whose body carries its sequence number and send time."""
    sent = time.time()
    bench.client.send_message(QueueUrl=url, MessageBody=json.dumps({"seq": seq, "sent": sent}))
    return Delivery(sent, time.time())


def await_handler(bench: Bench, seq: int, delivery: Delivery, timeout: float = 90.0) -> Delivery:
    """Wait for the handler's report on message ``seq`` and record its start time."""
    event = bench.events.wait_for(
        lambda e: e.get("kind") == "latency" and e.get("seq") == seq, timeout
    )
    if event is None:
        raise TimeoutError(f"message {seq} not handled within {timeout:g}s")
    delivery.started = event["started"]
    return delivery


def wait_state(daemon: Daemon, queue: str, states: set[str], timeout: float = 60.0) -> None:
    """Poll status every 20 ms until the worker of ``queue`` is in one of ``states``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(w.get("queue") == queue and w.get("state") in states for w in daemon.workers()):
            return
        time.sleep(0.02)
    raise TimeoutError(f"worker of {queue} not {states} within {timeout:g}s")


def latency(bench: Bench) -> list[Row]:
    """Scenario 4: enqueue → handler start, polling, backed off + woken, backed off alone.

    The raw column of (a) is a raw boto3 loop long-polling the same way.
    """
    samples = 50
    backed_off = {
        "receiver": "bench.receivers:latency",
        "wait_time_seconds": 1,
        "idle_sleep_max": 3,
    }
    queues = {"lat_poll": {"receiver": "bench.receivers:latency", "idle_sleep_max": 0}}
    queues |= {f"lat_wake_{i}": backed_off for i in range(5)}
    queues |= {f"lat_sleep_{i}": backed_off for i in range(5)}
    results: dict[str, list[Delivery]] = {}
    sequence = iter(range(1, 1_000_000))

    def one_by_one(url: str) -> list[Delivery]:
        done = []
        for _ in range(samples):
            seq = next(sequence)
            done.append(await_handler(bench, seq, send_stamped(bench, url, seq)))
            time.sleep(random.uniform(0.01, 0.05))
        return done

    def backed_off_workers(daemon: Daemon, names: list[str], wake: bool) -> list[Delivery]:
        done: list[Delivery] = []
        while len(done) < samples:
            pending = []
            for name in names:
                wait_state(daemon, name, {"idle"})
                seq = next(sequence)
                delivery = send_stamped(bench, bench.queues.urls[name], seq)
                if wake:
                    sqsd_client.wake(name, socket_path=daemon.socket_path)
                    done.append(await_handler(bench, seq, delivery))
                else:
                    pending.append((seq, delivery))
            done += [await_handler(bench, seq, delivery) for seq, delivery in pending]
        return done[:samples]

    raw_url = bench.queues.create("lat_raw")
    loop = RawLoops(
        [raw_url], 1, bench.endpoint_url, bench.region, events=str(bench.events.path), listen=True
    )
    loop.start()
    try:
        seq = next(sequence)  # the first waits for the loop to import boto3
        await_handler(bench, seq, send_stamped(bench, raw_url, seq))
        raw = one_by_one(raw_url)
    finally:
        loop.kill()

    with bench.daemon(queues) as daemon:
        results["(a) long-polling"] = one_by_one(bench.queues.urls["lat_poll"])
        wakers = [f"lat_wake_{i}" for i in range(5)]
        sleepers = [f"lat_sleep_{i}" for i in range(5)]
        results["(b) backed off, woken"] = backed_off_workers(daemon, wakers, wake=True)
        results["(c) backed off, no wake"] = backed_off_workers(daemon, sleepers, wake=False)

    raw_figures = spread([d.latency_ms for d in raw])
    rows = []
    for label, deliveries in results.items():
        figures = spread([d.latency_ms for d in deliveries])
        polling = label.startswith("(a)")
        targets = {"p50": "≤ 5", "p99": "≤ 20"} if "woken" in label else {}
        for stat in ("p50", "p99", "max"):
            details = {}
            if stat == "p50":
                details = {
                    "n": figures["n"],
                    "send_message_ms": spread([1000 * (d.enqueued - d.sent) for d in deliveries]),
                    "including_send_ms": spread([d.with_send_ms for d in deliveries]),
                }
            rows.append(
                Row(
                    "4 latency",
                    f"{label} {stat}",
                    figures[stat],
                    raw_figures[stat] if polling else None,
                    "ms",
                    targets.get(stat, ""),
                    details,
                )
            )
    return rows


# --- 5. wake() cost -----------------------------------------------------------------------


def time_calls(call: Callable[[], object], count: int) -> list[float]:
    """Microseconds taken by each of ``count`` calls."""
    took = []
    for _ in range(count):
        started = time.perf_counter_ns()
        call()
        took.append((time.perf_counter_ns() - started) / 1000)
    return took


def wake_cost(bench: Bench) -> list[Row]:
    """Scenario 5: sqsd_client.wake() with the daemon up, and with no socket at all.

    The raw column for "daemon up" is the floor: the same call against the smallest Python
    selector server (bench/echo.py) that answers it.
    """
    count = 1000 if bench.quick else 3000
    absent = str(bench.workdir / "no-daemon" / "sqsd.sock")
    down = time_calls(lambda: sqsd_client.wake("wake", socket_path=absent), count)
    echo_path = bench.workdir / "echo.sock"
    with EchoServer(echo_path):
        floor = time_calls(lambda: sqsd_client.wake("wake", socket_path=str(echo_path)), count)
    with bench.daemon({"wake": {"receiver": "bench.receivers:noop"}}) as daemon:
        path = daemon.socket_path
        accepted = sum(sqsd_client.wake("wake", socket_path=path) for _ in range(10))
        time.sleep(2)  # let the depth query that start-up's status calls set off finish
        up = time_calls(lambda: sqsd_client.wake("wake", socket_path=path), count)
    if accepted != 10:
        raise RuntimeError(f"the daemon accepted {accepted} of 10 wake-ups")
    return [
        Row(
            "5 wake()",
            "daemon up: median",
            statistics.median(up),
            statistics.median(floor),
            "µs",
            "≤ 100",
            {"n": count},
        ),
        Row("5 wake()", "daemon up: p99", percentile(up, 99), percentile(floor, 99), "µs"),
        Row("5 wake()", "daemon down: median", statistics.median(down), None, "µs", "≤ 50"),
        Row("5 wake()", "daemon down: p99", percentile(down, 99), None, "µs"),
    ]


# --- 6. supervisor ------------------------------------------------------------------------


def supervisor(bench: Bench) -> list[Row]:
    """Scenario 6: status latency, master CPU with 50 idle workers, respawn after SIGKILL."""
    window = 20.0 if bench.quick else 60.0
    kills = 3 if bench.quick else 5
    noop = "bench.receivers:noop"
    queues = {f"sup_{i}": {"receiver": noop, "processes": 5} for i in range(9)}
    queues |= {f"resp_{i}": {"receiver": noop} for i in range(5)}  # one worker: the victims
    with ExitStack() as stack:
        proxy = bench.counting_proxy(stack)
        daemon = stack.enter_context(
            bench.daemon(queues, endpoint_url=proxy.url if proxy else None)
        )
        time.sleep(2)
        status_ms = []
        for _ in range(50):
            started = time.perf_counter()
            daemon.status()
            status_ms.append(1000 * (time.perf_counter() - started))

        path = daemon.socket_path
        wake_us = time_calls(lambda: sqsd_client.wake("sup_0", socket_path=path), 1000)

        master = psutil.Process(daemon.pid)
        workers = [psutil.Process(w["pid"]) for w in daemon.workers()]
        time.sleep(3)
        master_before, workers_before = cpu_seconds([master]), cpu_seconds(workers)
        started = time.monotonic()
        time.sleep(window)
        master_after, workers_after = cpu_seconds([master]), cpu_seconds(workers)
        elapsed = time.monotonic() - started
        master_cpu = 100 * (master_after - master_before) / elapsed
        workers_cpu = 100 * (workers_after - workers_before) / elapsed

        respawn_ms = [respawn(bench, daemon, proxy, f"resp_{i}") for i in range(kills)]
    status = spread(status_ms)
    how = "first ReceiveMessage at the proxy" if proxy else "status every 20 ms"
    return [
        Row(
            "6 supervisor",
            "respawn after SIGKILL: median",
            statistics.median(respawn_ms),
            None,
            "ms",
            "≤ 100",
            {"respawn_ms": respawn_ms, "detected_by": how},
        ),
        Row("6 supervisor", "respawn after SIGKILL: max", max(respawn_ms), None, "ms"),
        Row(
            "6 supervisor",
            f"master CPU, 50 idle workers, {window:.0f} s",
            master_cpu,
            None,
            "%",
            "≤ 1",
            {"workers_cpu_percent_total": workers_cpu, "window_s": elapsed},
        ),
        Row(
            "6 supervisor",
            "status() with 50 workers: p50",
            status["p50"],
            None,
            "ms",
            "≤ 50",
            {"n": 50},
        ),
        Row("6 supervisor", "status() with 50 workers: p99", status["p99"], None, "ms", "≤ 50"),
        Row(
            "6 supervisor",
            "wake() with 50 workers: median",
            statistics.median(wake_us),
            None,
            "µs",
            "≤ 100",
            {"p99": percentile(wake_us, 99), "n": len(wake_us)},
        ),
    ]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds used so far by ``processes``."""
    return sum(p.cpu_times().user + p.cpu_times().system for p in processes)


def respawn(bench: Bench, daemon: Daemon, proxy: SQSProxy | None, queue: str) -> float:
    """SIGKILL the one worker of ``queue``; ms until its replacement polls.

    With the proxy: until the replacement's first ReceiveMessage arrives (the only worker
    of that queue is dead, so any new receive is the replacement's). Without: until status,
    read every 20 ms, shows a new pid for the queue polling or idle.
    """
    (victim,) = [w["pid"] for w in daemon.workers() if w.get("queue") == queue]
    url_name = bench.queues.prefix + queue
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    deadline = killed + 30
    while time.monotonic() < deadline:
        if proxy:
            time.sleep(0.002)
            polled = [t for t in proxy.receive_times(url_name) if t > killed]
            if polled:
                took = polled[0] - killed
                break
        else:
            time.sleep(0.02)
            if any(
                w.get("queue") == queue
                and w.get("pid") not in (None, victim)
                and w.get("state") in {"polling", "idle"}
                for w in daemon.workers()
            ):
                took = time.monotonic() - killed
                break
    else:
        raise TimeoutError(f"no replacement for worker {victim} of {queue} in 30s")
    time.sleep(1)
    return 1000 * took


# --- 7. memory ----------------------------------------------------------------------------


def memory(bench: Bench) -> list[Row]:
    """Scenario 7: master RSS, worker USS and PSS with 1 and 20 workers."""
    rows = []
    for processes in (1, 20):
        name = f"mem{processes}"
        with bench.daemon(
            {name: {"receiver": "bench.receivers:noop", "processes": processes}}
        ) as daemon:
            url = bench.queues.urls[name]
            fill(bench.client, url, 10 * processes)  # every worker handles a batch first
            wait_empty(bench.client, [url])
            time.sleep(1)
            master = psutil.Process(daemon.pid).memory_full_info()
            infos = [psutil.Process(w["pid"]).memory_full_info() for w in daemon.workers()]
        uss = [i.uss / MIB for i in infos]
        pss = [i.pss / MIB for i in infos]
        which = "" if processes == 1 else " (median)"
        rows += [
            Row(
                "7 memory",
                f"{processes} worker(s): master RSS",
                master.rss / MIB,
                None,
                "MiB",
                "≤ 60",
                {"master_uss_mib": master.uss / MIB, "master_pss_mib": master.pss / MIB},
            ),
            Row(
                "7 memory",
                f"{processes} worker(s): worker USS{which}",
                statistics.median(uss),
                None,
                "MiB",
                "≤ 15",
                {"uss_mib": uss},
            ),
            Row(
                "7 memory",
                f"{processes} worker(s): worker PSS{which}",
                statistics.median(pss),
                None,
                "MiB",
                "",
                {"pss_mib": pss, "rss_mib": [i.rss / MIB for i in infos]},
            ),
        ]
    return rows


# --- the list -----------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[Bench], list[Row]]] = {
    "throughput": throughput,
    "api": api_cost,
    "idle": idle_cost,
    "latency": latency,
    "wake": wake_cost,
    "supervisor": supervisor,
    "memory": memory,
    "work": work50,
}

METHODS: dict[str, str] = {
    "throughput": (
        "Pre-fill N messages (SendMessageBatch, 8 threads), then start `sqsd run` (or the raw "
        "loops). Each consumer process reports its first message over a Unix datagram (the "
        "no-op handler writes nothing per message). The clock runs from the moment the last "
        "consumer handled its first message (so start-up skew is left out) to the queues seen "
        "empty; the messages counted are those left at that moment, interpolated from "
        "GetQueueAttributes depth polls (visible + in flight + delayed, one queue every 25 ms, "
        "straight to the endpoint). Raw column: the same shape with raw boto3 loop processes. "
        "One untimed drain first warms the emulator's JIT up. Median of 3 runs, sqsd and raw "
        "taking turns to go first (--quick: only the one-worker shape is repeated). "
        "Consumer CPU/msg: user+system CPU of the worker (or raw loop) processes from their "
        "first message to the queues empty, per message (the master's CPU is not included)."
    ),
    "api": (
        "One worker drains N messages through a threaded counting HTTP proxy on loopback; "
        "calls are counted by action (X-Amz-Target or Action=) from daemon start until the "
        "queue is seen empty, startup calls included. The raw loop goes through the same "
        "proxy. Against an https:// endpoint the proxy cannot work (SigV4 signs the Host), "
        "so sqsd's own status counters are used instead."
    ),
    "idle": (
        f"Time-compressed {COMPRESSION}×: wait_time_seconds 1 and idle_sleep_max 60/600/0 "
        f"divided by {COMPRESSION}, 4 idle queues per setting, one worker each, in one daemon "
        "behind the counting proxy. After a warm-up (a third of the run) the mean gap between "
        f"ReceiveMessage calls per queue is measured; receives/hour = 3600 / ({COMPRESSION} × "
        "gap). Without the proxy: status receive counters over the same window."
    ),
    "latency": (
        "Enqueue → handler start: from the moment SendMessage returned (the message is in the "
        "queue) to the handler's start, which it reports; the JSON also has the figures from "
        "just before SendMessage (what the producer's caller sees). (a) idle_sleep_max 0, wait "
        "20 s, one message at a time; its raw column is a raw boto3 loop long-polling alike. "
        "(b) and (c) wait_time_seconds 1, idle_sleep_max 3 (defaults ÷ 20), five queues; each "
        "message is sent once status shows its worker `idle` (backed off); (b) then calls "
        "sqsd_client.wake(queue), (c) does not, so (c) is the rest of that first backoff sleep "
        "and grows with idle_sleep_max."
    ),
    "wake": (
        "perf_counter_ns around each sqsd_client.wake() call, one after another; 'up' against "
        "a daemon with one idle worker, 'down' with a socket path that does not exist. The raw "
        "column for 'up' is a floor: the same call answered by a minimal Python selector "
        "server (bench/echo.py)."
    ),
    "supervisor": (
        "50 idle workers with defaults (9 queues × 5 and 5 single-worker queues), behind the "
        "counting proxy. status(): 50 Client.status() calls; wake(): 1000 calls. Master CPU: "
        "psutil user+system time of the master over the window (10 ms ticks). Respawn: "
        "SIGKILL the only worker of a queue; time until the replacement's first ReceiveMessage "
        "reaches the proxy (no status polling, so the master is not disturbed; without the "
        "proxy: status every 20 ms)."
    ),
    "memory": (
        "After every worker handled a batch: psutil memory_full_info() of the master (RSS) and "
        "of each worker (USS = memory only it holds, PSS = shared pages split among sharers)."
    ),
    "work": (
        "Like throughput with a handler that sleeps 50 ms (I/O-like work) and 4 processes on "
        "one queue; ideal = 4 / 0.05 s = 80 msg/s. The raw column: 4 raw loops sleeping alike."
    ),
}
