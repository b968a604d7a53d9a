"""Autoscaling: how many workers each queue and suffix runs, decided by a pure function.

The master already knows, for free, what every worker is doing: each one writes into its
scoreboard slot whether it is busy, how many messages its last receive returned, how long
the oldest of them had waited and since when its receives come back empty. ``decide``
turns those signals, the ranges (``processes`` to ``max_processes``), the host budget
(``max_workers``) and priorities into decisions: queue, suffix, from → to, and why.
``Sizing`` keeps what the policy needs between turns (counts, pins, memory, the last
decision); the master only carries decisions out. No SQS call is made for scaling.

Hysteresis, so that a steady load never makes the count flap:

- **up**, one worker at a time, at most once per ``scale_up_interval``, once every turn
  for SUSTAIN seconds saw a backlog: every worker of the queue busy on all its slots and
  their last receives full; or, more slowly (AGE_SUSTAIN), every worker busy and the age of
  the oldest message received rising at each of the last AGE_RISES receives. Each up uses
  its evidence up: the next one needs the backlog seen again.
- **down**, one worker at a time, only for a worker whose receives have come back empty
  (it is backing off) for ``scale_down_after`` seconds, and not while a backlog shows.

The two conditions are far apart: a load that saturates N workers keeps N + 1 of them
receiving messages, so none of them idles for ``scale_down_after`` and the count reached
stays until the load falls far below it. tests/unit/test_scaling.py shows it on a model
of a queue and its workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from sqsd.config import QueueSettings
from sqsd.plan import Key, carried
from sqsd.states import Program, SlotView, WorkerState

PoolKey = tuple[str, str]  # (queue, suffix)

SUSTAIN = 1.0  # seconds a backlog must be seen at every turn before a worker is added
AGE_RISES = 4  # rises in a row of the oldest message's age that count as "keeps growing"
AGE_FLOOR = 1.0  # seconds: younger messages are no backlog, whatever their trend
AGE_SUSTAIN = 10.0  # seconds a backlog seen by its age alone must last
AGED = "all busy, oldest message age rising"
EQUAL_SHARE_SLACK = 3  # equal priorities: move a worker only when excess + deficit reach this


# -- what the policy reads -------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSignals:
    """One running worker as the policy sees it (built by ``worker_signals``)."""

    index: int  # its place in its queue × suffix: a down decision names it
    busy: int  # slots running a message
    slots: int  # slots in all (the worker's concurrency)
    full: bool  # its last receive returned as many messages as it asked for
    age: float = 0.0  # seconds the oldest message of that receive had waited (0: unknown)
    idle_since: float | None = None  # its receives come back empty since (None: not idle)


def worker_signals(index: int, view: SlotView, batch_size: int) -> WorkerSignals:
    """The one place that reads autoscaling's signals out of a worker's slot.

    A worker has ``concurrency`` slots, busy while their handlers run; it counts as busy
    when all of them are. A worker polling right after a full receive with nothing running
    is fetching the next batch of a backlog, so its slots count as busy too. With
    ``batch_size = 1`` every receive is "full": only the age counts.
    """
    slots = max(1, view.slots)
    full = batch_size > 1 and view.last_batch >= batch_size
    fetching = full and view.state is WorkerState.POLLING and not view.busy
    if fetching:
        busy = slots
    elif slots == 1:  # the single-threaded loop: its state says it
        busy = 1 if view.state is WorkerState.BUSY or view.busy else 0
    else:
        busy = min(slots, view.busy)
    resting = view.state in (WorkerState.POLLING, WorkerState.IDLE) and not view.busy
    idle_since = view.idle_since if resting and not view.last_batch else None
    return WorkerSignals(index, busy, slots, full, view.oldest_age, idle_since)


@dataclass(frozen=True)
class Pool:
    """One queue × suffix: its range, its workers' signals and how it is set."""

    queue: str
    suffix: str
    minimum: int
    maximum: int
    current: int  # workers wanted now
    workers: tuple[WorkerSignals, ...] = ()  # running, not asked to stop
    stopping: int = 0  # asked to stop, still finishing
    priority: int = 0
    scale_up_interval: float = 2.0
    scale_down_after: float = 60.0
    pinned: bool = False  # `sqsctl scale`: no decision until the next reload
    woken: bool = False  # a wake-up came for it since the last turn

    @property
    def key(self) -> PoolKey:
        return (self.queue, self.suffix)

    @property
    def label(self) -> str:
        return f"{self.queue}:{self.suffix}" if self.suffix else self.queue


