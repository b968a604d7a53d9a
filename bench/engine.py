"""Scenario 12, engine: the targets of issue 12 (worker engine v2), one row per target, each
beside the raw boto3 loop measured in the same run where that makes sense.

1. one process, ``concurrency = 1``, no-op: msg/s and API calls/msg against the raw loop
   (scenario 1's and 2's helpers, ``drain_sqsd`` and ``drain_raw``);
2. one process, ``concurrency = 32``, ``time.sleep(0.005)``: msg/s against the raw loop
   sleeping alike (``--work 0.005``);
3. one process, ``concurrency = 256``, ``await asyncio.sleep(0.05)``: msg/s;
4. FIFO, 10 message groups, ``concurrency = 10``, 50 ms: msg/s against ``concurrency = 1``;
5. four 2 s messages, 2 processes × ``concurrency = 2``: seconds until all are done;
6. the worker's USS with 32 threads, right after a drain of row 2.

``python bench/run.py --only engine [--quick]``; its method note is ``METHOD``.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from bench.daemon import Daemon
from bench.queues import DepthWatch, depth, fill, wait_empty
from bench.report import Row
from bench.scenarios import (
    MIB,
    SCENARIOS,
    Bench,
    Drain,
    count_of,
    drain_figures,
    drain_raw,
    drain_sqsd,
    first_events,
    worker_cpu,
)
from tests.support.proxy import SQSProxy

RECEIVERS = "bench.receivers"
GROUPS = 10  # FIFO message groups
SLOW = 4  # 2 s messages in row 5


class NeverRan(RuntimeError):
    """The queue emptied but the handler never reported running (an async handler called
    without being awaited, say)."""


def scenario_label() -> str:
    """``N engine``: N is its place in the run's list (bench/run.py registers it)."""
    names = list(SCENARIOS)
    return f"{names.index('engine') + 1} engine" if "engine" in names else "engine"


def sizes(bench: Bench) -> dict[str, Any]:
    """Message counts: each drain about 5-10 s at the rate its target asks for (or the raw
    loop's rate), half with --quick; drains that cannot empty stop after ``window``."""
    half = 2 if bench.quick else 1
    return {
        "noop": 20000 // half,  # sqsd and raw ~2,500-4,500 msg/s
        "api": bench.messages,  # the counted drains, as in scenario 2
        "threads": 15000 // half,  # ≥ 10 × ~150 msg/s
        "threads_raw": 1000 // half,  # one at a time, ~150 msg/s
        "async": 15000 // half,  # ≥ 2,000 msg/s
        "fifo": 1500 // half,  # ≥ 8 × 20 msg/s
        "window": 10.0 / half,  # seconds from the first message before a drain is cut short
        "repeats": 1 if bench.quick else 3,
    }


@dataclass
class Run:
    """One sqsd drain of scenario 12: timed like scenario 1, perhaps cut short."""

    drain: Drain
    emptied: bool  # the queue was seen empty within the window
    inspected: dict[str, Any] = field(default_factory=dict)
    crashes: list[str] = field(default_factory=list)  # the daemon log's "worker crashed"

    def figures(self) -> dict[str, Any]:
        figures = drain_figures(self.drain) | {"emptied": self.emptied, **self.inspected}
        return figures | ({"worker_crashes": self.crashes} if self.crashes else {})


def crashes(log: str) -> list[str]:
    """One line per worker crash in a daemon's log: the last exception line before it."""
    found, last = [], ""
    for line in log.splitlines():
        if re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b", line):
            last = line.strip()
        elif '"worker crashed' in line:
            found.append(last or line.strip()[:200])
            last = ""
    return found


def crash_note(runs: list[Run]) -> str:
    """`` [N worker crash(es): ...]`` for a row's label when a worker died mid-drain."""
    seen = [c for run in runs for c in run.crashes]
    if not seen:
        return ""
    return f" [{len(seen)} worker crash(es): {seen[0][:60]}]"


