"""The autoscaling policy as a pure function: slot signals in, decisions out, nothing forked.

The last part drives the policy with a small discrete-time model of a queue and its workers
(long polls, batches, idle backoff) to show that its hysteresis holds under steady load.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import pytest

from sqsd import config, plan, scaling
from sqsd.scaling import Memory, Pool, WorkerSignals, decide, shares, worker_signals
from sqsd.states import SlotView, WorkerState


def view(state: WorkerState, last_batch: int = 0, age: float = 0.0, idle_since: float = 0.0):
    return SlotView(state, 0.0, 0.0, 0.0, 0.0, {}, "", last_batch, age, idle_since)


def busy(index: int, *, full: bool = True, age: float = 0.0) -> WorkerSignals:
    return WorkerSignals(index, 1, 1, full, age)


def idle(index: int, since: float) -> WorkerSignals:
    return WorkerSignals(index, 0, 1, False, 0.0, since)


def pool(workers=(), *, current=None, queue="q", minimum=1, maximum=8, **options) -> Pool:
    workers = tuple(workers)
    current = len(workers) if current is None else current
    return Pool(queue, "", minimum, maximum, current, workers, **options)


def run(pools, memory=None, *, now: float, budget: int = 0):
    return decide(list(pools), memory or {}, budget=budget, now=now)


def turns(make_pools, times, *, budget: int = 0):
    """Decide at each of ``times`` with the pools ``make_pools(now)``; every decision made."""
    memory: dict = {}
    made = []
    for now in times:
        pools = make_pools(now)
        pools = [pools] if isinstance(pools, Pool) else pools
        decisions, memory = run(pools, memory, now=now, budget=budget)
        made += decisions
    return made


# -- the one accessor of worker signals ------------------------------------------------


def test_a_busy_worker_has_its_one_slot_taken_and_says_whether_its_receive_was_full():
    assert worker_signals(0, view(WorkerState.BUSY, 10, 3.0), 10) == WorkerSignals(
        0, 1, 1, True, 3.0, None)
    assert worker_signals(1, view(WorkerState.BUSY, 4), 10).full is False


def test_polling_right_after_a_full_receive_is_fetching_the_backlog_not_idling():
    fetching = worker_signals(0, view(WorkerState.POLLING, 10), 10)
    assert (fetching.busy, fetching.full, fetching.idle_since) == (1, True, None)
    between = worker_signals(0, view(WorkerState.POLLING, 3), 10)
    assert (between.busy, between.idle_since) == (0, None)


def test_a_worker_whose_receives_come_back_empty_is_idle_since_that_first_empty_poll():
    assert worker_signals(0, view(WorkerState.IDLE, 0, idle_since=42.0), 10).idle_since == 42.0
    assert worker_signals(0, view(WorkerState.POLLING, 0, idle_since=42.0), 10).idle_since == 42.0
    # Starting, retrying or stopping workers are neither busy nor idle.
    for state in (WorkerState.STARTING, WorkerState.RETRYING, WorkerState.STOPPING):
        signals = worker_signals(0, view(state, 0, idle_since=42.0), 10)
        assert (signals.busy, signals.idle_since) == (0, None)


def test_with_batch_size_one_every_receive_is_full_so_fullness_says_nothing():
    assert worker_signals(0, view(WorkerState.BUSY, 1), 1).full is False


def test_the_slot_publishes_what_receives_returned():
    from sqsd.scoreboard import Scoreboard

    slot = Scoreboard(size=1).allocate()
    started = slot.read().idle_since
    assert (slot.read().last_batch, started > 0) == (0, True)  # idle from its start
    slot.received(10, 30.0)  # the first receive after idling: its age says nothing
    assert (slot.read().last_batch, slot.read().oldest_age) == (10, 0.0)
    slot.received(10, 31.0)
    assert slot.read().oldest_age == 31.0
    slot.set_state(WorkerState.POLLING)
    poll_started = slot.read().state_since
    slot.received(0, 0.0)
    slot.received(0, 0.0)  # a second empty receive keeps the start of idling
    assert (slot.read().last_batch, slot.read().idle_since) == (0, poll_started)


# -- up --------------------------------------------------------------------------------


def test_a_backlog_adds_one_worker_once_seen_at_every_turn_for_a_second():
    backlogged = pool([busy(0)])
    decisions, memory = run([backlogged], now=10.0)
    assert decisions == []
    assert run([backlogged], memory, now=10.5)[0] == []
    [up], _ = run([backlogged], memory, now=11.0)
    assert (up.before, up.after, up.reason, up.worker) == (1, 2, "all busy, receives full", None)
    assert str(up) == "1→2: all busy, receives full"


def test_one_turn_without_a_backlog_starts_the_wait_again():
    made = turns(lambda now: pool([busy(0, full=now != 10.5)]), [10.0, 10.5, 11.0, 11.4])
    assert made == []


def test_up_at_most_once_per_scale_up_interval_and_never_past_max_processes():
    def pools(now):
        count = 1 + sum(1 for t in ups if t < now)
        return pool([busy(i) for i in range(count)], maximum=3, scale_up_interval=5.0)

    ups: list[float] = []
    memory: dict = {}
    for now in [float(t) for t in range(0, 30)]:
        decisions, memory = run([pools(now)], memory, now=now)
        ups += [now for _ in decisions]
    assert ups == [1.0, 6.0]  # 1 → 2 → 3, five seconds apart, then at maximum


def test_no_up_while_any_worker_has_a_free_slot_or_is_not_running_yet():
    partial = [busy(0), WorkerSignals(1, 0, 1, True)]
    assert turns(lambda now: pool(partial), [0.0, 1.0, 2.0, 3.0]) == []
    starting = [busy(0)]  # two wanted, one running
    assert turns(lambda now: pool(starting, current=2), [0.0, 1.0, 2.0, 3.0]) == []
    concurrent = [WorkerSignals(0, 3, 4, True)]  # three of four slots busy
    assert turns(lambda now: pool(concurrent), [0.0, 1.0, 2.0, 3.0]) == []


def test_up_when_the_oldest_message_age_keeps_rising_though_receives_are_not_full():
    # Four rises in a row (the first age only sets the mark), then ten seconds of that
    # backlog at every turn: an age alone is noisier evidence than full receives.
    def pools(now):
        return pool([busy(0, full=False, age=1.0 + min(now, 4.0))])

    [up] = turns(pools, range(20))
    assert (up.at, up.reason) == (14, "all busy, oldest message age rising (5s)")


def test_each_up_uses_its_evidence_up():
    ages = iter([1.0, 2.0, 3.0, 4.0, 5.0] + [5.0] * 30)
    made = turns(lambda now: pool([busy(0, full=False, age=next(ages))]), range(35))
    assert [d.at for d in made] == [14]  # the age stays: no new rise, no second up


def test_young_or_wavering_ages_are_no_backlog():
    young = iter([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8] + [0.9] * 20)
    assert turns(lambda now: pool([busy(0, full=False, age=next(young))]), range(28)) == []
    wavering = iter([2.0, 3.0, 4.0, 5.0, 3.5, 5.0, 6.0, 7.0, 4.0, 7.0, 8.0, 9.0] + [9.0] * 20)
    assert turns(lambda now: pool([busy(0, full=False, age=next(wavering))]), range(32)) == []


def test_an_unchanged_age_neither_rises_nor_breaks_a_rise():
    ages = iter([1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 5.0] + [5.0] * 20)
    made = turns(lambda now: pool([busy(0, full=False, age=next(ages))]), range(27))
    assert [d.at for d in made] == [16]


def test_a_queue_scaled_to_no_worker_starts_one_when_woken():
    empty = pool([], minimum=0, maximum=2)
    assert run([empty], now=1.0)[0] == []
    [up], _ = run([replace(empty, woken=True)], now=2.0)
    assert (up.before, up.after, up.reason) == (0, 1, "woken with no worker running")


# -- down ------------------------------------------------------------------------------


def test_a_worker_idle_for_scale_down_after_is_the_one_stopped():
    workers = [busy(0, full=False), idle(1, since=100.0), idle(2, since=130.0)]
    assert run([pool(workers, scale_down_after=60.0)], now=159.0)[0] == []
    [down], _ = run([pool(workers, scale_down_after=60.0)], now=161.0)
    assert (down.before, down.after, down.worker, down.reason) == (3, 2, 1, "worker 1 idle 61s")


def test_down_one_at_a_time_and_never_below_processes():
    idle_pair = [idle(0, since=0.0), idle(1, since=0.0)]
    assert run([pool(idle_pair, stopping=1)], now=100.0)[0] == []  # the last one still stops
    assert run([pool(idle_pair, minimum=2)], now=100.0)[0] == []
    [down], _ = run([pool(idle_pair)], now=100.0)
    assert (down.after, down.worker) == (1, 0)


def test_pinned_queues_are_left_alone():
    backlogged = pool([busy(0)], pinned=True)
    assert turns(lambda now: backlogged, [0.0, 1.0, 2.0, 3.0]) == []
    assert run([pool([idle(0, 0.0), idle(1, 0.0)], pinned=True)], now=100.0)[0] == []


# -- the host budget -------------------------------------------------------------------


def test_no_up_past_max_workers_counting_workers_still_stopping():
    made = turns(
        lambda now: [pool([busy(0)], queue="a"), pool([busy(0)], queue="b", stopping=1)],
        [0.0, 1.0, 2.0],
        budget=3,
    )
    assert made == []


def test_a_higher_priority_backlog_takes_a_worker_from_a_lower_priority_queue():
    def pools(now):
        high = pool([busy(0)], queue="high", priority=5)
        low = pool([busy(0, full=False), busy(1, full=False), idle(2, since=now - 1)],
                   queue="low")
        return [high, low]

    [down] = turns(pools, [0.0, 1.0], budget=4)
    assert (down.queue, down.before, down.after, down.worker) == ("low", 3, 2, 2)
    assert down.reason == "max_workers budget: for high (priority 5)"


def test_preemption_waits_for_the_worker_it_stopped():
    high = pool([busy(0)], queue="high", priority=5)
    low = pool([busy(0, full=False), busy(1, full=False)], queue="low", current=1, stopping=1)
    assert turns(lambda now: [high, low], [0.0, 1.0, 2.0], budget=3) == []
    # Once it is gone, the room is taken.
    low = replace(low, workers=(busy(0, full=False),), stopping=0)
    made = turns(lambda now: [high, low], [0.0, 1.0, 2.0], budget=3)
    assert [(d.queue, d.after) for d in made] == [("high", 2)]


def test_a_lower_priority_never_takes_from_a_higher_one_nor_below_its_processes():
    def pools(now):
        return [pool([busy(0), busy(1)], queue="high", priority=5),
                pool([busy(0)], queue="low")]

    assert turns(pools, [0.0, 1.0, 2.0, 3.0], budget=3) == []


def test_equal_priorities_share_in_proportion_to_their_backlog_age():
    a = pool([busy(0)], queue="a")
    b = pool([busy(0)], queue="b")
    backlog = {a.key: "x", b.key: "x"}
    memory = {a.key: Memory(age=30.0), b.key: Memory(age=10.0)}
    assert shares([a, b], backlog, memory, budget=10) == {a.key: 7, b.key: 3}
    memory = {a.key: Memory(age=10.0), b.key: Memory(age=10.0)}
    assert shares([a, b], backlog, memory, budget=10) == {a.key: 5, b.key: 5}
    # A queue without a backlog keeps what it runs; the rest goes to the one with one.
    quiet = replace(b, current=2)
    assert shares([a, quiet], {a.key: "x", b.key: ""}, memory, budget=10) == {
        a.key: 8, b.key: 2}


def test_priorities_come_first_and_every_queue_keeps_its_processes():
    high = pool([busy(0)], queue="high", priority=1, maximum=6)
    low = pool([busy(0), busy(1)], queue="low", minimum=2)
    backlog = {high.key: "x", low.key: "x"}
    memory = {high.key: Memory(age=1.0), low.key: Memory(age=100.0)}
    assert shares([high, low], backlog, memory, budget=7) == {high.key: 5, low.key: 2}


def test_equal_priorities_move_a_worker_only_when_far_from_their_share():
    def pools(now, a_count):
        return [pool([busy(i, age=10.0) for i in range(a_count)], queue="a"),
                pool([busy(i, age=10.0) for i in range(10 - a_count)], queue="b")]

    # 6 + 4 against shares of 5 + 5: moving one could swing back; nothing moves.
    assert turns(lambda now: pools(now, 6), [0.0, 1.0, 2.0, 3.0], budget=10) == []
    [down] = turns(lambda now: pools(now, 8), [0.0, 1.0], budget=10)
    assert (down.queue, down.after) == ("a", 7)


def test_over_budget_after_a_reload_the_lowest_priority_gives_up_one_worker_per_turn():
    pools = [pool([busy(0), busy(1)], queue="high", priority=3, minimum=1),
             pool([busy(0), busy(1), idle(2, since=5.0)], queue="low", minimum=1)]
    [down], _ = run(pools, now=10.0, budget=3)
    assert (down.queue, down.after, down.worker, down.reason) == (
        "low", 2, 2, "over max_workers (3)")


def test_the_minimums_must_fit_the_budget_at_load():
    raw = {"sqsd": {"max_workers": 3},
           "queues": {"a": {"receiver": "x:y", "processes": 2, "suffixes": ["", "big"]}}}
    settings = config.parse(raw, "/etc/sqsd/sqsd.toml")
    with pytest.raises(config.ConfigError) as failure:
        plan.check_budget(settings, plan.queue_settings(settings))
    assert str(failure.value) == (
        "/etc/sqsd/sqsd.toml: [sqsd] max_workers: expected 0 (no limit) or at least 4, "
        "the processes of every queue and suffix added up; got 3")


# -- Sizing: what the master keeps between turns ---------------------------------------


def test_pins_last_until_a_reload_which_keeps_counts_within_the_new_ranges():
    settings = config.parse(
        {"queues": {"a": {"processes": 1, "max_processes": 8}, "b": {}}}, "test.toml")
    sizing = scaling.Sizing(plan.queue_settings(settings))
    assert sizing.counts == {("a", ""): 1, ("b", ""): 1}
    sizing.record(scaling.Decision("a", "", 1, 6, "all busy, receives full", 1.0))
    pin = sizing.pin("b", "", 3, now=2.0)
    assert (str(pin), sizing.pins) == ("1→3: pinned by sqsctl scale", {("b", "")})
    with pytest.raises(KeyError, match="unknown queue 'c'"):
        sizing.pin("c", "", 1, now=2.0)
    size = sizing.sizes()[("b", "")]
    assert (size.current, size.minimum, size.maximum, size.pinned, size.decisions) == (
        3, 1, 1, True, 1)
    smaller = config.parse(
        {"queues": {"a": {"processes": 2, "max_processes": 4}, "b": {}}}, "test.toml")
    sizing.reload(plan.queue_settings(smaller), 0)
    assert (sizing.counts, sizing.pins) == ({("a", ""): 4, ("b", ""): 1}, set())


# -- hysteresis, shown on a model of a queue and its workers ---------------------------


@dataclass
class ModelWorker:
    """A worker as sqsd's runs: long poll, a batch one message at a time, idle backoff."""

    index: int
    state: WorkerState = WorkerState.POLLING
    until: float = 0.0  # end of the current poll, message or sleep
    batch: list[float] = field(default_factory=list)  # sent times of messages in hand
    last_batch: int = 0
    age: float = 0.0
    idle_since: float = 0.0
    sleep: float = 0.0

    def view(self) -> SlotView:
        return view(self.state, self.last_batch, self.age, self.idle_since)


