"""Regression tests for issue #10: a message leaves its queue only after its handler ran.

One test per numbered item of the issue, each against real ``sqsd run`` processes and the
moto server, each written to the contract of the issue's "What to build":

1. a worker crash is blamed only on the message whose handler was running; ``max_retries``
   counts handler starts, not receives
2. messages given back at a graceful stop survive a restart of the daemon
3. ``async def`` receivers and tasks are awaited, and their failures follow ``on_error``
4. ``sys.exit()`` in a handler is a handler failure; the worker and the daemon go on
5. no message attribute a producer can set crashes a worker
6. a handler that forks: only the worker carries on with the batch, the child is reaped
7. config floors (``sqsd run`` refuses ``visibility_timeout = 0`` and a tight receive loop)
8. a slow DeleteMessageBatch does not starve the visibility heartbeat
9. ``Failed`` entries of DeleteMessageBatch / ChangeMessageVisibilityBatch are retried

Handlers are :mod:`tests.receivers.atleastonce`; the body chooses what happens. Messages
are accounted for with the chaos suite's :class:`~tests.chaos.ledger.Ledger`, and each
test prints one JSON line of figures (sent / handled / dead-lettered / lost).
"""

from __future__ import annotations

from typing import Any

import psutil
import pytest
from conftest import queue_counts

from sqsd.message import encode_call
from tests.support.figures import (
    assert_nothing_dropped,
    create_queue,
    ledger_fixture,
    report,
    settle,
)
from tests.support.proxy import SQSProxy

RECEIVER = "tests.receivers.atleastonce:handle"
DOWN = ("starting", "crashloop", "fatal", "exited", "stopping", None)

pytestmark = pytest.mark.timeout(90)


ledger = ledger_fixture("at-least-once")


def starts(harness, key: str) -> list[dict[str, Any]]:
    """The handler starts recorded for one body."""
    return harness.records("start", key=key)


def program_status(daemon, queue: str) -> list[dict[str, Any]]:
    return [w for w in daemon.status()["workers"] if w["queue"] == queue]


# -- 1. a crash is blamed on the running message only -----------------------------------


def test_crash_mid_batch_dead_letters_only_the_crashing_message_after_max_retries_plus_one_starts(
    harness, ledger
):
    max_retries = 1
    queues = {"crash": {"receiver": RECEIVER, "max_retries": max_retries,
                        "dead_letter_queue": "crash_dlq", "batch_size": 10}}
    create_queue(harness, "crash")
    ledger.dead_letter_queues.append("crash_dlq")
    innocents = [f"ok|ok{n}" for n in range(1, 5)]
    ledger.send("crash", ["crash|c1", *innocents],
                expect=lambda body: "dead" if body.startswith("crash") else "handled")
    daemon = harness.start(queues, ready=False)

    settle(ledger, daemon, ["crash"], timeout=45)

    crash_starts = len(starts(harness, "crash|c1"))
    figures = report("crash_mid_batch", ledger, crash_starts=crash_starts,
                     innocent_starts={b: len(starts(harness, b)) for b in innocents})
    assert_nothing_dropped(figures)
    assert ledger.dead_lettered["crash|c1"] == 1
    assert crash_starts == max_retries + 1, "the crashing message is dead-lettered after " \
        f"exactly max_retries + 1 = {max_retries + 1} handler starts, not {crash_starts}"
    handled = ledger.handled()
    for body in innocents:
        assert handled[body] >= 1, f"{body} never ran"
        assert not ledger.dead_lettered[body], f"{body} was dead-lettered"


# -- 2. give-backs survive a restart ------------------------------------------------------


def test_messages_given_back_at_a_graceful_stop_are_handled_after_a_restart(harness, ledger):
    queues = {"graceful": {"receiver": RECEIVER, "max_retries": 0,
                           "dead_letter_queue": "graceful_dlq", "batch_size": 10}}
    create_queue(harness, "graceful")
    ledger.dead_letter_queues.append("graceful_dlq")
    rest = ["ok|g1", "ok|g2", "ok|g3"]
    ledger.send("graceful", ["sleep:3|slow", *rest])
    first = harness.start(queues, ready=False)
    harness.wait_for_records(1, event="start", key="sleep:3|slow", timeout=20)

    assert first.terminate() == 0  # graceful: slow finishes, g1..g3 are given back unstarted
    given_back_unstarted = all(not starts(harness, b) for b in rest)
    second = harness.start(queues, ready=False)
    settle(ledger, second, ["graceful"], timeout=30)

    figures = report("given_back_then_restarted", ledger,
                     given_back_unstarted=given_back_unstarted,
                     slow_starts=len(starts(harness, "sleep:3|slow")))
    assert_nothing_dropped(figures)
    assert figures["slow_starts"] == 1
    handled = ledger.handled()
    for body in rest:
        assert handled[body] >= 1, f"{body} never ran"
        assert not ledger.dead_lettered[body], f"{body} was dead-lettered unrun"


