"""Worker engine v2 (issue #12): many messages at once per worker, written to the issue's
contract ("What to build"), against real ``sqsd run`` processes and the moto server:

1. thread concurrency: ``concurrency = 4`` runs 4 plain handlers at once, never more
2. asyncio: ``async def`` handlers run as tasks on the worker's one thread
3. no hoarding: a worker receives only what it can start, so two workers share slow work
4. FIFO: message groups run in parallel, one message of a group at a time, in order, also
   after a failure
5. ``hard_timeout`` with other handlers running (a thread: the others finish, then the
   worker is aborted; a task: only that task is cancelled)
6. graceful stop with N running: they finish, the unstarted are given back at once
7. recycling (``max_messages``) with N running: the running handlers finish first
8. status and the process title show busy/total slots
9. ``sqsd.testing`` runs ``concurrency`` and ``async def`` handlers with the same outcomes
   and the FIFO group rule (no daemon)

Handlers are :mod:`tests.receivers.engine`; each records its start and end (pid, thread,
times, body). Messages are accounted for with :class:`~tests.chaos.ledger.Ledger`, and
each daemon test prints one JSON line of figures (sent / handled / duplicates /
dead-lettered / lost, and the measured overlap and times).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from conftest import queue_counts

import sqsd
import sqsd.producer
from sqsd.testing import RunCounts, queues
from tests.chaos.ledger import Ledger
from tests.receivers.chaos import body_key
from tests.support.figures import (
    assert_nothing_dropped,
    create_queue,
    ledger_fixture,
    report,
    settle,
)

RECEIVER = "tests.receivers.engine:handle"
ARECEIVER = "tests.receivers.engine:ahandle"
# Receivers are named by reference only: ``imports = ["tests.receivers.engine"]`` would add
# the workers of every task registered by the modules it imports.

pytestmark = pytest.mark.timeout(60)


# -- figures and helpers --------------------------------------------------------------------


ledger = ledger_fixture("engine")


def send_fifo(ledger: Ledger, queue: str, entries: list[tuple[str, str]]) -> None:
    """Send ``(body, group)`` pairs to a FIFO queue in this order, in batches of 10, and
    enter them in the ledger (all expected handled)."""
    url = ledger.harness.queue_url(queue)
    for start in range(0, len(entries), 10):
        batch = entries[start:start + 10]
        response = ledger.harness.sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "MessageBody": body, "MessageGroupId": group}
            for i, (body, group) in enumerate(batch)
        ])
        assert not response.get("Failed"), response.get("Failed")
        for body, _ in batch:
            key = body_key(body)
            ledger.expected[key] = "handled"
            ledger.queue_of[key] = queue
            ledger.sent += 1


def calls(harness, outcome: str | None = "ok", **match: Any) -> list[dict[str, Any]]:
    """Finished handler calls (``end`` records), by outcome (None: any)."""
    found = harness.records("end", **match)
    return [r for r in found if outcome is None or r["outcome"] == outcome]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals running at one instant (an end before a start at
    the same time)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda event: (event[0], event[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def spans(records: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return [(r["started"], r["ended"]) for r in records]


def starts(harness, key: str) -> list[dict[str, Any]]:
    return harness.records("start", key=key)


def program(daemon, queue: str) -> dict[str, Any]:
    [entry] = [w for w in daemon.status()["workers"] if w["queue"] == queue]
    return entry


def title(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline()).strip()
    except psutil.Error:
        return ""


# -- 1. thread concurrency ------------------------------------------------------------------


def test_concurrency_4_runs_four_plain_handlers_at_once_in_one_process(harness, ledger):
    queues = {"threads": {"receiver": RECEIVER, "concurrency": 4, "processes": 1}}
    create_queue(harness, "threads")
    ledger.send("threads", [f"sleep:0.5|t{n}" for n in range(8)])
    daemon = harness.start(queues, ready=False)

    settle(ledger, daemon, ["threads"], timeout=20)

    done = calls(harness, queue="threads")
    overlap = max_overlap(spans(done))
    pids = {r["pid"] for r in done}
    figures = report("threads", ledger, overlap=overlap, pids=len(pids),
                     threads=len({r["thread"] for r in done}),
                     elapsed=round(max(r["ended"] for r in done)
                                   - min(r["started"] for r in done), 3))
    assert_nothing_dropped(figures)
    assert figures["handled"] == 8 and figures["duplicates"] == 0, figures
    assert overlap >= 4, f"at most {overlap} handlers ran at once with concurrency = 4"
    assert overlap <= 4, f"{overlap} handlers ran at once, above concurrency = 4"
    assert len(pids) == 1, f"handlers ran in {len(pids)} processes"


# -- 2. asyncio -----------------------------------------------------------------------------


def test_async_handlers_run_as_tasks_on_one_thread_50_at_once(harness, ledger):
    queues = {"tasks": {"receiver": ARECEIVER, "concurrency": 50, "processes": 1}}
    create_queue(harness, "tasks")
    ledger.send("tasks", [f"sleep:0.3|a{n}" for n in range(100)])
    daemon = harness.start(queues, ready=False)

    settle(ledger, daemon, ["tasks"], timeout=25)

    done = calls(harness, queue="tasks")
    first = min(r["started"] for r in done)
    elapsed = max(r["ended"] for r in done) - first
    overlap = max_overlap(spans(done))
    threads = {(r["pid"], r["thread"]) for r in done}
    figures = report("asyncio", ledger, overlap=overlap, elapsed=round(elapsed, 3),
                     threads=len(threads))
    assert_nothing_dropped(figures)
    assert figures["handled"] == 100 and figures["duplicates"] == 0, figures
    assert "never awaited" not in daemon.log_text()
    assert overlap >= 20, f"at most {overlap} tasks ran at once with concurrency = 50"
    assert overlap <= 50, f"{overlap} tasks ran at once, above concurrency = 50"
    assert len(threads) == 1, f"async handlers ran on {len(threads)} threads"
    # 100 x 0.3 s over 50 slots is two rounds; 3.5 s leaves room for ten receives on moto.
    assert elapsed < 3.5, f"100 async messages took {elapsed:.2f} s from the first start"


# -- 3. no hoarding -------------------------------------------------------------------------


def test_two_workers_share_slow_messages_instead_of_one_hoarding_them(harness, ledger):
    # Plain long polling (no idle backoff): both workers are in a receive when the batch
    # lands; a worker that took all four would need 2 rounds of 2 s.
    queues = {"share": {"receiver": RECEIVER, "concurrency": 2, "processes": 2,
                        "idle_sleep_max": 0}}
    daemon = harness.start(queues)
    ledger.send("share", [f"sleep:2|h{n}" for n in range(4)])

    settle(ledger, daemon, ["share"], timeout=20)

    done = calls(harness, queue="share")
    first = min(r["started"] for r in done)
    elapsed = max(r["ended"] for r in done) - first
    pids = Counter(r["pid"] for r in done)
    figures = report("no_hoarding", ledger, elapsed=round(elapsed, 3), per_pid=dict(pids),
                     overlap=max_overlap(spans(done)))
    assert_nothing_dropped(figures)
    assert figures["handled"] == 4 and figures["duplicates"] == 0, figures
    assert len(pids) == 2, f"one worker took all the slow messages: {dict(pids)}"
    assert elapsed < 3.5, f"4 x 2 s over 2 x 2 slots took {elapsed:.2f} s (hoarding)"


# -- 4. FIFO ---------------------------------------------------------------------------------


def group_calls(done: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(done, key=lambda r: r["started"]):
        groups[r["group"]].append(r)
    return groups


def fifo_entries(groups: int, per_group: int, command=lambda g, i: "sleep:0.2"):
    """Message ``i`` of every group before message ``i + 1`` of any, in send order."""
    return [(f"{command(g, i)}|g{g}-{i}", f"g{g}") for i in range(per_group)
            for g in range(groups)]


def test_fifo_groups_run_in_parallel_one_message_per_group_at_a_time_in_order(harness, ledger):
    queues = {"groups.fifo": {"receiver": RECEIVER, "concurrency": 10, "processes": 1}}
    create_queue(harness, "groups.fifo")
    send_fifo(ledger, "groups.fifo", fifo_entries(10, 5))
    daemon = harness.start(queues, ready=False)

    settle(ledger, daemon, ["groups.fifo"], timeout=25)

    done = calls(harness, queue="groups.fifo")
    groups = group_calls(done)
    within = {g: max_overlap(spans(rs)) for g, rs in groups.items()}
    orders = {g: [r["key"].split("|")[1] for r in rs] for g, rs in groups.items()}
    overlap = max_overlap(spans(done))
    figures = report("fifo_groups", ledger, overlap=overlap,
                     max_within_group=max(within.values()),
                     elapsed=round(max(r["ended"] for r in done)
                                   - min(r["started"] for r in done), 3))
    assert_nothing_dropped(figures)
    assert figures["handled"] == 50 and figures["duplicates"] == 0, figures
    assert overlap >= 5, f"at most {overlap} groups ran at once with concurrency = 10"
    assert overlap <= 10
    assert all(n == 1 for n in within.values()), f"two messages of a group at once: {within}"
    for g, order in orders.items():
        assert order == [f"{g}-{i}" for i in range(5)], f"group {g} out of order: {order}"


def test_fifo_order_is_kept_after_a_failure_while_other_groups_go_on(harness, ledger):
    queues = {"retry.fifo": {"receiver": RECEIVER, "concurrency": 10, "processes": 1,
                             "on_error": "retry", "max_retries": 2}}
    create_queue(harness, "retry.fifo")
    send_fifo(ledger, "retry.fifo", fifo_entries(
        10, 5, lambda g, i: "failonce" if (g, i) == (0, 1) else "sleep:0.2"))
    daemon = harness.start(queues, ready=False)

    settle(ledger, daemon, ["retry.fifo"], timeout=25)

    everything = calls(harness, outcome=None, queue="retry.fifo")
    g0 = group_calls(everything)["g0"]
    g0_sequence = [(r["key"].split("|")[1], r["outcome"]) for r in g0]
    [failure] = [r for r in g0 if r["outcome"] == "raised"]
    [retried] = [r for r in g0 if r["key"] == "failonce|g0-1" and r["outcome"] == "ok"]
    others = [r for r in everything if r["group"] != "g0"]
    went_on = sum(1 for r in others if failure["ended"] <= r["ended"] <= retried["started"])
    overlap = max_overlap(spans(everything))
    figures = report("fifo_failure", ledger, g0=g0_sequence, others_during_retry=went_on,
                     overlap=overlap,
                     retry_gap=round(retried["started"] - failure["ended"], 3))
    assert_nothing_dropped(figures)
    assert figures["handled"] == 50 and figures["duplicates"] == 0, figures
    assert g0_sequence == [("g0-0", "ok"), ("g0-1", "raised"), ("g0-1", "ok"),
                           ("g0-2", "ok"), ("g0-3", "ok"), ("g0-4", "ok")], \
        "group g0 out of order around its failure"
    later = [r for r in g0 if r["key"].endswith(("g0-2", "g0-3", "g0-4"))]
    assert all(r["started"] >= retried["ended"] for r in later), \
        "a later message of the failed group started before the failed one succeeded"
    assert max_overlap(spans(g0)) == 1
    assert overlap >= 5, f"at most {overlap} groups ran at once with concurrency = 10"
    assert went_on > 0, "no other group made progress while g0 waited for its retry"
    for g, rs in group_calls(others).items():
        assert max_overlap(spans(rs)) == 1, f"two messages of {g} at once"
        assert [r["key"].split("|")[1] for r in rs] == [f"{g}-{i}" for i in range(5)]


# -- 5. hard_timeout with other handlers running ----------------------------------------------


def test_hard_timeout_on_a_thread_lets_the_others_finish_then_aborts_the_worker(
    harness, ledger
):
    queues = {"stuck": {"receiver": RECEIVER, "concurrency": 3, "hard_timeout": 2,
                        "max_retries": 0, "dead_letter_queue": "stuck_dlq"}}
    create_queue(harness, "stuck")
    ledger.dead_letter_queues.append("stuck_dlq")
    quick = ["sleep:1|q1", "sleep:1|q2"]
    ledger.send("stuck", ["sleep:30|stuck", *quick],
                expect=lambda body: "dead" if body.endswith("|stuck") else "handled")
    daemon = harness.start(queues, ready=False)
    harness.wait_for_records(3, event="start", queue="stuck", timeout=20)
    [first_pid] = {r["pid"] for r in harness.records("start", queue="stuck")}
    late = [f"ok|late{n}" for n in range(3)]
    ledger.send("stuck", late)

    daemon.wait_for(lambda: program(daemon, "stuck")["restarts"] >= 1, timeout=20,
                    what="the stuck worker to be aborted and restarted")
    settle(ledger, daemon, ["stuck"], timeout=25)

    entry = program(daemon, "stuck")
    quick_calls = {b: [(r["outcome"], r["pid"]) for r in calls(harness, None, key=b)]
                   for b in quick}
    figures = report("hard_timeout_thread", ledger, restarts=entry["restarts"],
                     last_exit=entry["last_exit"], quick=quick_calls,
                     stuck_starts=len(starts(harness, "sleep:30|stuck")))
    assert_nothing_dropped(figures)
    for body in quick:
        assert quick_calls[body] == [("ok", first_pid)], \
            f"{body} did not finish once on the first worker: {quick_calls[body]}"
    assert figures["stuck_starts"] == 1
    assert ledger.dead_lettered["sleep:30|stuck"] == 1
    assert "hard_timeout" in str(entry["last_exit"]), entry
    assert first_pid not in daemon.worker_pids("stuck")
    handled = ledger.handled()
    for body in late:
        assert handled[body] >= 1, f"{body} never ran"
    assert figures["duplicates"] == 0, figures


def test_hard_timeout_on_an_async_handler_cancels_only_that_task(harness, ledger):
    queues = {"astuck": {"receiver": ARECEIVER, "concurrency": 3, "hard_timeout": 2,
                         "dead_letter_queue": "astuck_dlq"}}
    create_queue(harness, "astuck")
    ledger.dead_letter_queues.append("astuck_dlq")
    quick = ["sleep:1|aq1", "sleep:1|aq2"]
    ledger.send("astuck", ["sleep:30|astuck", *quick],
                expect=lambda body: "dead" if body.endswith("|astuck") else "handled")
    daemon = harness.start(queues, ready=False)
    harness.wait_for_records(3, event="start", queue="astuck", timeout=20)
    workers_before = daemon.worker_pids("astuck")
    late = [f"ok|alate{n}" for n in range(3)]
    ledger.send("astuck", late)

    settle(ledger, daemon, ["astuck"], timeout=20)

    entry = program(daemon, "astuck")
    stuck_ends = calls(harness, None, key="sleep:30|astuck")
    figures = report("hard_timeout_async", ledger, restarts=entry["restarts"],
                     last_exit=entry["last_exit"],
                     stuck_ends=[(r["outcome"], round(r["ended"] - r["started"], 2))
                                 for r in stuck_ends])
    assert_nothing_dropped(figures)
    assert entry["restarts"] == 0 and daemon.worker_pids("astuck") == workers_before, \
        f"the worker was replaced for one stuck task: {entry}"
    assert [r["outcome"] for r in stuck_ends] == ["cancelled"], stuck_ends
    assert 2 <= stuck_ends[0]["ended"] - stuck_ends[0]["started"] < 6
    assert ledger.dead_lettered["sleep:30|astuck"] == 1, "the cancelled task's message " \
        "was not handled as a failure (on_error: dead-letter queue)"
    assert figures["duplicates"] == 0 and figures["handled"] == 5, figures


# -- 6. graceful stop with N running --------------------------------------------------------


def test_graceful_stop_finishes_the_running_and_gives_back_the_unstarted_at_once(
    harness, ledger
):
    queues = {"stop": {"receiver": RECEIVER, "concurrency": 4, "max_retries": 0,
                       "dead_letter_queue": "stop_dlq"}}
    create_queue(harness, "stop")
    ledger.dead_letter_queues.append("stop_dlq")
    bodies = [f"sleep:2|s{n}" for n in range(10)]
    ledger.send("stop", bodies)
    first = harness.start(queues, ready=False)
    harness.wait_for_records(4, event="start", queue="stop", timeout=20)

    code = first.terminate()
    exited = time.monotonic()
    try:
        harness.wait_for(lambda: queue_counts(harness, "stop")[0] == 6, timeout=1.0,
                         what="the 6 unstarted messages visible again")
        visible_after = round(time.monotonic() - exited, 3)
    except AssertionError:
        visible_after = None
    running = {r["key"] for r in harness.records("start", queue="stop")}
    finished = [r["key"] for r in calls(harness, queue="stop")]
    second = harness.start(queues, ready=False)
    settle(ledger, second, ["stop"], timeout=25)

    figures = report("graceful_stop", ledger, exit_code=code, started_before_stop=len(running),
                     finished_before_stop=len(finished), visible_after=visible_after,
                     counts_after_exit=queue_counts(harness, "stop"))
    assert_nothing_dropped(figures)
    assert code == 0
    assert len(running) == 4, f"{len(running)} handlers started before the stop, not 4"
    assert sorted(finished) == sorted(running), "a running handler did not finish"
    assert visible_after is not None, "the unstarted messages were not given back at once"
    assert figures["handled"] == 10 and figures["duplicates"] == 0, figures
    assert figures["dead_lettered"] == 0


# -- 7. recycling with N running ------------------------------------------------------------


def test_max_messages_recycles_only_after_the_running_handlers_finish(harness, ledger):
    queues = {"recycle": {"receiver": RECEIVER, "concurrency": 4, "max_messages": 6}}
    create_queue(harness, "recycle")
    ledger.send("recycle", [f"sleep:1|r{n}" for n in range(10)])
    daemon = harness.start(queues, ready=False)

    settle(ledger, daemon, ["recycle"], timeout=25)
    daemon.wait_for(lambda: program(daemon, "recycle")["last_exit"], timeout=5,
                    what="a worker exit in status")

    entry = program(daemon, "recycle")
    begun = Counter((r["pid"], r["key"]) for r in harness.records("start", queue="recycle"))
    ended = Counter((r["pid"], r["key"]) for r in calls(harness, None, queue="recycle"))
    per_pid = Counter(pid for pid, _ in ended)
    figures = report("recycle", ledger, last_exit=entry["last_exit"], per_pid=dict(per_pid),
                     cut_short=sorted(k for k in begun if k not in ended))
    assert_nothing_dropped(figures)
    assert figures["handled"] == 10 and figures["duplicates"] == 0, figures
    assert not figures["cut_short"], "the worker exited while handlers ran"
    assert len(per_pid) >= 2, "the worker was never recycled"
    assert entry["last_exit"] == "recycled (exit 75)", entry


# -- 8. status shows busy/total slots --------------------------------------------------------

def slots_of(entry: dict[str, Any]) -> tuple[Any, Any]:
    """(busy, total) handler slots of a status worker entry: ``busy`` and ``slots``, as
    docs/protocol.md names them (on the engine branch)."""
    return entry.get("busy"), entry.get("slots")


def test_status_and_title_show_busy_and_total_slots(harness, ledger):
    queues = {"slots": {"receiver": RECEIVER, "concurrency": 4}}
    daemon = harness.start(queues)
    ledger.send("slots", [f"sleep:4|b{n}" for n in range(3)])
    harness.wait_for_records(3, event="start", queue="slots", timeout=15)

    entry = program(daemon, "slots")
    seen = slots_of(entry)
    try:  # the title is set by the worker; give it a moment after the third start
        shown = harness.wait_for(lambda: "3/4" in title(entry["pid"]) and title(entry["pid"]),
                                 timeout=2, what="3/4 in the worker's title")
    except AssertionError:
        shown = None
    last_title = title(entry["pid"])
    settle(ledger, daemon, ["slots"], timeout=15)

    figures = report("status_slots", ledger, status_slots=seen, title=last_title,
                     status_fields=sorted(entry))
    assert_nothing_dropped(figures)
    assert seen == (3, 4), f"status shows no busy/total slots of 3/4: {entry}"
    assert shown, f"the worker's title shows no 3/4 slots: {last_title!r}"


# -- 9. sqsd.testing parity (no daemon) --------------------------------------------------------


@pytest.fixture
def fresh_registry(monkeypatch) -> Iterator[None]:
    """Receivers registered by a test are dropped afterwards; nothing reaches the network."""
    from sqsd.registry import REGISTRY

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("sqsd.testing reached for the network")

    monkeypatch.setattr(sqsd.producer, "make_client", forbidden)
    monkeypatch.setattr(sqsd.producer.sqsd_client, "wake", forbidden)
    saved = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)


class Running:
    """Counts calls running at once (thread-safe) and records each call's span."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = self.peak = 0
        self.calls: list[dict[str, Any]] = []

    def begin(self, message: sqsd.Message) -> dict[str, Any]:
        call = {"body": message.body, "group": message.group_id,
                "thread": threading.get_ident(), "started": time.monotonic()}
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        return call

    def end(self, call: dict[str, Any], outcome: str) -> None:
        with self.lock:
            self.now -= 1
            self.calls.append({**call, "ended": time.monotonic(), "outcome": outcome})