@dataclass
class Model:
    """A queue fed by ``arrivals`` messages per second (Poisson) or pre-filled, drained by
    workers that the policy adds and removes; time advances in 10 ms steps and the policy
    decides once a second, like the master's loop."""

    handler: float = 0.05
    batch_size: int = 10
    wait_time: float = 20.0
    idle_sleep_max: float = 60.0
    minimum: int = 1
    maximum: int = 8
    scale_up_interval: float = 2.0
    scale_down_after: float = 60.0
    seed: int = 0
    queue: list[float] = field(default_factory=list)
    workers: list[ModelWorker] = field(default_factory=list)
    decisions: list[scaling.Decision] = field(default_factory=list)
    now: float = 0.0

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        self.workers = [ModelWorker(i, until=self.wait_time) for i in range(self.minimum)]
        self.memory: dict = {}

    def run(self, seconds: float, arrivals: float = 0.0, step: float = 0.01) -> None:
        next_arrival = self.now + self.random.expovariate(arrivals) if arrivals else None
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + step, 6)
            while next_arrival is not None and next_arrival <= self.now:
                self.queue.append(next_arrival)
                next_arrival += self.random.expovariate(arrivals)
            pollers = [w for w in self.workers if w.state is WorkerState.POLLING]
            self.random.shuffle(pollers)  # SQS serves concurrent long polls in no set order
            for worker in self.workers:
                self.advance(worker, worker in pollers)
            if abs(self.now - round(self.now)) < step / 2:
                self.decide()

    def advance(self, worker: ModelWorker, polling: bool) -> None:
        now = self.now
        if polling and self.queue:
            taken, self.queue = self.queue[: self.batch_size], self.queue[self.batch_size :]
            # Slot.received: the age counts only after a non-empty receive
            worker.age = now - min(taken) if worker.last_batch else 0.0
            worker.last_batch, worker.batch, worker.sleep = len(taken), taken, 0.0
            worker.state, worker.until = WorkerState.BUSY, now + self.handler
        elif polling and now >= worker.until:  # an empty receive
            if worker.last_batch:
                worker.idle_since = worker.until - self.wait_time
            worker.last_batch = 0
            worker.sleep = min(self.idle_sleep_max, max(1.0, worker.sleep * 2))
            worker.state, worker.until = WorkerState.IDLE, now + worker.sleep
        elif worker.state is WorkerState.BUSY and now >= worker.until:
            worker.batch.pop(0)
            if worker.batch:
                worker.until = now + self.handler
            else:
                worker.state, worker.until = WorkerState.POLLING, now + self.wait_time
        elif worker.state is WorkerState.IDLE and now >= worker.until:
            worker.state, worker.until = WorkerState.POLLING, now + self.wait_time

    def decide(self) -> None:
        signals = tuple(worker_signals(w.index, w.view(), self.batch_size) for w in self.workers)
        current = Pool("q", "", self.minimum, self.maximum, len(self.workers), signals,
                       scale_up_interval=self.scale_up_interval,
                       scale_down_after=self.scale_down_after)
        decisions, self.memory = decide([current], self.memory, budget=0, now=self.now)
        for decision in decisions:
            self.decisions.append(decision)
            if decision.after > decision.before:
                index = max((w.index for w in self.workers), default=-1) + 1
                self.workers.append(ModelWorker(index, WorkerState.STARTING, idle_since=self.now))
                self.workers[-1].state, self.workers[-1].until = (
                    WorkerState.POLLING, self.now + self.wait_time)
            else:
                stopped = decision.worker if decision.worker is not None else self.workers[-1].index
                self.queue[:0] = next(w for w in self.workers if w.index == stopped).batch
                self.workers = [w for w in self.workers if w.index != stopped]