@dataclass(frozen=True)
class Memory:
    """What the policy remembers of one pool from turn to turn."""

    backlog_since: float | None = None  # every turn since then saw a backlog
    age: float = 0.0  # the pool's oldest-message age at the last turn
    age_rises: int = 0  # how many changes of that age in a row were rises
    last_up: float = -math.inf


@dataclass(frozen=True)
class Decision:
    """One change of a pool's worker count, and why."""

    queue: str
    suffix: str
    before: int
    after: int
    reason: str
    at: float  # time.monotonic()
    worker: int | None = None  # a down: the index of the worker to stop (None: any)

    @property
    def key(self) -> PoolKey:
        return (self.queue, self.suffix)

    def __str__(self) -> str:
        return f"{self.before}→{self.after}: {self.reason}"

    def log_fields(self) -> dict[str, object]:
        """The decision's structured log line (the queue named as the master's lines do)."""
        return {
            "queue": f"{self.queue}:{self.suffix}" if self.suffix else self.queue,
            "change": f"{self.before}→{self.after}",
            "processes": self.after,
            "reason": self.reason,
            "worker": self.worker,
        }


# -- the policy ------------------------------------------------------------------------


def decide(
    pools: Sequence[Pool], memory: Mapping[PoolKey, Memory], *, budget: int, now: float
) -> tuple[list[Decision], dict[PoolKey, Memory]]:
    """This turn's decisions and the memory for the next turn.

    ``budget`` is ``max_workers`` (0: no limit); workers still stopping count against it.
    At most one decision per pool, and at most one budget decision (over budget or
    preemption) per turn.
    """
    turn = Turn(pools, memory, budget, now)
    turn.give_back_over_budget()
    turn.stop_idle_workers()
    turn.add_workers_for_backlogs()
    return turn.decisions, turn.memory