def test_sqsd_testing_runs_plain_handlers_concurrency_at_once(fresh_registry):
    running = Running()
    barrier = threading.Barrier(4, timeout=2)

    def handle(message: sqsd.Message) -> None:
        call = running.begin(message)
        try:
            barrier.wait()  # passes only when 4 handlers run at once
        finally:
            running.end(call, "ok")

    sqsd.register("eng_threads", handle, concurrency=4)
    with queues() as q:
        for n in range(8):
            sqsd.send("eng_threads", f"m{n}")
        counts = q.run_pending()
    figures = {"counts": str(counts), "peak": running.peak,
               "threads": len({c["thread"] for c in running.calls})}
    print(f"\nengine testing_threads: {json.dumps(figures)}")
    assert counts == RunCounts(processed=8), counts
    assert running.peak == 4
    assert q["eng_threads"].messages == []


def test_sqsd_testing_runs_async_handlers_as_tasks_on_one_thread(fresh_registry):
    running = Running()

    async def ahandle(message: sqsd.Message) -> None:
        call = running.begin(message)
        await asyncio.sleep(0.3)
        running.end(call, "ok")

    sqsd.register("eng_async", ahandle, concurrency=50)
    with queues() as q:
        for n in range(100):
            sqsd.send("eng_async", f"a{n}")
        began = time.monotonic()
        counts = q.run_pending()
        elapsed = time.monotonic() - began
    threads = {c["thread"] for c in running.calls}
    figures = {"counts": str(counts), "peak": running.peak, "elapsed": round(elapsed, 3),
               "threads": len(threads)}
    print(f"\nengine testing_async: {json.dumps(figures)}")
    assert counts == RunCounts(processed=100), counts
    assert len(running.calls) == 100, "the coroutines did not run to the end"
    assert 20 <= running.peak <= 50, running.peak
    assert len(threads) == 1
    assert elapsed < 3.0


