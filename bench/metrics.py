"""Scenario "metrics" (``make bench BENCH_ARGS="--only metrics"``): what observing costs.

(a) Throughput with the histograms and payload-chunk counting on, as always, against the
same daemon with them switched off (``SQSD_BENCH_NO_OBSERVE=1``, a switch for this
benchmark only), in one run, taking turns. (b) One scrape of ``GET /metrics`` and of
``sqsctl metrics`` with 50 workers. (c) The master's loop latency (ping round trips) with
and without a scrape every second.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import urllib.request
from typing import Any

import sqsd_client
from bench.daemon import REPO, Daemon
from bench.queues import DepthWatch, wait_empty
from bench.report import Row, spread
from bench.scenarios import SCENARIOS, Bench, Drain, count_of, fill_split, timed_drain, worker_cpu
from sqsd.local import free_port

OFF = {"SQSD_BENCH_NO_OBSERVE": "1"}


def label() -> str:
    """``N metrics``: N is this scenario's place in the run's list (run.py registers it)."""
    names = list(SCENARIOS)
    return f"{names.index('metrics') + 1} metrics" if "metrics" in names else "metrics"


def daemon(
    bench: Bench,
    queues: dict[str, dict[str, Any]],
    *,
    env: dict[str, str] | None = None,
    sqsd: dict[str, Any] | None = None,
) -> Daemon:
    """A daemon for ``queues`` (created first), with more environment and [sqsd] keys."""
    for name in queues:
        bench.queues.create(name)
    bench.daemons += 1
    return Daemon(
        bench.workdir / f"daemon{bench.daemons}",
        queues=queues,
        prefix=bench.queues.prefix,
        endpoint_url=bench.endpoint_url,
        region=bench.region,
        env={"SQSD_BENCH_EVENTS": str(bench.events.path), **(env or {})},
        sqsd=sqsd,
    )


def drain(bench: Bench, name: str, count: int, env: dict[str, str]) -> Drain:
    """Pre-fill one queue, start one no-op worker, time the drain (as scenario 1 does)."""
    url = bench.queues.create(name)
    watch = DepthWatch(bench.client, fill_split(bench, [url], count))
    process = daemon(bench, {name: {"receiver": "bench.receivers:noop"}}, env=env)
    bench.events.clear()
    try:
        process.launch()
        empty_at = watch.wait_empty()
        ended = time.monotonic()
        cpu = worker_cpu(bench)
        processed = sum(count_of(w, "processed") for w in process.workers())
    finally:
        process.stop()
    return timed_drain(bench, watch, empty_at, processed=processed, cpu=cpu, ended=ended)


def throughput(bench: Bench) -> list[Row]:
    n = bench.messages
    repeats = 3 if bench.quick else 5
    drain(bench, "mx_warmup", n, OFF)  # the emulator speeds up as its JIT warms up
    on: list[Drain] = []
    off: list[Drain] = []
    for r in range(repeats):
        runs = [(on, {}), (off, OFF)]
        for results, env in runs if r % 2 == 0 else reversed(runs):  # take turns going first
            results.append(drain(bench, f"mx_{'on' if results is on else 'off'}{r}", n, env))
    rate_on = statistics.median(d.rate for d in on)
    rate_off = statistics.median(d.rate for d in off)
    cpu_on = statistics.median(d.cpu_per_message or 0 for d in on)
    cpu_off = statistics.median(d.cpu_per_message or 0 for d in off)
    # The least CPU a run took: the run least disturbed by the host's other work.
    best_on = min(d.cpu_per_message or 0 for d in on)
    best_off = min(d.cpu_per_message or 0 for d in off)
    details = {
        "messages": n,
        "on": [d.rate for d in on],
        "off": [d.rate for d in off],
        "ratio": rate_on / rate_off,
        "cpu_us_on": [d.cpu_per_message for d in on],
        "cpu_us_off": [d.cpu_per_message for d in off],
    }
    scenario = label()
    return [
        Row(scenario, "1 worker: msg/s, metrics on (raw column: off)", rate_on, rate_off,
            "msg/s", "≥ 0.98× off", details),  # fmt: skip
        Row(scenario, "1 worker: worker CPU/msg, on (raw: off)", cpu_on, cpu_off, "µs"),
        Row(scenario, "1 worker: least worker CPU/msg of the runs", best_on, best_off, "µs"),
    ]


FIFTY = {f"mx_w{i}": {"receiver": "bench.receivers:noop", "processes": 5} for i in range(9)} | {
    f"mx_s{i}": {"receiver": "bench.receivers:noop"} for i in range(5)
}  # 9 queues × 5 processes and 5 single ones: 50 workers, 14 queues


def scrape_http(port: int) -> float:
    """Milliseconds for one GET /metrics, connection to last byte."""
    started = time.perf_counter()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Accept": "application/openmetrics-text"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
    return 1000 * (time.perf_counter() - started)


TURNS = 8  # windows of the ping measurement: without scrapes, with, without, ...
SCRAPER = """
import json, sys, time
from bench.metrics import scrape_http
port, seconds = int(sys.argv[1]), float(sys.argv[2])
took, deadline = [], time.monotonic() + seconds
while time.monotonic() < deadline:
    took.append(scrape_http(port))
    time.sleep(1.0)
