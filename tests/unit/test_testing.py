"""sqsd.testing: in-memory queues with the daemon's message semantics, and its pytest fixture."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sqsd
import sqsd.producer
from sqsd.config import Settings
from sqsd.registry import REGISTRY
from sqsd.testing import FailedMessage, RunCounts, queues


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    """Each test registers its own receivers; the registry is restored afterwards."""
    saved = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing under test may create a boto3 client or ping a daemon socket."""

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("sqsd.testing reached for the network")

    monkeypatch.setattr(sqsd.producer, "make_client", forbidden)
    monkeypatch.setattr(sqsd.producer.sqsd_client, "wake", forbidden)


class Recorder:
    """A handler that records what it saw and does what a test tells it to."""

    def __init__(self, *outcomes: BaseException | None):
        self.outcomes = list(outcomes)  # one per call; exhausted = return normally
        self.seen: list[sqsd.Message] = []

    def __call__(self, message: sqsd.Message) -> None:
        self.seen.append(message)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome

    @property
    def bodies(self) -> list[str]:
        return [m.body for m in self.seen]


# -- recording ----------------------------------------------------------------------------


def test_sends_are_recorded_per_queue_and_suffix() -> None:
    sqsd.register("t_emails", Recorder(), suffixes=["big"])
    with queues() as q:
        sqsd.send("t_emails", "plain")
        sqsd.send("t_emails", "large", suffix="big")
        sqsd.send("t_other", {"n": 1})
        assert q["t_emails"].bodies == ["plain"]
        assert q["t_emails", "big"].bodies == ["large"]
        assert q["t_other"].messages[0].json() == {"n": 1}
        assert [m.body for m in q.sent] == ["plain", "large", '{"n":1}']
        assert [queue.url_name for queue in q] == ["t_emails", "t_emails__big", "t_other"]
        assert len(q["never_used"]) == 0


def test_receiver_proxy_and_task_sends_are_recorded() -> None:
    @sqsd.receiver("t_greet")
    def greet(message: sqsd.Message) -> None: ...

    @sqsd.task("t_add")
    def add(a: int, b: int, x: int = 0) -> int:
        return a + b + x

    with queues() as q:
        message_id = greet(body="hi")
        add.delay(1, 2, x=3)
        add.send(args=(4, 5), delay_seconds=300)
        assert q["t_greet"].messages[0].id == message_id
        assert q["t_add"].bodies == ['[[1,2],{"x":3}]', "[[4,5],{}]"]
        assert q["t_add"].messages[1].raw["DelaySeconds"] == 300


def test_messages_are_real_sqsd_messages() -> None:
    class Upper(sqsd.Message):
        @property
        def shout(self) -> str:
            return self.body.upper()

    seen = Recorder()
    sqsd.register("t_real", seen, message_class=Upper)
    with queues(config=Settings(queue_prefix="test_")) as q:
        sqsd.send("t_real", "hey", message_attributes={"trace": "abc", "n": 7})
        waiting = q["t_real"].messages[0]
        assert isinstance(waiting, Upper) and waiting.receive_count == 0
        assert q["t_real"].url_name == "test_t_real"
        q.run_pending()
    message = seen.seen[0]
    assert isinstance(message, Upper) and message.shout == "HEY"
    assert (message.queue, message.suffix, message.receive_count) == ("t_real", "", 1)
    assert message.message_attributes == {"trace": "abc", "n": "7"}
    assert message.id and message.receipt_handle
    assert message.attributes["ApproximateReceiveCount"] == "1"
    assert "SentTimestamp" in message.attributes


def test_the_real_producer_comes_back_and_blocks_nest() -> None:
    before = sqsd.producer._producer
    with queues() as outer:
        with queues() as inner:
            sqsd.send("t_nest", "in")
        sqsd.send("t_nest", "out")
        assert inner["t_nest"].bodies == ["in"]
        assert outer["t_nest"].bodies == ["out"]
    assert sqsd.producer._producer is before


# -- running ------------------------------------------------------------------------------