@pytest.mark.parametrize("kind", ["plain", "async"])
def test_sqsd_testing_runs_fifo_groups_in_parallel_in_order_also_after_a_failure(
    fresh_registry, kind
):
    running = Running()
    failed_once: set[str] = set()

    def work(message: sqsd.Message, call: dict[str, Any]) -> str:
        if message.body == "g0-1" and message.body not in failed_once:
            failed_once.add(message.body)
            return "raised"
        return "ok"

    def handle(message: sqsd.Message) -> None:
        call = running.begin(message)
        time.sleep(0.05)
        outcome = work(message, call)
        running.end(call, outcome)
        if outcome == "raised":
            raise ValueError("once")

    async def ahandle(message: sqsd.Message) -> None:
        call = running.begin(message)
        await asyncio.sleep(0.05)
        outcome = work(message, call)
        running.end(call, outcome)
        if outcome == "raised":
            raise ValueError("once")

    name = f"eng_fifo_{kind}.fifo"
    sqsd.register(name, handle if kind == "plain" else ahandle, concurrency=10,
                  on_error="retry", max_retries=2)
    with queues() as q:
        for i in range(5):
            for g in range(10):
                sqsd.send(name, f"g{g}-{i}", group_id=f"g{g}")
        first = q.run_pending()
        second = q.run_pending()
    by_group: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in sorted(running.calls, key=lambda c: c["started"]):
        by_group[c["group"]].append(c)
    within = {g: max_overlap([(c["started"], c["ended"]) for c in cs])
              for g, cs in by_group.items()}
    figures = {"first": str(first), "second": str(second), "peak": running.peak,
               "max_within_group": max(within.values(), default=0)}
    print(f"\nengine testing_fifo_{kind}: {json.dumps(figures)}")
    assert first == RunCounts(processed=46, failed=1), first  # g0-2..4 wait behind g0-1
    assert second == RunCounts(processed=4), second
    assert [(c["body"], c["outcome"]) for c in by_group["g0"]] == [
        ("g0-0", "ok"), ("g0-1", "raised"), ("g0-1", "ok"), ("g0-2", "ok"), ("g0-3", "ok"),
        ("g0-4", "ok")]
    for g, cs in by_group.items():
        if g != "g0":
            assert [c["body"] for c in cs] == [f"{g}-{i}" for i in range(5)], g
    assert all(n == 1 for n in within.values()), within
    assert 5 <= running.peak <= 10, running.peak
