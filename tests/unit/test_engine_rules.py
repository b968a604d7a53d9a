"""Worker engine v2 (#12) rules that need no process: the hold rule, async handler
detection, hang detection with several slots, autoscaling's busy slots and the scoreboard
fields behind status."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from sqsd import scoreboard
from sqsd.config import QueueSettings
from sqsd.decorators import ReceiverProxy, Task
from sqsd.engine import Engine, Job, is_async_handler
from sqsd.message import Message
from sqsd.scaling import worker_signals
from sqsd.states import SlotView, WorkerState, hang_reason


def slot() -> scoreboard.Slot:
    return scoreboard.Scoreboard(size=1).allocate()


def engine(concurrency: int = 4, hold_seconds: float = 2.0, batch_size: int = 10, **worker):
    queue = QueueSettings(
        name="q", concurrency=concurrency, hold_seconds=hold_seconds, batch_size=batch_size
    )
    fake = SimpleNamespace(
        queue=queue,
        slot=slot(),
        recycle_after=worker.get("recycle_after", 0),
        message_limit=worker.get("message_limit", 0),
        handled=worker.get("handled", 0),
        _set_title=lambda state, busy=None: None,
    )
    return Engine(fake)


def message(n: int) -> Message:
    return Message({"MessageId": f"m{n}", "ReceiptHandle": f"r{n}", "Body": "x"}, "q", "")


def test_before_any_measurement_a_worker_asks_only_for_its_free_slots():
    e = engine(concurrency=4)
    assert e.wanted() == 4
    e.jobs = 3
    assert e.wanted() == 1
    e.jobs = 4
    assert e.wanted() == 0


def test_once_measured_it_also_asks_for_what_can_start_within_hold_seconds():
    e = engine(concurrency=2, hold_seconds=2.0)
    e.jobs = 2
    e.running.mean = 2.0  # two slots free up every 2 s: 2 more can start within 2 s
    assert e.wanted() == 2
    e.held.append(Job([message(1)], 0.0))
    assert e.wanted() == 1
    e.running.mean = 0.001  # fast handlers: a full batch, never more
    assert e.wanted() == 10


def test_a_worker_about_to_recycle_takes_no_more_than_it_will_handle():
    e = engine(concurrency=4, recycle_after=6, handled=4)
    assert e.wanted() == 2


def test_held_jobs_of_a_running_fifo_group_wait_and_one_job_per_slot_starts():
    e = engine(concurrency=2)
    e.held.extend([Job([message(1)], 0.0, "g"), Job([message(2)], 0.0, "g"),
                   Job([message(3)], 0.0, "h")])
    with e.lock:
        first, second = e.take(), e.take()
        assert [first.group, second.group] == ["g", "h"]
        assert e.take() is None  # both slots taken
        e.done(first)
        assert e.take().messages[0].id == "m2"


def test_async_handlers_are_found_behind_receiver_proxies_and_tasks():
    async def handle(message):
        return None

    def plain(message):
        return None

    assert is_async_handler(handle)
    assert is_async_handler(ReceiverProxy("q", handle, Message).direct)
    assert is_async_handler(Task("q", handle).handle)
    assert not is_async_handler(plain)
    assert not is_async_handler(ReceiverProxy("q", plain, Message).direct)


def test_the_slot_publishes_busy_and_total_slots_and_the_oldest_running_message():
    s = slot()
    s.set_slots(4)
    s.set_running(3, 100.0, "oldest")
    view = s.read()
    assert (view.busy, view.slots, view.asyncio) == (3, 4, False)
    assert (view.state, view.message_started, view.message_id) == (
        WorkerState.BUSY, 100.0, "oldest")
    s.set_running(0, 0.0, "")
    assert s.read().busy == 0 and s.read().state is WorkerState.POLLING
    s.set_slots(256, asyncio=True)
    assert s.read().asyncio


def test_counters_survive_threads_adding_at_once():
    s = slot()

    def add():
        for _ in range(20000):
            s.add(scoreboard.PROCESSED)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert s.read().counters["processed"] == 80000


def busy_view(busy: int, slots: int, *, asyncio: bool = False) -> SlotView:
    return SlotView(WorkerState.BUSY, 0.0, 0.0, 100.0, 0.0, {}, "m1", busy=busy, slots=slots,
                    asyncio=asyncio)


def test_hard_timeout_on_a_thread_waits_for_the_other_handlers_up_to_graceful_timeout():
    queue = QueueSettings(name="q", hard_timeout=10, graceful_timeout=30, concurrency=4)
    assert hang_reason(queue, busy_view(3, 4), 111.0) == ""  # others still run
    assert "past hard_timeout" in hang_reason(queue, busy_view(1, 4), 111.0)  # alone now
    assert "past hard_timeout" in hang_reason(queue, busy_view(3, 4), 141.0)  # waited enough


def test_hard_timeout_on_an_async_handler_is_the_worker_s_to_cancel():
    queue = QueueSettings(name="q", hard_timeout=10, concurrency=4)
    assert hang_reason(queue, busy_view(1, 4, asyncio=True), 112.0) == ""
    assert "past hard_timeout" in hang_reason(queue, busy_view(1, 4, asyncio=True), 116.0)


def test_autoscaling_counts_a_worker_busy_only_when_all_its_slots_are():
    signals = worker_signals(0, busy_view(3, 4), batch_size=10)
    assert (signals.busy, signals.slots) == (3, 4)
    assert worker_signals(0, busy_view(1, 1), batch_size=10).busy == 1
