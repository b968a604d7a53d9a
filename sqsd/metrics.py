"""Metrics: what the scoreboard's slots say, added up per queue and suffix, in the
Prometheus and OpenMetrics text formats.

Workers only bump fixed-size numbers in their slots (sqsd.scoreboard); everything here runs
in the master, when asked (a ``metrics`` control request, an HTTP scrape, ``status``). A
slot's numbers vanish when its worker exits, so ``Totals`` keeps what exited workers
counted: the ``_total`` series never go backwards while the master runs.

The names and labels are a contract (dashboards and alerts rely on them): see "Monitoring"
in docs/operations.md.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.exposition import generate_latest as prometheus_text
from prometheus_client.openmetrics.exposition import ALLOWUTF8
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_text

from sqsd.config import QueueSettings, Settings
from sqsd.scoreboard import COUNTERS, HISTOGRAMS, HistogramView
from sqsd.states import CRASHLOOP, Program, ProgramState, WorkerState, shown_state

QueueKey = tuple[str, str]  # (queue, suffix)

OUTCOMES = ("processed", "failed", "retried", "dead_lettered", "dropped", "given_back")
# The slot counter of each SQS action workers call. Deletes and visibility changes are
# named by their batch form, the one the worker engine uses; single-message calls, where a
# worker makes them, are counted with them (SQS bills both alike: one request).
WORKER_ACTIONS = {
    "receives": "ReceiveMessage",
    "deletes": "DeleteMessageBatch",
    "visibility_changes": "ChangeMessageVisibilityBatch",
    "sends": "SendMessage",
}
# Everything a queue's slot shows as "state": the workers' own, then the programs'.
WORKER_STATES = (
    *(state.label for state in WorkerState),
    CRASHLOOP,
    ProgramState.FATAL.name.lower(),
    ProgramState.EXITED.name.lower(),
)
DEPTH_STATES = ("visible", "in_flight", "delayed")


@dataclass
class Tally:
    """Everything counted for one queue and suffix."""

    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    histograms: dict[str, HistogramView] = field(
        default_factory=lambda: {n: HistogramView.empty(b) for n, b in HISTOGRAMS.items()}
    )
    restarts: int = 0
    wakeups: int = 0
    master_requests: collections.Counter[str] = field(default_factory=collections.Counter)

    def add_slot(self, counters: Mapping[str, int], histograms: Mapping[str, HistogramView]):
        for name, value in counters.items():
            self.counters[name] = self.counters.get(name, 0) + value
        for name, view in histograms.items():
            self.histograms[name].add(view)

    def add(self, other: Tally) -> None:
        self.add_slot(other.counters, other.histograms)
        self.restarts += other.restarts
        self.wakeups += other.wakeups
        self.master_requests.update(other.master_requests)

    def copy(self) -> Tally:
        fresh = Tally()
        fresh.add(self)
        return fresh

    def requests(self) -> dict[str, int]:
        """SQS requests by action: the workers' and the master's (queue depths)."""
        made = {action: self.counters.get(name, 0) for name, action in WORKER_ACTIONS.items()}
        for action, count in self.master_requests.items():
            made[action] = made.get(action, 0) + count
        return made

    def billed(self) -> int:
        """Requests as SQS bills them: each 64 KiB chunk of a payload counts as one."""
        return sum(self.requests().values()) + self.counters.get("extra_chunks", 0)

    def cost(self, price_per_million: float) -> float:
        return self.billed() * price_per_million / 1e6


class Totals:
    """Per queue and suffix, what no running worker holds any more: the counters and
    histograms of exited workers (folded in when they are reaped), the restarts of
    programs no longer wanted, wake-ups, and the master's own SQS requests."""

    def __init__(self) -> None:
        self.tallies: dict[QueueKey, Tally] = {}

    def tally(self, key: QueueKey) -> Tally:
        found = self.tallies.get(key)
        if found is None:
            found = self.tallies[key] = Tally()
        return found

    def reap(self, program: Program, slot: Any) -> int:
        """Fold the slot of ``program``'s exited worker in; returns the messages it finished
        (processed, failed or retried: did it make progress?)."""
        counters = slot.read().counters
        self.tally(_key(program)).add_slot(counters, slot.read_histograms())
        return counters["processed"] + counters["failed"] + counters["retried"]

    def forget(self, program: Program) -> Program:
        """A retired program leaves the master's table: keep its restarts."""
        self.tally(_key(program)).restarts += program.restarts
        return program

    def woken(self, key: QueueKey) -> None:
        self.tally(key).wakeups += 1

    def requested(self, key: QueueKey, action: str, count: int = 1) -> None:
        """The master (a queue-depth query) made ``count`` SQS requests for ``key``."""
        self.tally(key).master_requests[action] += count

    def depth_query_done(
        self, depths: dict[str, Any], keys: Mapping[str, QueueKey], urls: dict[str, str]
    ) -> None:
        """A depth query (sqsd.control.queries) came back: count the requests it made for
        each queue it asked (``keys``: by SQS name), and keep the URLs it found in ``urls``
        (the next query skips their GetQueueUrl). Both are taken out of ``depths``."""
        for name, depth in depths.items():
            if not isinstance(depth, dict):
                continue
            url = depth.pop("url", None)
            if url:
                urls[name] = url
            elif "error" in depth:
                urls.pop(name, None)  # looked up again next time
            for action, count in (depth.pop("requests", None) or {}).items():
                if name in keys:
                    self.requested(keys[name], action, count)

    def now(self, programs: Iterable[Program]) -> dict[QueueKey, Tally]:
        """Everything counted so far: these totals plus the running workers' slots and the
        programs' restarts."""
        result = {key: tally.copy() for key, tally in self.tallies.items()}
        for program in programs:
            tally = result.get(_key(program))
            if tally is None:
                tally = result[_key(program)] = Tally()
            tally.restarts += program.restarts
            worker = program.worker
            if worker is not None:
                tally.add_slot(worker.slot.read().counters, worker.slot.read_histograms())
        return result