def wait_first(bench: Bench, url: str, timeout: float = 60.0) -> None:
    """Wait until a consumer reports its first message; NeverRan if the queue empties first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bench.events.wait_for(lambda e: e.get("kind") == "first", 0.5):
            return
        if depth(bench.client, url) == 0 and not first_events(bench):
            raise NeverRan("queue emptied, handler never ran")
    raise TimeoutError(f"no handler ran within {timeout:g}s")


def drain_engine(
    bench: Bench,
    name: str,
    count: int,
    options: dict[str, Any],
    window: float,
    inspect: Callable[[Daemon], dict[str, Any]] | None = None,
) -> Run:
    """``count`` messages already in queue ``name``: start sqsd with ``options`` (one
    queue), time from the first message handled to the queue seen empty, or to ``window``
    seconds later if it is not empty by then (the messages counted are those handled
    meanwhile, from the depth polls). ``inspect(daemon)`` runs before the daemon stops."""
    url = bench.queues.urls[name]
    watch = DepthWatch(bench.client, {url: count})
    daemon = bench.daemon({name: options})
    bench.events.clear()
    inspected: dict[str, Any] = {}
    try:
        daemon.launch()
        wait_first(bench, url)
        try:
            end = watch.wait_empty(timeout=window)
            emptied = True
        except TimeoutError:
            end = watch.samples[url][-1][0]
            emptied = False
        ended = time.monotonic()
        try:
            cpu: float | None = worker_cpu(bench)
        except psutil.NoSuchProcess:  # a worker died during the drain (see ``crashes``)
            cpu = None
        processed = sum(count_of(w, "processed") for w in daemon.workers())
        if inspect:
            inspected = inspect(daemon)
    finally:
        daemon.stop()
    found = crashes(daemon.log_path.read_text(errors="replace"))
    if found:
        print(f"warning: {name}: worker crashed during the drain: {found}", file=sys.stderr)
    firsts = [e["at"] for e in first_events(bench)]
    start = max(firsts)  # after a crash: the replacement's first message
    handled = watch.remaining_at(start) - watch.samples[url][-1][1]
    drain = Drain(handled, end - start, len(firsts), processed=processed, cpu=cpu, ended=ended)
    return Run(drain, emptied, inspected, found)


def worker_memory(daemon: Daemon) -> dict[str, Any]:
    """USS, PSS and RSS (MiB) and thread count of the daemon's one worker."""
    [worker] = daemon.workers()
    process = psutil.Process(worker["pid"])
    info = process.memory_full_info()
    return {
        "uss_mib": info.uss / MIB,
        "pss_mib": info.pss / MIB,
        "rss_mib": info.rss / MIB,
        "threads": process.num_threads(),
    }


def alternate(r: int, first: Callable[[], None], second: Callable[[], None]) -> None:
    """Run both, ``first`` first on even repeats and last on odd ones."""
    for run in (second, first) if r % 2 else (first, second):
        run()


def guarded(label: str, make: Callable[[], list[Row]]) -> list[Row]:
    """The rows ``make`` returns, or one error row (the other rows still run)."""
    try:
        return make()
    except Exception as exc:
        traceback.print_exc()
        return [Row(scenario_label(), f"{label}: error: {exc}"[:110], None)]


def engine(bench: Bench) -> list[Row]:
    """Scenario 12: see METHOD."""
    size = sizes(bench)
    # The emulator gets up to twice as fast once warm (its JIT): one untimed drain first.
    drain_raw(bench, ["eng_warmup"], 2, size["noop"])
    return [
        *guarded("(1) concurrency 1, no-op", lambda: noop_rows(bench, size)),
        *guarded("(2) concurrency 32, sleep 5 ms", lambda: thread_rows(bench, size)),
        *guarded("(3) concurrency 256, async 50 ms", lambda: async_rows(bench, size)),
        *guarded("(4) FIFO, 10 groups", lambda: fifo_rows(bench, size)),
        *guarded("(5) 4 × 2 s, 2 processes × 2", lambda: slow_rows(bench, size)),
    ]


# --- 1. concurrency 1, no-op ----------------------------------------------------------------