def test_run_pending_runs_receivers_and_removes_handled_messages() -> None:
    seen = Recorder()
    sqsd.register("t_run", seen)
    with queues() as q:
        sqsd.send("t_run", "a")
        sqsd.send("t_run", "b")
        sqsd.send("t_nobody", "c")  # no receiver: waits, like a queue no worker reads
        assert seen.seen == []
        assert q.run_pending() == RunCounts(processed=2)
        assert seen.bodies == ["a", "b"]
        assert q["t_run"].messages == []
        assert q["t_run"].bodies == [] and len(q["t_run"].sent) == 2
        assert q["t_nobody"].bodies == ["c"]


def test_run_pending_follows_chains_and_can_be_limited_to_queues() -> None:
    @sqsd.receiver("t_orders")
    def take_order(message: sqsd.Message) -> None:
        confirm(f"confirm {message.body}")

    confirmations = Recorder()
    confirm = sqsd.receiver("t_confirm")(confirmations)
    with queues() as q:
        take_order("o1")
        assert q.run_pending("t_confirm") == RunCounts()
        assert q.run_pending() == RunCounts(processed=2)
        assert confirmations.bodies == ["confirm o1"]


def test_a_handler_that_keeps_sending_is_stopped() -> None:
    @sqsd.receiver("t_loop")
    def again(message: sqsd.Message) -> None:
        again("more")

    with queues() as q:
        again("start")
        assert q.run_pending(limit=3) == RunCounts(processed=3)
        assert q["t_loop"].bodies == ["more"]
        with pytest.raises(RuntimeError, match="keeps sending to 't_loop'"):
            q.run_pending()


def test_eager_runs_the_receiver_at_send_time() -> None:
    seen = Recorder()
    sqsd.register("t_eager", seen)
    with queues(eager=True) as q:
        sqsd.send("t_eager", "now")
        assert seen.bodies == ["now"]
        assert q["t_eager"].messages == []
        assert [m.body for m in q["t_eager"].sent] == ["now"]


def test_eager_sends_from_a_handler_to_its_own_queue_wait() -> None:
    @sqsd.receiver("t_self")
    def again(message: sqsd.Message) -> None:
        if message.body == "first":
            again("second")

    with queues(eager=True) as q:
        again("first")
        assert q["t_self"].bodies == ["second"]
        assert q.run_pending() == RunCounts(processed=1)


def test_silent_records_without_running_anything() -> None:
    seen = Recorder()
    sqsd.register("t_silent", seen)
    with queues(eager=True, silent=True) as q:
        sqsd.send("t_silent", "quiet")
        assert q.run_pending() == RunCounts()
        assert seen.seen == []
        assert q["t_silent"].bodies == ["quiet"]


# -- outcomes -----------------------------------------------------------------------------


def test_restart_later_leaves_the_message_and_its_receive_count_grows() -> None:
    seen = Recorder(sqsd.RestartLater("not yet", delay=30), sqsd.TransientError())
    sqsd.register("t_later", seen)
    with queues() as q:
        sqsd.send("t_later", "job")
        assert q.run_pending() == RunCounts(retried=1)
        assert q["t_later"].messages[0].receive_count == 1
        assert q.run_pending() == RunCounts(retried=1)
        assert q.run_pending() == RunCounts(processed=1)
        assert [m.receive_count for m in seen.seen] == [1, 2, 3]
        assert q["t_later"].messages == [] and q.failed == []


def test_error_policy_delete_is_the_default_and_records_the_failure() -> None:
    error = ValueError("boom")
    sqsd.register("t_delete", Recorder(error))
    with queues() as q:
        sqsd.send("t_delete", "bad")
        assert q.run_pending() == RunCounts(failed=1)
        assert q["t_delete"].messages == []
        [failure] = q.failed
        assert isinstance(failure, FailedMessage)
        assert (failure.queue, failure.message.body, failure.error) == (
            "t_delete",
            "bad",
            "ValueError: boom",
        )
        assert failure.exception is error