class Turn:
    """One turn of the policy over every pool: the steps ``decide`` takes, in order."""

    def __init__(
        self, pools: Sequence[Pool], memory: Mapping[PoolKey, Memory], budget: int, now: float
    ):
        self.now, self.budget = now, budget
        self.pools = [p for p in pools if not p.pinned]  # pinned ones only count
        self.memory = {p.key: observe(p, memory.get(p.key, Memory()), now) for p in pools}
        self.backlog = {p.key: backlog_reason(p, self.memory[p.key]) for p in pools}
        self.targets = shares(pools, self.backlog, self.memory, budget)
        self.wanted = sum(p.current for p in pools)  # what runs once stopping ones are gone
        self.alive = self.wanted + sum(p.stopping for p in pools)
        self.decisions: list[Decision] = []

    def decided(self, pool: Pool) -> bool:
        return any(d.key == pool.key for d in self.decisions)

    def change(self, pool: Pool, by: int, reason: str, worker: int | None = None) -> None:
        after = pool.current + by
        self.decisions.append(
            Decision(pool.queue, pool.suffix, pool.current, after, reason, self.now, worker)
        )
        self.wanted, self.alive = self.wanted + by, self.alive + max(by, 0)
        kept = self.memory[pool.key]
        if by > 0:  # the evidence is used up: the next up needs new evidence
            kept = replace(kept, last_up=self.now, backlog_since=None, age_rises=0)
        self.memory[pool.key] = kept

    def give_back_over_budget(self) -> None:
        """A reload lowered ``max_workers`` below what runs: one worker fewer per turn."""
        if self.budget and self.wanted > self.budget:
            victim = budget_victim(self.pools, self.targets)
            if victim is not None:
                self.change(victim, -1, f"over max_workers ({self.budget})", pick(victim))

    def stop_idle_workers(self) -> None:
        """Down: in each pool above its minimum, the worker idle longest, once it has been
        idle ``scale_down_after``; one at a time, and not while a backlog still shows."""
        for pool in self.pools:
            if self.decided(pool) or pool.current <= pool.minimum or pool.stopping:
                continue
            if any(w.full for w in pool.workers):  # a backlog shows: one idles by chance
                continue
            idle = {
                w.index: self.now - w.idle_since for w in pool.workers if w.idle_since is not None
            }
            index = max(idle, key=lambda i: idle[i], default=None)
            if index is not None and idle[index] >= pool.scale_down_after:
                self.change(pool, -1, f"worker {index} idle {idle[index]:.0f}s", index)

    def add_workers_for_backlogs(self) -> None:
        """Up: pools with a sustained backlog, higher priorities and the furthest below
        their share first; within the budget, or taking a worker from a pool above its
        share (one per turn, and only once the last one taken has gone)."""
        wanting = sorted(
            (p for p in self.pools if self.backlog[p.key] and not self.decided(p)),
            key=lambda p: (-p.priority, p.current - self.targets[p.key]),
        )
        preempted = False
        for pool in wanting:
            if pool.current >= pool.maximum or not self.due(pool):
                continue
            if not self.budget or self.alive < self.budget:
                self.change(pool, +1, self.backlog[pool.key])
            elif self.wanted >= self.budget and not preempted and self.below_share(pool):
                victim = budget_victim(self.pools, self.targets, pool, self.decisions)
                if victim is not None:
                    preempted = True
                    why = f"max_workers budget: for {pool.label} (priority {pool.priority})"
                    self.change(victim, -1, why, pick(victim))

    def due(self, pool: Pool) -> bool:
        """Its backlog has lasted long enough, and its last up is ``scale_up_interval`` ago."""
        kept = self.memory[pool.key]
        if self.now - kept.last_up < pool.scale_up_interval:
            return False
        if pool.current == 0:
            return pool.woken  # no worker, so no signal: a wake-up is the only one
        lasting = AGE_SUSTAIN if self.backlog[pool.key].startswith(AGED) else SUSTAIN
        since = kept.backlog_since if kept.backlog_since is not None else self.now
        return self.now - since >= lasting

    def below_share(self, pool: Pool) -> bool:
        return pool.current < self.targets[pool.key]


def observe(pool: Pool, memory: Memory, now: float) -> Memory:
    """Fold this turn's signals into the pool's memory: the age trend and how long a
    backlog has been seen at every turn."""
    age = max((w.age for w in pool.workers), default=0.0)
    rises = memory.age_rises
    if age != memory.age:  # a new receive: a rise from a known age, else the count restarts
        rises = rises + 1 if 0 < memory.age < age else 0
    memory = replace(memory, age=age, age_rises=rises)
    if not backlog_reason(pool, memory):
        return replace(memory, backlog_since=None)
    return memory if memory.backlog_since is not None else replace(memory, backlog_since=now)


def backlog_reason(pool: Pool, memory: Memory) -> str:
    """Why the pool has a backlog now ("" when it has none)."""
    if pool.current == 0:
        return "woken with no worker running" if pool.woken else ""
    workers = pool.workers
    if len(workers) < pool.current or not all(w.busy >= w.slots for w in workers):
        return ""  # a worker starting, restarting or with a free slot: more won't help
    if all(w.full for w in workers):
        return "all busy, receives full"
    if memory.age_rises >= AGE_RISES and memory.age >= AGE_FLOOR:
        return f"{AGED} ({memory.age:.0f}s)"
    return ""