def _key(program: Program) -> QueueKey:
    return (program.spec.queue.name, program.spec.suffix)


def worker_states(programs: Iterable[Program]) -> dict[QueueKey, collections.Counter[str]]:
    """How many workers of each queue and suffix are in each state, as status shows it."""
    states: dict[QueueKey, collections.Counter[str]] = {}
    for program in programs:
        if program.retired and program.worker is None:
            continue
        states.setdefault(_key(program), collections.Counter())[shown_state(program)] += 1
    return states


@dataclass
class Snapshot:
    """What one scrape shows."""

    tallies: Mapping[QueueKey, Tally]
    states: Mapping[QueueKey, Mapping[str, int]]
    depths: Mapping[QueueKey, Mapping[str, Any]]  # visible, in_flight, delayed (no errors)
    depths_age: float
    price_per_million: float
    start_time: float  # the master's start, seconds since the epoch
    version: str


class Collector:
    """A prometheus_client custom collector over one ``Snapshot``."""

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        keys = sorted({*snap.tallies, *snap.states})
        labels = ["queue", "suffix"]
        tallies = {key: snap.tallies.get(key) or Tally() for key in keys}

        info = InfoMetricFamily("sqsd", "The running sqsd", labels=["version"])
        info.add_metric([snap.version], {})
        yield info
        start = GaugeMetricFamily(
            "sqsd_start_time_seconds", "When the master started, seconds since the epoch"
        )
        start.add_metric([], round(snap.start_time, 3))
        yield start

        messages = CounterMetricFamily(
            "sqsd_messages", "Messages by outcome", labels=[*labels, "outcome"]
        )
        requests = CounterMetricFamily(
            "sqsd_sqs_requests", "SQS requests made, by action", labels=[*labels, "action"]
        )
        empty = CounterMetricFamily(
            "sqsd_sqs_empty_receives", "ReceiveMessage calls that returned nothing", labels=labels
        )
        cost = CounterMetricFamily(
            "sqsd_sqs_cost_dollars",
            "Estimated SQS cost: requests (64 KiB payload chunks counted as SQS bills them) "
            "times [sqsd] sqs_price_per_million",
            labels=labels,
        )
        restarts = CounterMetricFamily(
            "sqsd_worker_restarts", "Workers replaced (crashes and recycling)", labels=labels
        )
        wakeups = CounterMetricFamily("sqsd_wakeups", "Wake-ups received", labels=labels)
        for key in keys:
            tally = tallies[key]
            for outcome in OUTCOMES:
                messages.add_metric([*key, outcome], tally.counters.get(outcome, 0))
            for action, count in sorted(tally.requests().items()):
                requests.add_metric([*key, action], count)
            empty.add_metric(list(key), tally.counters.get("empty_receives", 0))
            cost.add_metric(list(key), tally.cost(snap.price_per_million))
            restarts.add_metric(list(key), tally.restarts)
            wakeups.add_metric(list(key), tally.wakeups)
        yield from (messages, requests, empty, cost, restarts, wakeups)

        for name, doc in (
            ("handler_seconds", "How long handlers ran, whatever their outcome"),
            ("message_age_seconds", "From SQS's SentTimestamp to the handler's start"),
        ):
            family = HistogramMetricFamily(f"sqsd_{name}", doc, labels=labels, unit="seconds")
            for key in keys:
                view = tallies[key].histograms[name]
                family.add_metric(list(key), view.cumulative(), view.sum)
            yield family

        workers = GaugeMetricFamily(
            "sqsd_workers",
            "Workers by state, as status shows them (states with no worker are left out)",
            labels=[*labels, "state"],
        )
        for key in keys:
            states = snap.states.get(key, {})
            for state in WORKER_STATES:
                if states.get(state):
                    workers.add_metric([*key, state], states[state])
        yield workers

        depth = GaugeMetricFamily(
            "sqsd_queue_messages",
            "Messages in the SQS queue, last known (SQS's approximate counts)",
            labels=[*labels, "state"],
        )
        age = GaugeMetricFamily(
            "sqsd_queue_messages_age_seconds",
            "How old the last known queue depths are",
            labels=labels,
            unit="seconds",
        )
        for key, figures in sorted(snap.depths.items()):
            for state in DEPTH_STATES:
                if figures.get(state) is not None:
                    depth.add_metric([*key, state], figures[state])
            age.add_metric(list(key), round(snap.depths_age, 3))
        yield depth
        yield age