@pytest.mark.parametrize("seed", range(5))
def test_steady_load_at_half_of_one_workers_capacity_makes_no_decision_in_ten_minutes(seed):
    model = Model(seed=seed)
    model.run(600, arrivals=0.5 / model.handler)
    assert len(model.decisions) <= 2, [str(d) for d in model.decisions]
    assert model.decisions == []  # in fact none at all


@pytest.mark.parametrize("seed", range(3))
def test_steady_load_of_one_and_a_half_workers_settles_and_stays(seed):
    model = Model(seed=seed)
    model.run(600, arrivals=1.5 / model.handler)
    ups = [d for d in model.decisions if d.after > d.before]
    assert len(model.workers) in (2, 3) and len(model.decisions) == len(ups) <= 2


@pytest.mark.parametrize("seed", range(3))
def test_slow_handlers_at_half_load_with_batch_size_one_do_not_flap(seed):
    model = Model(seed=seed, handler=2.0, batch_size=1)
    model.run(600, arrivals=0.5 / model.handler)
    assert len(model.decisions) <= 2, [str(d) for d in model.decisions]


def test_a_burst_scales_up_one_at_a_time_then_back_down_once_idle():
    model = Model()
    model.queue = [0.0] * 5000
    model.run(300)
    ups = [d for d in model.decisions if d.after > d.before]
    downs = [d for d in model.decisions if d.after < d.before]
    assert [d.after for d in ups] == [2, 3, 4, 5, 6, 7, 8]
    gaps = [b.at - a.at for a, b in zip(ups[:-1], ups[1:], strict=True)]
    assert min(gaps) >= model.scale_up_interval
    assert ups[-1].at <= 8 * model.scale_up_interval  # the ramp takes about 7 intervals
    assert [d.after for d in downs] == [7, 6, 5, 4, 3, 2, 1]
    assert all("idle" in d.reason for d in downs)
    drained = 5000 * model.handler / 8  # about 31 s at 8 workers, plus the ramp
    assert downs[-1].at <= ups[-1].at + drained + model.scale_down_after + 10
    assert len(model.workers) == 1 and not model.queue


@pytest.mark.parametrize(
    ("handler", "batch_size", "load"),
    [(0.5, 10, 0.9), (2.0, 10, 1.5), (10.0, 10, 0.5), (2.0, 1, 0.5), (0.5, 1, 1.5)],
)
def test_steady_loads_make_at_most_two_decisions_in_any_ten_minutes(handler, batch_size, load):
    """Slower handlers, batches of one message: the count may settle, never flap.

    Not covered, because it does not hold: 10 s handlers at 0.9-1.5 workers' load with
    batches of ten, where one worker sits on 100 s of messages while another idles, and
    10 s handlers with ``batch_size = 1`` at half load, where waits behind one busy worker
    rise long enough to look like a backlog; the model sees 3 to 5 decisions in some ten
    minutes there (an extra worker for a minute, then back)."""
    for seed in range(3):
        model = Model(seed=seed, handler=handler, batch_size=batch_size)
        model.run(1800, arrivals=load / handler, step=0.05)
        times = [d.at for d in model.decisions]
        busiest = max((sum(1 for t in times if start <= t < start + 600) for start in times),
                      default=0)
        assert busiest <= 2, (seed, [f"{d.at:.0f}s {d}" for d in model.decisions])