def shares(
    pools: Sequence[Pool],
    backlog: Mapping[PoolKey, str],
    memory: Mapping[PoolKey, Memory],
    budget: int,
) -> dict[PoolKey, int]:
    """How many workers each pool should have within the budget.

    Pinned pools keep their count and every other pool its minimum; what is left goes to
    higher priorities first. Within a priority, a pool with a backlog asks for up to its
    maximum, one without for what it runs; when they ask for more than is left, it is
    shared in proportion to their backlog signal (the age of the oldest message received,
    at least 1 s; 1 for pools without a backlog), one worker at a time by the largest
    quotient (D'Hondt), so every share is within one worker of proportional.
    """
    target = {p.key: p.current if p.pinned else p.minimum for p in pools}
    if not budget:  # no competition: a backlog may take its pool to its maximum
        return {p.key: max(p.current, p.maximum if backlog[p.key] else 0) for p in pools}
    left = budget - sum(target.values())
    movable = [p for p in pools if not p.pinned]
    for priority in sorted({p.priority for p in movable}, reverse=True):
        level = [p for p in movable if p.priority == priority]
        asked = {
            p.key: max(0, (p.maximum if backlog[p.key] else p.current) - p.minimum) for p in level
        }
        weight = {p.key: max(1.0, memory[p.key].age) if backlog[p.key] else 1.0 for p in level}
        granted = dict.fromkeys(asked, 0)
        while left > 0:
            open_ = [k for k in asked if granted[k] < asked[k]]
            if not open_:
                break
            chosen = max(open_, key=lambda k: weight[k] / (granted[k] + 1))
            granted[chosen] += 1
            left -= 1
        for key, extra in granted.items():
            target[key] += extra
    return target


def budget_victim(
    pools: Iterable[Pool],
    targets: Mapping[PoolKey, int],
    taker: Pool | None = None,
    decided: Iterable[Decision] = (),
) -> Pool | None:
    """The pool to give up a worker for the budget: above its share and its minimum, the
    lowest priority first, then the furthest above its share. For ``taker`` only a lower
    priority, or an equal one far enough from its share that moving one worker cannot
    swing back (EQUAL_SHARE_SLACK)."""
    excluded = {d.key for d in decided}
    candidates = []
    for pool in pools:
        excess = pool.current - max(targets[pool.key], pool.minimum)
        if pool.key in excluded or excess < 1 or pool.stopping:
            continue
        if taker is not None:
            if pool.key == taker.key or pool.priority > taker.priority:
                continue
            deficit = targets[taker.key] - taker.current
            if pool.priority == taker.priority and excess + deficit < EQUAL_SHARE_SLACK:
                continue
        candidates.append((pool.priority, -excess, pool.label, pool))
    return min(candidates, key=lambda c: c[:3])[3] if candidates else None


def pick(pool: Pool) -> int | None:
    """The worker to stop: the longest idle, else one with no message, else the newest."""
    idle = [w for w in pool.workers if w.idle_since is not None]
    if idle:
        return min(idle, key=lambda w: w.idle_since or 0.0).index
    free = [w for w in pool.workers if not w.busy]
    if free:
        return max(free, key=lambda w: w.index).index
    return None


# -- the master's side: counts, pins and memory between turns ---------------------------


@dataclass(frozen=True)
class Size:
    """What status shows of one queue × suffix."""

    current: int
    minimum: int
    maximum: int
    pinned: bool
    decisions: int  # since start or the last reload
    last: Decision | None