def test_error_policy_retry_leaves_the_message() -> None:
    sqsd.register("t_retry", Recorder(ValueError("boom")), on_error="retry")
    with queues() as q:
        sqsd.send("t_retry", "flaky")
        assert q.run_pending() == RunCounts(failed=1)
        assert q["t_retry"].bodies == ["flaky"]
        assert len(q.failed) == 1
        assert q.run_pending() == RunCounts(processed=1)


def test_error_policy_dead_letter_moves_the_message_to_the_dlq() -> None:
    sqsd.register("t_dl", Recorder(KeyError("x")), dead_letter_queue="t_dl_failed")
    with queues() as q:
        sqsd.send("t_dl", "poison", message_attributes={"trace": "abc"})
        assert q.run_pending() == RunCounts(failed=1, dead_lettered=1)
        assert q["t_dl"].messages == []
        [dead] = q["t_dl_failed"].messages
        assert dead.body == "poison"
        assert dead.message_attributes == {
            "trace": "abc",
            "sqsd_error": "KeyError: 'x'",
            "sqsd_queue": "t_dl",
            "sqsd_receive_count": "1",
        }
        assert len(q.failed) == 1  # the failed-messages log has the body too


def test_max_retries_sends_to_the_dlq_without_calling_the_handler() -> None:
    seen = Recorder(sqsd.RestartLater(), sqsd.RestartLater(), sqsd.RestartLater())
    sqsd.register("t_max", seen, max_retries=1, dead_letter_queue="t_max_dlq")
    with queues() as q:
        sqsd.send("t_max", "stubborn")
        assert q.run_pending() == RunCounts(retried=1)
        assert q.run_pending() == RunCounts(retried=1)
        assert q.run_pending() == RunCounts(dead_lettered=1)
        assert len(seen.seen) == 2  # received 3 times, handled max_retries + 1 times
        [dead] = q["t_max_dlq"].messages
        assert dead.message_attributes["sqsd_error"] == "received 3 times (max_retries)"
        assert q.failed == []


def test_max_retries_without_a_dlq_records_the_message_as_failed() -> None:
    sqsd.register("t_max0", Recorder(sqsd.RestartLater()), max_retries=0, on_error="retry")
    with queues() as q:
        sqsd.send("t_max0", "once")
        q.run_pending()
        assert q.run_pending() == RunCounts(dead_lettered=1)
        [failure] = q.failed
        assert failure.exception is None
        assert failure.error == "received 2 times (max_retries)"
        assert q["t_max0"].messages == []


def test_delete_on_start_removes_the_message_whatever_the_outcome() -> None:
    sqsd.register("t_dos", Recorder(sqsd.RestartLater()), delete_on_start=True)
    with queues() as q:
        sqsd.send("t_dos", "at most once")
        assert q.run_pending() == RunCounts(retried=1)
        assert q["t_dos"].messages == []


def test_fifo_keeps_each_group_in_order() -> None:
    seen = Recorder(sqsd.RestartLater())
    sqsd.register("t_orders.fifo", seen)
    with queues() as q:
        sqsd.send("t_orders.fifo", "a1", group_id="a")
        sqsd.send("t_orders.fifo", "a2", group_id="a")
        sqsd.send("t_orders.fifo", "b1", group_id="b")
        assert q.run_pending() == RunCounts(retried=1, processed=1)
        assert seen.bodies == ["a1", "b1"]  # a2 waits behind a1
        assert q.run_pending() == RunCounts(processed=2)
        assert seen.bodies == ["a1", "b1", "a1", "a2"]
        assert seen.seen[0].group_id == "a"


def test_fifo_deduplicates_sends() -> None:
    with queues() as q:
        first = sqsd.send("t_dedup.fifo", "same")
        assert sqsd.send("t_dedup.fifo", "same") == first
        sqsd.send("t_dedup.fifo", "same", dedup_id="explicit")
        assert q["t_dedup.fifo"].bodies == ["same", "same"]