Done = Callable[[bytes, str], None]  # (text, content type)


class _One:
    """A collector of one family: prometheus_client renders families one at a time."""

    def __init__(self, family: Metric):
        self.family = family

    def collect(self) -> Iterator[Metric]:
        yield self.family


_EOF = b"# EOF\n"


SLICE = 64  # samples rendered in one turn of the loop (well under a millisecond)


def _render(family: Metric, start: int, stop: int | None, openmetrics: bool) -> bytes:
    """The text of ``family``'s samples ``start:stop``; only the first slice of a family
    carries its HELP, TYPE and UNIT lines, so the slices add up to the family's text."""
    part = Metric(family.name, family.documentation, family.type, family.unit)
    part.samples = family.samples[start:stop]
    # Every name here is a plain Prometheus name, which ALLOWUTF8 writes as it is: the same
    # text as the default escaping, without its character-by-character pass over each
    # sample's name (most of a scrape's time with prometheus_client 0.26).
    if openmetrics:
        text = openmetrics_text(_One(part), escaping=ALLOWUTF8)[: -len(_EOF)]  # type: ignore[arg-type]
    else:
        text = prometheus_text(_One(part), escaping=ALLOWUTF8)  # type: ignore[arg-type]
    if start:
        while text.startswith(b"# "):
            text = text.partition(b"\n")[2]
    return text


def _slices(families: list[Metric]) -> list[tuple[Metric, int, int | None]]:
    """Each family cut into runs of at most SLICE samples (a family without samples: one)."""
    return [
        (family, start, start + SLICE)
        for family in families
        for start in range(0, max(1, len(family.samples)), SLICE)
    ]