def noop_rows(bench: Bench, size: dict[str, Any]) -> list[Row]:
    """Row 1: scenario 1's one-worker drain and scenario 2's counted drain, both sides."""
    n = size["noop"]
    ours: list[Drain] = []
    raw: list[Drain] = []
    for r in range(size["repeats"]):
        alternate(
            r,
            lambda r=r: ours.append(drain_sqsd(bench, [f"eng_noop{r}"], 1, n)),
            lambda r=r: raw.append(drain_raw(bench, [f"eng_noopraw{r}"], 1, n)[0]),
        )
    calls: dict[str, Counter[str]] = {}
    m = size["api"]
    if bench.can_proxy:
        with SQSProxy(bench.endpoint_url or "") as proxy:
            since = time.monotonic()
            drain = drain_sqsd(bench, ["eng_noopapi"], 1, m, endpoint_url=proxy.url)
            calls["sqsd"] = proxy.counts(since, drain.ended)
            since = time.monotonic()
            drain, _ = drain_raw(bench, ["eng_noopapiraw"], 1, m, endpoint_url=proxy.url)
            calls["raw"] = proxy.counts(since, drain.ended)
    label = "(1) 1 process, concurrency 1, no-op"
    rows = [
        Row(
            scenario_label(),
            f"{label}: msg/s",
            statistics.median(d.rate for d in ours),
            statistics.median(d.rate for d in raw),
            "msg/s",
            "≥ 1.1× raw",
            {
                "messages_filled": n,
                "sqsd": [drain_figures(d) for d in ours],
                "raw": [drain_figures(d) for d in raw],
                "cpu_us_per_message": {
                    "sqsd": statistics.median(d.cpu_per_message or 0 for d in ours),
                    "raw": statistics.median(d.cpu_per_message or 0 for d in raw),
                },
            },
        )
    ]
    if calls:
        rows.append(
            Row(
                scenario_label(),
                f"{label}: API calls/msg",
                sum(calls["sqsd"].values()) / m,
                sum(calls["raw"].values()) / m,
                "",
                "≤ 0.21",
                {"messages": m, **{k: dict(v) for k, v in calls.items()}},
            )
        )
    return rows


# --- 2. and 6. concurrency 32 threads, sleep 5 ms ---------------------------------------------


def thread_rows(bench: Bench, size: dict[str, Any]) -> list[Row]:
    """Rows 2 and 6: 32 threads against the raw loop sleeping alike; the worker's USS."""
    n, n_raw, window = size["threads"], size["threads_raw"], size["window"]
    options = {"receiver": f"{RECEIVERS}:sleep5ms", "processes": 1, "concurrency": 32}
    ours: list[Run] = []
    raw: list[Drain] = []

    def run_sqsd(r: int) -> None:
        name = f"eng_t32_{r}"
        fill(bench.client, bench.queues.create(name), n)
        ours.append(drain_engine(bench, name, n, options, window, inspect=worker_memory))

    for r in range(size["repeats"]):
        alternate(
            r,
            lambda r=r: run_sqsd(r),
            lambda r=r: raw.append(drain_raw(bench, [f"eng_t32raw{r}"], 1, n_raw, work=0.005)[0]),
        )
    uss = [run.inspected["uss_mib"] for run in ours]
    return [
        Row(
            scenario_label(),
            "(2) 1 process, concurrency 32, sleep 5 ms: msg/s" + crash_note(ours),
            statistics.median(run.drain.rate for run in ours),
            statistics.median(d.rate for d in raw),
            "msg/s",
            "≥ 10× raw",
            {
                "messages_filled": {"sqsd": n, "raw": n_raw},
                "window_s": window,
                "ideal": 32 / 0.005,
                "sqsd": [run.figures() for run in ours],
                "raw": [drain_figures(d) for d in raw],
            },
        ),
        Row(
            scenario_label(),
            "(6) worker USS, concurrency 32 threads, after (2)",
            statistics.median(uss),
            None,
            "MiB",
            "≤ 20",
            {"memory": [run.inspected for run in ours]},
        ),
    ]


# --- 3. concurrency 256, async def ------------------------------------------------------------