def test_suffixes_reach_the_handler_and_unknown_ones_wait() -> None:
    seen = Recorder()
    sqsd.register("t_suffix", seen, suffixes=["big"])
    with queues() as q:
        sqsd.send("t_suffix", "large", suffix="big")
        sqsd.send("t_suffix", "odd", suffix="unknown")  # the producer warns; no worker reads it
        assert q.run_pending() == RunCounts(processed=1)
        assert [(m.body, m.suffix) for m in seen.seen] == [("large", "big")]
        assert q["t_suffix", "unknown"].bodies == ["odd"]


# -- settings from configuration ----------------------------------------------------------


def test_configuration_overrides_code_options(tmp_path: Path) -> None:
    config = tmp_path / "sqsd.toml"
    config.write_text(
        textwrap.dedent(
            """
            [sqsd]
            queue_prefix = "ci_"

            [queues.t_conf]
            on_error = "retry"
            after_message = "{module}:after_message_hook"
            """
        ).format(module=__name__)
    )
    sqsd.register("t_conf", Recorder(ValueError("boom")), on_error="delete")
    AFTER.clear()
    with queues(config=config) as q:
        sqsd.send("t_conf", "kept")
        assert q["t_conf"].url_name == "ci_t_conf"
        assert q.run_pending() == RunCounts(failed=1)
        assert q["t_conf"].bodies == ["kept"]
    assert AFTER == ["kept"]


def test_configured_producer_settings_are_used_by_default() -> None:
    before = sqsd.producer._producer
    sqsd.producer._producer = sqsd.producer.Producer(Settings(queue_prefix="app_"))
    try:
        with queues() as q:
            assert q["x"].url_name == "app_x"
    finally:
        sqsd.producer._producer = before


def test_a_receiver_named_in_configuration_runs() -> None:
    settings = Settings(queues={"t_named": {"receiver": f"{__name__}:named_receiver"}})
    AFTER.clear()
    with queues(config=settings) as q:
        sqsd.send("t_named", json.dumps({"n": 2}))
        assert q.run_pending() == RunCounts(processed=1)
    assert AFTER == ['{"n": 2}']


AFTER: list[str] = []


def after_message_hook(message: sqsd.Message) -> None:
    AFTER.append(message.body)


def named_receiver(message: sqsd.Message) -> None:
    AFTER.append(message.body)


# -- the pytest plugin --------------------------------------------------------------------


def test_fixture_records_sends(sqsd_queues: sqsd.testing.Queues) -> None:
    sqsd.register("t_fixture", Recorder())
    sqsd.send("t_fixture", "via fixture")
    assert sqsd_queues["t_fixture"].bodies == ["via fixture"]
    assert not sqsd_queues.eager


@pytest.mark.sqsd(eager=True)
def test_marker_passes_options_to_the_fixture(sqsd_queues: sqsd.testing.Queues) -> None:
    seen = Recorder()
    sqsd.register("t_marked", seen)
    sqsd.send("t_marked", "eager")
    assert seen.bodies == ["eager"]
    assert sqsd_queues["t_marked"].messages == []


def test_async_receivers_and_tasks_are_awaited_with_the_same_outcomes() -> None:
    import asyncio

    bodies: list[str] = []

    @sqsd.receiver("t_async")
    async def handle(message: sqsd.Message) -> None:
        await asyncio.sleep(0)
        bodies.append(message.body)
        if message.body == "fail":
            raise ValueError("async boom")

    @sqsd.task("t_async_task")
    async def add(a: int, b: int) -> None:
        bodies.append(f"{a}+{b}")

    with queues() as q:
        sqsd.send("t_async", "ok")
        sqsd.send("t_async", "fail")
        add.delay(1, 2)
        assert q.run_pending() == RunCounts(processed=2, failed=1)
        assert bodies == ["ok", "fail", "1+2"]

        async def inside_a_loop() -> RunCounts:  # an async test calling run_pending()
            sqsd.send("t_async", "again")
            return q.run_pending()

        assert asyncio.run(inside_a_loop()) == RunCounts(processed=1)
        assert bodies[-1] == "again"