# -- 3. async def receivers and tasks run -------------------------------------------------


def test_async_receiver_and_async_task_are_awaited_and_failures_follow_on_error(
    harness, ledger
):
    max_retries = 1
    policy = {"on_error": "retry", "max_retries": max_retries}
    queues = {
        "async": {"receiver": "tests.receivers.atleastonce:ahandle",
                  "dead_letter_queue": "async_dlq", **policy},
        "atask": {"receiver": "tests.receivers.atleastonce:atask",
                  "dead_letter_queue": "atask_dlq", **policy},
    }
    ledger.dead_letter_queues += ["async_dlq", "atask_dlq"]
    daemon = harness.start(queues)
    ledger.send("async", ["ok|a1", "ok|a2"])
    ledger.send("async", ["fail|a3"], expect="dead")
    tasks_ok = [encode_call([tag], {}) for tag in ("t1", "t2")]
    task_fail = encode_call(["fail-t3"], {})
    ledger.send("atask", tasks_ok)
    ledger.send("atask", [task_fail], expect="dead")

    settle(ledger, daemon, ["async", "atask"], timeout=45)

    failing_starts = {"fail|a3": len(starts(harness, "fail|a3")),
                      task_fail: len(starts(harness, task_fail))}
    figures = report("async_handlers", ledger, failing_starts=failing_starts)
    assert_nothing_dropped(figures)
    handled = ledger.handled()
    for body in ["ok|a1", "ok|a2", *tasks_ok]:
        assert handled[body] >= 1, f"{body}: its coroutine never ran to the end"
    for body, count in failing_starts.items():
        assert ledger.dead_lettered[body] == 1, f"{body} not dead-lettered"
        assert count == max_retries + 1, f"{body}: {count} starts before dead-lettering"
    assert "never awaited" not in daemon.log_text()


# -- 4. sys.exit() in a handler is a handler failure --------------------------------------


def test_sys_exit_in_a_handler_is_a_handler_failure_and_the_worker_goes_on(harness, ledger):
    queues = {"sysexit": {"receiver": RECEIVER, "dead_letter_queue": "sysexit_dlq"}}
    ledger.dead_letter_queues.append("sysexit_dlq")
    daemon = harness.start(queues)
    workers_before = daemon.worker_pids()
    exits = ["sysexit|x1", "sysexit:0|x2"]
    innocents = ["ok|o1", "ok|o2"]
    ledger.send("sysexit", [exits[0], innocents[0], exits[1], innocents[1]],
                expect=lambda body: "dead" if body in exits else "handled")

    settle(ledger, daemon, ["sysexit"], timeout=15)

    [program] = program_status(daemon, "sysexit")
    figures = report("sys_exit", ledger, exit_starts={b: len(starts(harness, b)) for b in exits},
                     restarts=program["restarts"], state=program["state"],
                     worker_replaced=daemon.worker_pids() != workers_before)
    assert_nothing_dropped(figures)
    assert daemon.proc.poll() is None, "the daemon exited"
    assert program["state"] not in DOWN, program
    assert program["restarts"] == 0, program
    assert daemon.worker_pids() == workers_before, "the worker exited"
    for body in exits:
        assert ledger.dead_lettered[body] == 1, f"{body} not dead-lettered (on_error)"
        assert figures["exit_starts"][body] == 1
    logged = {line.get("body") for line in harness.failed_lines()}
    assert set(exits) <= logged, f"bodies missing from the failed log: {logged}"
    log = daemon.log_text()
    assert "SystemExit" in log and "Traceback" in log


# -- 5. hostile message attributes --------------------------------------------------------

HOSTILE = [
    ("nan", "String"), ("inf", "String"), ("-5", "String"), ("abc", "String"),
    ("1e400", "String"), ("-5", "Number"),
]