def async_rows(bench: Bench, size: dict[str, Any]) -> list[Row]:
    """Row 3: an ``async def`` handler awaiting 50 ms, 256 at once, against its target."""
    n, window = size["async"], size["window"]
    options = {"receiver": f"{RECEIVERS}:async_sleep50ms", "processes": 1, "concurrency": 256}
    label = "(3) 1 process, concurrency 256, async sleep 50 ms: msg/s"
    name = "eng_async"
    fill(bench.client, bench.queues.create(name), n)
    try:
        run = drain_engine(bench, name, n, options, window, inspect=worker_memory)
    except NeverRan as exc:
        return [Row(scenario_label(), f"{label}: not run ({exc})", None, None, "", "≥ 2,000")]
    details = {"messages_filled": n, "window_s": window, "ideal": 256 / 0.05, "sqsd": run.figures()}
    label += crash_note([run])
    return [Row(scenario_label(), label, run.drain.rate, None, "msg/s", "≥ 2,000", details)]


# --- 4. FIFO, 10 groups ---------------------------------------------------------------------


def fifo_queue(bench: Bench, name: str) -> str:
    """Create the FIFO queue ``{prefix}{name}`` (``name`` ends in .fifo), deleted at the end."""
    reply = bench.client.create_queue(
        QueueName=bench.queues.prefix + name, Attributes={"FifoQueue": "true"}
    )
    bench.queues.urls[name] = reply["QueueUrl"]
    return reply["QueueUrl"]


def fill_fifo(client: Any, url: str, count: int, groups: int = GROUPS) -> None:
    """Send ``count`` messages round-robin over ``groups`` groups, in order, 10 a batch."""
    for start in range(0, count, 10):
        entries = [
            {
                "Id": str(i),
                "MessageBody": json.dumps({"group": i % groups, "seq": i}),
                "MessageGroupId": f"g{i % groups}",
                "MessageDeduplicationId": str(i),
            }
            for i in range(start, min(start + 10, count))
        ]
        reply = client.send_message_batch(QueueUrl=url, Entries=entries)
        if reply.get("Failed"):
            raise RuntimeError(f"SendMessageBatch failed: {reply['Failed'][:1]}")


def fifo_rows(bench: Bench, size: dict[str, Any]) -> list[Row]:
    """Row 4: concurrency 10 against concurrency 1 on the same FIFO load, taking turns."""
    n, window = size["fifo"], size["window"]
    runs: dict[int, list[Run]] = {10: [], 1: []}

    def run(concurrency: int, r: int) -> None:
        name = f"eng_fifo{concurrency}_{r}.fifo"
        fill_fifo(bench.client, fifo_queue(bench, name), n)
        options = {
            "receiver": f"{RECEIVERS}:fifo50ms",
            "processes": 1,
            "concurrency": concurrency,
        }
        runs[concurrency].append(drain_engine(bench, name, n, options, window))

    for r in range(size["repeats"]):
        alternate(r, lambda r=r: run(10, r), lambda r=r: run(1, r))
    return [
        Row(
            scenario_label(),
            f"(4) FIFO, {GROUPS} groups, 50 ms: msg/s, concurrency 10 vs 1"
            + crash_note(runs[10] + runs[1]),
            statistics.median(run.drain.rate for run in runs[10]),
            statistics.median(run.drain.rate for run in runs[1]),
            "msg/s",
            "≥ 8×",
            {
                "messages_filled": n,
                "window_s": window,
                "ideal": {"10": 10 / 0.05, "1": 1 / 0.05},
                "concurrency_10": [run.figures() for run in runs[10]],
                "concurrency_1": [run.figures() for run in runs[1]],
            },
        )
    ]


# --- 5. no hoarding -------------------------------------------------------------------------