@dataclass
class Sizing:
    """The worker counts the master keeps running and what autoscaling remembers."""

    queues: Mapping[str, QueueSettings]
    budget: int = 0  # max_workers
    counts: dict[PoolKey, int] = field(default_factory=dict)
    pins: set[PoolKey] = field(default_factory=set)
    memory: dict[PoolKey, Memory] = field(default_factory=dict)
    last: dict[PoolKey, Decision] = field(default_factory=dict)
    decisions: dict[PoolKey, int] = field(default_factory=dict)
    woken: set[PoolKey] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.reload(self.queues, self.budget)

    def reload(self, queues: Mapping[str, QueueSettings], budget: int) -> None:
        """New settings: pins are dropped; every count is kept within its new range."""
        self.queues, self.budget = queues, budget
        self.counts = carried(queues, self.counts)
        self.pins.clear()
        for table in (self.memory, self.last, self.decisions):
            for key in [k for k in table if k not in self.counts]:
                del table[key]

    def pin(self, queue: str, suffix: str, processes: int, now: float) -> Decision:
        """`sqsctl scale`: this many processes, autoscaling aside, until the next reload."""
        settings = self.queues.get(queue)
        if settings is None:
            raise KeyError(f"unknown queue {queue!r}")
        if suffix not in settings.suffixes:
            raise KeyError(f"queue {queue!r} has no suffix {suffix!r}")
        key = (queue, suffix)
        self.pins.add(key)
        return self.record(
            Decision(queue, suffix, self.counts[key], processes, "pinned by sqsctl scale", now)
        )

    def wake(self, queue: str, suffix: str | None) -> None:
        """A wake-up came: a pool with no worker may start one."""
        self.woken.update(k for k in self.counts if k[0] == queue and suffix in (None, k[1]))

    def step(self, programs: Mapping[Key, Program], now: float) -> list[Decision]:
        """One turn of the policy over the master's programs; the decisions it made."""
        if not self.budget and all(
            q.process_range[0] == q.process_range[1] for q in self.queues.values()
        ):
            return []
        decisions, self.memory = decide(
            self.pools(programs), self.memory, budget=self.budget, now=now
        )
        self.woken.clear()
        return [self.record(d) for d in decisions]

    def record(self, decision: Decision) -> Decision:
        self.counts[decision.key] = decision.after
        self.last[decision.key] = decision
        self.decisions[decision.key] = self.decisions.get(decision.key, 0) + 1
        return decision

    def pools(self, programs: Mapping[Key, Program]) -> list[Pool]:
        """The policy's inputs, read from the programs and their workers' slots."""
        running: dict[PoolKey, list[WorkerSignals]] = {k: [] for k in self.counts}
        stopping = dict.fromkeys(self.counts, 0)
        for (queue, suffix, index), program in programs.items():
            worker, key = program.worker, (queue, suffix)
            if worker is None or key not in running:
                continue
            if worker.stop_sent or program.retired:
                stopping[key] += 1
            else:
                batch = program.spec.queue.batch_size
                running[key].append(worker_signals(index, worker.slot.read(), batch))
        pools = []
        for (queue, suffix), current in self.counts.items():
            settings = self.queues[queue]
            minimum, maximum = settings.process_range
            pools.append(
                Pool(
                    queue,
                    suffix,
                    minimum,
                    maximum,
                    current,
                    tuple(sorted(running[(queue, suffix)], key=lambda w: w.index)),
                    stopping[(queue, suffix)],
                    settings.priority,
                    settings.scale_up_interval,
                    settings.scale_down_after,
                    pinned=(queue, suffix) in self.pins,
                    woken=(queue, suffix) in self.woken,
                )
            )
        return pools

    def sizes(self) -> dict[PoolKey, Size]:
        """Every pool's count, range, pin and last decision, for status."""
        return {
            key: Size(
                count,
                *self.queues[key[0]].process_range,
                key in self.pins,
                self.decisions.get(key, 0),
                self.last.get(key),
            )
            for key, count in self.counts.items()
        }


def make_last(programs: dict[Key, Program], key: Key, last: int) -> None:
    """Swap two programs of one queue × suffix so that ``key``'s holds index ``last``: the
    master stops the last index when a count goes down, and this one should stop."""
    other = (key[0], key[1], last)
    if other == key or other not in programs or key not in programs:
        return
    moving, staying = programs[key], programs[other]
    moving.spec = replace(moving.spec, index=last)
    staying.spec = replace(staying.spec, index=key[2])
    programs[key], programs[other] = staying, moving