def test_hostile_sqsd_not_before_values_are_ignored_and_never_crash_the_worker(harness, ledger):
    queues = {"hostile": {"receiver": RECEIVER, "dead_letter_queue": "hostile_dlq"}}
    ledger.dead_letter_queues.append("hostile_dlq")
    daemon = harness.start(queues)
    workers_before = daemon.worker_pids()
    for value, data_type in HOSTILE:
        ledger.send("hostile", [f"ok|{data_type}:{value}"],
                    attributes={"sqsd_not_before": {"DataType": data_type, "StringValue": value}})

    settle(ledger, daemon, ["hostile"], timeout=20)

    [program] = program_status(daemon, "hostile")
    figures = report("hostile_attributes", ledger, restarts=program["restarts"],
                     state=program["state"])
    assert_nothing_dropped(figures)
    assert figures["handled"] == len(HOSTILE)
    assert program["restarts"] == 0 and program["state"] not in DOWN, program
    assert daemon.worker_pids() == workers_before


# -- 6. a handler that forks ---------------------------------------------------------------


def test_a_handler_that_forks_leaves_the_batch_to_the_worker_and_no_child_behind(
    harness, ledger
):
    queues = {"forks": {"receiver": RECEIVER, "batch_size": 10}}
    create_queue(harness, "forks")
    bodies = ["fork|f1", "ok|f2", "fork|f3", "ok|f4"]
    ledger.send("forks", bodies)
    daemon = harness.start(queues, ready=False)

    settle(ledger, daemon, ["forks"], timeout=20)
    children = [r["child"] for r in harness.records("forked")]

    def leftovers() -> list[int]:
        return [pid for pid in children if psutil.pid_exists(pid)]  # zombies count

    def strays() -> set[int]:
        workers = daemon.worker_pids()
        return {p.pid for p in daemon.descendants() if p.pid not in workers} - \
            daemon.query_children()

    children_gone = True
    try:
        harness.wait_for(lambda: not leftovers() and not strays(), timeout=5,
                         what="forked children reaped")
    except AssertionError:
        children_gone = False
    start_counts = {b: len(starts(harness, b)) for b in bodies}
    start_pids = {r["pid"] for r in harness.records("start") if r["key"] in bodies}
    figures = report("forking_handler", ledger, starts=start_counts,
                     handler_pids=len(start_pids), children=len(children),
                     children_left=leftovers())
    assert_nothing_dropped(figures)
    assert start_counts == dict.fromkeys(bodies, 1), "a forked child carried on with the batch"
    assert len(start_pids) == 1, f"handlers ran in {len(start_pids)} processes"
    assert figures["duplicates"] == 0
    assert len(children) == 2
    assert children_gone, f"forked children left: {leftovers()}, strays: {strays()}"


# -- 7. config floors ----------------------------------------------------------------------


@pytest.mark.parametrize(("defaults", "key"), [
    ({"visibility_timeout": 0}, "visibility_timeout"),
    ({"wait_time_seconds": 0, "idle_sleep_max": 0}, "wait_time_seconds"),
])
def test_sqsd_run_refuses_config_below_the_floors(harness, defaults, key):
    config = harness.write_config({"basic": {"receiver": RECEIVER}}, defaults=defaults)

    result = harness.run_sqsd("run", "-c", str(config))

    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert key in line and str(config) in line
    assert not harness.socket_path.exists()


# -- 8 and 9. the heartbeat against slow and partly failing batch calls ---------------------


@pytest.fixture
def proxy(sqs_endpoint):
    with SQSProxy(sqs_endpoint, stall_seconds=8.0) as running:
        yield running


def test_a_slow_delete_does_not_let_a_running_message_become_visible_again(
    harness, ledger, proxy
):
    # Two processes: if the long message's visibility lapsed, the idle one would take it.
    queues = {"slowdel": {"receiver": RECEIVER, "processes": 2, "batch_size": 10}}
    create_queue(harness, "slowdel")
    ledger.send("slowdel", ["ok|d1", "sleep:9|long"])
    proxy.action_faults["DeleteMessageBatch"] = "stall"  # 8 s > visibility_timeout
    daemon = harness.start(queues, ready=False, endpoint_url=proxy.url)
    # Only the first delete (d1's, while `long` runs) is slow.
    harness.wait_for(lambda: proxy.counts()["DeleteMessageBatch"], timeout=20,
                     what="the first DeleteMessageBatch")
    proxy.action_faults.clear()

    settle(ledger, daemon, ["slowdel"], timeout=40)

    long_starts = len(starts(harness, "sleep:9|long"))
    figures = report("slow_delete", ledger, long_starts=long_starts,
                     calls=dict(proxy.counts()))
    assert_nothing_dropped(figures)
    assert long_starts == 1, "the running message was delivered again while it ran"
    assert figures["duplicates"] == 0