def slow_rows(bench: Bench, size: dict[str, Any]) -> list[Row]:
    """Row 5: four 2 s messages sent at once to 2 polling processes × concurrency 2."""
    options = {"receiver": f"{RECEIVERS}:slow2s", "processes": 2, "concurrency": 2}
    results = []
    for r in range(size["repeats"]):
        name = f"eng_slow{r}"
        with bench.daemon({name: options}) as daemon:  # both workers polling
            url = bench.queues.urls[name]
            bench.events.clear()
            sent = time.time()
            entries = [{"Id": str(i), "MessageBody": "slow"} for i in range(SLOW)]
            bench.client.send_message_batch(QueueUrl=url, Entries=entries)
            deadline = time.monotonic() + 60
            while len(done := slow_events(bench)) < SLOW and time.monotonic() < deadline:
                time.sleep(0.01)
            emptied = wait_empty(bench.client, [url], timeout=60)
            pids = {w["pid"] for w in daemon.workers()}
        if len(done) < SLOW:
            raise TimeoutError(f"{len(done)} of {SLOW} slow messages done in 60 s")
        per_worker = Counter(e["pid"] for e in done)
        results.append(
            {
                "seconds": max(e["ended"] for e in done) - sent,
                "seconds_to_queue_empty": emptied - sent,
                "starts_s": sorted(round(e["started"] - sent, 3) for e in done),
                "messages_per_worker": sorted(per_worker.values(), reverse=True),
                "workers": len(pids),
            }
        )
    label = "(5) 4 × 2 s messages, 2 processes × concurrency 2"
    return [
        Row(
            scenario_label(),
            f"{label}: s until all done",
            statistics.median(r["seconds"] for r in results),
            None,
            "s",
            "< 3",
            {"runs": results},
        ),
        Row(
            scenario_label(),
            f"{label}: s until deleted (queue seen empty)",
            statistics.median(r["seconds_to_queue_empty"] for r in results),
            None,
            "s",
            "",
        ),
        Row(
            scenario_label(),
            f"{label}: messages on the busiest worker",
            statistics.median(r["messages_per_worker"][0] for r in results),
            None,
            "",
            "2",
        ),
    ]


def slow_events(bench: Bench) -> list[dict[str, Any]]:
    """The ``slow2s`` handler's reports so far, one per message handled (first delivery)."""
    seen: dict[str, dict[str, Any]] = {}
    for event in bench.events.drain():
        if event.get("kind") == "slow":
            seen.setdefault(event["id"], event)
    return list(seen.values())


METHOD = (
    "One row per target of issue 12; an untimed drain first warms the emulator up. Drains "
    "are timed as in scenario 1: pre-fill, start `sqsd run`, clock from the moment the "
    "(last) worker reports its first message to the queue seen empty (depth polls every "
    "25 ms), messages counted from the depth at that moment; a drain that has not emptied "
    "W s (10; 5 with --quick) after its first message is cut short there and counts the "
    "messages handled meanwhile. Sizes are for about 5-10 s at the target rate, halved "
    "with --quick. Repeated 3 times with sqsd and its comparison taking turns to go first "
    "(--quick: once), medians; row 3 runs once. (1) concurrency 1 (the default), the "
    "no-op handler, 20,000 messages (10,000), scenario 1's drain_sqsd and drain_raw "
    "(one raw boto3 loop process); API calls/msg: one more drain each of 5,000 (3,000) "
    "through the counting proxy, from start to empty, as in scenario 2. (2) concurrency 32, "
    "bench.receivers:sleep5ms (time.sleep(0.005)), 15,000 (7,500) messages, against one "
    "raw loop doing time.sleep(0.005) per message (--work 0.005), 1,000 (500) messages. "
    "(3) concurrency 256, `async def` bench.receivers:async_sleep50ms (await "
    "asyncio.sleep(0.05)), 15,000 (7,500); the handler reports its first message from "
    "inside the coroutine, so an engine that never awaits it shows 'not run'; no raw "
    "column (one message at a time is 20 msg/s by construction; scenario 8). (4) a FIFO "
    "queue, 1,500 (750) messages round-robin over 10 message groups, "
    "bench.receivers:fifo50ms (time.sleep(0.05)), concurrency 10 beside concurrency 1 (in "
    "the raw loop's column). (5) 2 processes × concurrency 2 with bench.receivers:slow2s "
    "(time.sleep(2)), both workers polling (status); one SendMessageBatch of 4 messages, "
    "then seconds from just before that send to the last handler's end (each reports its "
    "start, end and pid); also the seconds until the queue is seen empty (the 4 deleted; "
    "depth polls every 25 ms), and how many of the 4 the busiest worker ran. (6) psutil "
    "memory_full_info().uss of the one worker of (2) (concurrency 32) at the end of its "
    "drain, before the daemon stops (median of the repeats; the JSON has PSS, RSS and its "
    "thread count)."
)