def content_type(openmetrics: bool) -> str:
    return OPENMETRICS_TYPE if openmetrics else CONTENT_TYPE_PLAIN_0_0_4


def exposition(snapshot: Snapshot, *, openmetrics: bool = True) -> tuple[bytes, str]:
    """The scrape's text and its content type, at once: OpenMetrics 1.0, or Prometheus
    text 0.0.4 for scrapers that do not ask for OpenMetrics."""
    slices = _slices(list(Collector(snapshot).collect()))
    text = b"".join(_render(*piece, openmetrics=openmetrics) for piece in slices)
    return text + (_EOF if openmetrics else b""), content_type(openmetrics)


def exposition_in_turns(
    snapshot: Snapshot,
    *,
    openmetrics: bool,
    later: Callable[[Callable[[], None]], None],
    done: Done,
    each: Callable[[bytes], bytes] = lambda text: text,
) -> None:
    """The same text as ``exposition``, rendered SLICE samples per turn of the master's loop
    (``later(step)`` runs ``step`` at the next turn): with 50 workers a whole scrape takes
    the loop about 10 ms, one slice well under one, so a ping or a wake-up that comes in
    meanwhile waits for a slice, not for the scrape. ``each`` transforms every slice's text
    (redaction: a slice holds whole lines); ``done(text, content type)`` gets the whole."""
    slices: list[tuple[Metric, int, int | None]] = []
    chunks: list[bytes] = []

    def collect() -> None:  # a turn of its own: the snapshot took the caller's
        slices.extend(_slices(list(Collector(snapshot).collect())))
        later(step)

    def step() -> None:
        chunks.append(each(_render(*slices[len(chunks)], openmetrics=openmetrics)))
        if len(chunks) < len(slices):
            later(step)
        else:
            done(b"".join(chunks) + (_EOF if openmetrics else b""), content_type(openmetrics))

    later(collect)


def wants_openmetrics(accept: str) -> bool:
    """Whether an HTTP Accept header asks for OpenMetrics (as Prometheus does)."""
    return "application/openmetrics-text" in accept


def annotate_status(
    reply: dict[str, Any], tallies: Mapping[QueueKey, Tally], price_per_million: float
) -> dict[str, Any]:
    """Add the running totals to a status reply: per queue and suffix, messages by outcome
    (exited workers included), SQS requests by action and the estimated cost in dollars."""
    reply["sqs_price_per_million"] = price_per_million
    for entry in reply.get("queues", []):
        tally = tallies.get((entry["queue"], entry["suffix"])) or Tally()
        entry["totals"] = {outcome: tally.counters.get(outcome, 0) for outcome in OUTCOMES}
        entry["sqs_requests"] = tally.requests()
        entry["cost"] = round(tally.cost(price_per_million), 9)
    return reply


def url_name_keys(
    settings: Settings, queues: Mapping[str, QueueSettings], process_counts: Iterable[QueueKey]
) -> dict[str, QueueKey]:
    """(queue, suffix) of each SQS name whose depth the master asks for: the queues', and
    their dead-letter queues' (named as configured, suffix "")."""
    keys = {settings.queue_url_name(q, s): (q, s) for q, s in process_counts}
    for queue in queues.values():
        if queue.dead_letter_queue:
            keys.setdefault(
                settings.queue_url_name(queue.dead_letter_queue), (queue.dead_letter_queue, "")
            )
    return keys


def depths_by_key(
    depths: Mapping[str, Any], keys: Mapping[str, QueueKey]
) -> dict[QueueKey, Mapping[str, Any]]:
    """The last known depths (by SQS name) by (queue, suffix), leaving errors out."""
    return {
        keys[name]: depth
        for name, depth in depths.items()
        if name in keys and isinstance(depth, dict) and "error" not in depth
    }


def wall_clock(monotonic: float) -> float:
    """A ``time.monotonic()`` instant as seconds since the epoch."""
    return time.time() - (time.monotonic() - monotonic)