def test_failed_entries_of_delete_message_batch_are_retried(harness, ledger, proxy):
    queues = {"delfail": {"receiver": RECEIVER}}
    daemon = harness.start(queues, endpoint_url=proxy.url)
    proxy.fail_batch_entries("DeleteMessageBatch", times=1)
    ledger.send("delfail", ["ok|e1"])

    # Deleted at last (the queue is empty): nothing can come back after this.
    settle(ledger, daemon, ["delfail"], timeout=20)

    e1_starts = len(starts(harness, "ok|e1"))
    figures = report("delete_failed_entries", ledger, e1_starts=e1_starts,
                     delete_batches=proxy.counts()["DeleteMessageBatch"])
    assert_nothing_dropped(figures)
    assert e1_starts == 1, "the delete's Failed entry was not retried: the message came back"
    assert figures["delete_batches"] >= 2


def test_failed_entries_of_the_visibility_heartbeat_are_retried(harness, ledger, proxy):
    # visibility_timeout 10: extensions are due every 5 s. The first two extension calls
    # answer with a transient Failed entry (in a successful response). Retried with backoff
    # well before the deadline, the third keeps the message hidden; ignored, the next
    # regular extension comes after the visibility lapsed, and the idle second process
    # takes the message while it still runs.
    queues = {"hbfail": {"receiver": RECEIVER, "processes": 2, "visibility_timeout": 10}}
    daemon = harness.start(queues, endpoint_url=proxy.url)
    proxy.fail_batch_entries("ChangeMessageVisibilityBatch", times=2)
    ledger.send("hbfail", ["sleep:14|hb"])

    settle(ledger, daemon, ["hbfail"], timeout=45)

    hb_starts = len(starts(harness, "sleep:14|hb"))
    figures = report("heartbeat_failed_entries", ledger, hb_starts=hb_starts,
                     visibility_batches=proxy.counts()["ChangeMessageVisibilityBatch"])
    assert_nothing_dropped(figures)
    assert hb_starts == 1, "a failed heartbeat entry was ignored: the message ran twice"


def test_failed_entries_of_a_give_back_are_retried(harness, ledger, proxy):
    # A graceful stop gives back received but unstarted messages (visibility 0) with
    # ChangeMessageVisibilityBatch; its first call answers every entry Failed. Retried, the
    # messages are visible again as soon as the daemon is gone; ignored, they stay hidden
    # until their visibility timeout (5 s after the receive).
    queues = {"gbfail": {"receiver": RECEIVER, "batch_size": 10}}
    create_queue(harness, "gbfail")
    rest = ["ok|b1", "ok|b2", "ok|b3"]
    ledger.send("gbfail", ["sleep:1.5|first", *rest])  # shorter than half the visibility
    first = harness.start(queues, ready=False, endpoint_url=proxy.url)
    harness.wait_for_records(1, event="start", key="sleep:1.5|first", timeout=20)
    proxy.fail_batch_entries("ChangeMessageVisibilityBatch", times=1)

    assert first.terminate() == 0
    # Visible again at once: within a second of the daemon's exit, while their visibility
    # timeout still has over 3 s to run.
    try:
        harness.wait_for(lambda: queue_counts(harness, "gbfail")[0] == len(rest), timeout=1.0,
                         what="the given-back messages visible again")
        visible_at_once = True
    except AssertionError:
        visible_at_once = False
    second = harness.start(queues, ready=False)
    settle(ledger, second, ["gbfail"], timeout=30)

    figures = report("give_back_failed_entries", ledger, visible_at_once=visible_at_once,
                     visibility_batches=proxy.counts()["ChangeMessageVisibilityBatch"])
    assert_nothing_dropped(figures)
    assert visible_at_once, "a give-back's Failed entries were not retried: the messages " \
        "stayed hidden until their visibility timeout"
    assert figures["visibility_batches"] >= 2