print(json.dumps(took))
"""


def pings(path: str, seconds: float, every: float = 0.02) -> list[float]:
    """Ping round trips (ms), one every ``every`` seconds for ``seconds``."""
    client = sqsd_client.Client(path, timeout=5)
    took = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        client.ping()
        took.append(1000 * (time.perf_counter() - started))
        time.sleep(every)
    return took


def scrapes(bench: Bench) -> list[Row]:
    count = 200 if bench.quick else 500
    window = 40.0 if bench.quick else 120.0
    port = free_port()
    listen = {"metrics_listen": f"127.0.0.1:{port}"}
    # No handler events: fifty first-message datagrams would fill the sink's queue.
    with daemon(bench, FIFTY, sqsd=listen, env={"SQSD_BENCH_EVENTS": ""}) as process:
        # Every queue handles messages first: its counters and histograms hold values.
        urls = [bench.queues.urls[name] for name in FIFTY]
        fill_split(bench, urls, 20 * len(urls))
        wait_empty(bench.client, urls)
        time.sleep(2)
        path = process.socket_path
        client = sqsd_client.Client(path, timeout=10)
        size = len(client.call("metrics")["text"])
        http_ms = [scrape_http(port) for _ in range(count)]
        ctl_ms = []
        for _ in range(count):
            started = time.perf_counter()
            client.call("metrics")
            ctl_ms.append(1000 * (time.perf_counter() - started))

        # Windows with and without scrapes take turns, so a change in the host's other load
        # falls on both alike. The scraper is a process of its own: in a thread here it
        # would hold the GIL while it reads a scrape and delay the pings it should leave be.
        quiet: list[float] = []
        busy: list[float] = []
        scraped: list[float] = []
        turn = window / TURNS
        for n in range(TURNS):
            if n % 2 == 0:
                quiet += pings(path, turn)
                continue
            scraper = subprocess.Popen(
                [sys.executable, "-c", SCRAPER, str(port), str(turn)],
                stdout=subprocess.PIPE, text=True, cwd=REPO,
            )  # fmt: skip
            try:
                busy += pings(path, turn)
            finally:
                out, _ = scraper.communicate(timeout=turn + 30)
            scraped += json.loads(out or "[]")
    http_figures, ctl_figures = spread(http_ms), spread(ctl_ms)
    quiet_figures, busy_figures = spread(quiet), spread(busy)
    scenario = label()
    return [
        Row(scenario, "GET /metrics, 50 workers: p50", http_figures["p50"], None, "ms", "",
            {"n": count, "bytes": size, "workers": 50, "queues": len(FIFTY)}),
        Row(scenario, "GET /metrics, 50 workers: p99", http_figures["p99"], None, "ms", "≤ 20"),
        Row(scenario, "sqsctl metrics request, 50 workers: p99", ctl_figures["p99"], None, "ms",
            "≤ 20", {"p50": ctl_figures["p50"]}),
        Row(scenario, "ping p50, scrape every 1 s (raw: none)", busy_figures["p50"],
            quiet_figures["p50"], "ms", "unchanged"),
        Row(scenario, "ping p99, scrape every 1 s (raw: none)", busy_figures["p99"],
            quiet_figures["p99"], "ms", "unchanged",
            {"quiet": quiet_figures, "scraping": busy_figures, "scrapes": spread(scraped),
             "window_s": window}),
    ]  # fmt: skip


def metrics(bench: Bench) -> list[Row]:
    """Scenario 12: see the module's docstring."""
    return throughput(bench) + scrapes(bench)


METHOD = (
    "(a) One worker, no-op handler, drains N pre-filled messages (scenario 1's timing: from "
    "the worker's first message to the queue seen empty), with metrics on and with "
    "SQSD_BENCH_NO_OBSERVE=1 (no histogram observations, no payload-chunk counting), "
    "taking turns, 3 runs each (--quick) or 5; medians. The raw column is 'off'. (b) 50 "
    "workers (9 queues × 5, 5 × 1; each queue first drains 20 messages, so every series "
    "holds values) with metrics_listen: N sequential GET /metrics (OpenMetrics, urllib, a "
    "new connection each) and N `metrics` control requests, timed from the client. (c) Ping "
    "round trips every 20 ms over 120 s (40 s with --quick) in 8 windows that take turns: "
    "without scrapes, then with a GET /metrics every second from another process (the raw "
    "column is without)."
)
