"""sqsd.outcome: what becomes of a message, as pure functions over plain inputs.

Each table row is one situation; the queue's dead-letter queue (present or not) and
delete_on_start are crossed with every row where they do not change the answer, and
``GIVE_UP`` in a row stands for DEAD_LETTER with a dead-letter queue, DROP without.
"""

from __future__ import annotations

import itertools

import pytest

from sqsd.config import QueueSettings
from sqsd.errors import RestartLater
from sqsd.outcome import (
    DLQ_ERROR_ATTRIBUTE,
    Action,
    Decision,
    Rules,
    after_handler,
    before_handler,
    dead_letter_attributes,
    describe,
    give_up,
    retry_delay,
)

POLICIES = ("delete", "retry", "dead-letter")
MAX_RETRIES = 2
RECEIVE_LIMIT = 30
GIVE_UP = "give up"
BOOM = ValueError("boom")

# Every queue variant the orthogonal settings make: (dead-letter queue, delete_on_start).
VARIANTS = list(itertools.product((True, False), (False, True)))


def rules(policy: str = "delete", *, dead_letter: bool = False, delete_on_start: bool = False,
          max_retries: int = MAX_RETRIES, receive_limit: int = RECEIVE_LIMIT) -> Rules:
    return Rules(policy, max_retries, receive_limit, delete_on_start, dead_letter)


def expected(action: Action | str, reason: str, dead_letter: bool) -> Decision:
    if action == GIVE_UP:
        return Decision(Action.DEAD_LETTER if dead_letter else Action.DROP, reason)
    assert isinstance(action, Action)
    return Decision(action, reason)


# -- before the handler -----------------------------------------------------------------------

# (receive count, starts recorded so far, action, reason): the worker's table of starts.
BEFORE = [
    (1, 0, Action.RUN, ""),
    (2, 1, Action.RUN, ""),  # starts below max_retries
    (3, 2, Action.RUN, ""),  # at max_retries: one more start allowed
    (4, 3, GIVE_UP, "handler started 3 times (max_retries)"),  # above
    (9, 7, GIVE_UP, "handler started 7 times (max_retries)"),
    (29, 0, Action.RUN, ""),  # receives below max_receives
    (30, 0, Action.RUN, ""),  # at max_receives
    (31, 0, GIVE_UP, "received 31 times (max_receives)"),  # above: the safety net
    (31, 2, GIVE_UP, "received 31 times (max_receives)"),
    (31, 3, GIVE_UP, "handler started 3 times (max_retries)"),  # both: the starts speak first
]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(("dead_letter", "delete_on_start"), VARIANTS)
@pytest.mark.parametrize(("receive_count", "starts", "action", "reason"), BEFORE)
def test_before_the_handler_it_runs_or_is_given_up_on(
    policy, dead_letter, delete_on_start, receive_count, starts, action, reason
):
    queue = rules(policy, dead_letter=dead_letter, delete_on_start=delete_on_start)
    decision = before_handler(queue, receive_count=receive_count, starts=starts)
    assert decision == expected(action, reason, dead_letter)
    assert decision.gives_up == (action == GIVE_UP)


# Without a table of starts (sqsd.testing): every earlier receive was a start.
BEFORE_WITHOUT_STARTS = [
    (1, Action.RUN, ""),
    (3, Action.RUN, ""),  # max_retries + 1 receives: max_retries + 1 starts
    (4, GIVE_UP, "received 4 times (max_retries)"),
    (31, GIVE_UP, "received 31 times (max_retries)"),
]


@pytest.mark.parametrize(("dead_letter", "delete_on_start"), VARIANTS)
@pytest.mark.parametrize(("receive_count", "action", "reason"), BEFORE_WITHOUT_STARTS)
def test_without_a_start_table_the_receive_count_stands_for_the_starts(
    dead_letter, delete_on_start, receive_count, action, reason
):
    queue = rules("retry", dead_letter=dead_letter, delete_on_start=delete_on_start)
    decision = before_handler(queue, receive_count=receive_count, starts=None)
    assert decision == expected(action, reason, dead_letter)


def test_without_a_start_table_max_receives_is_not_applied():
    queue = rules(max_retries=5, receive_limit=2)
    assert before_handler(queue, receive_count=3, starts=None).action is Action.RUN
    assert before_handler(queue, receive_count=3, starts=0).reason == (
        "received 3 times (max_receives)"
    )


# -- after the handler ------------------------------------------------------------------------

# (policy, starts this one included, action, reason) when the handler raised BOOM.
FAILED = [
    ("delete", 1, Action.DELETE, ""),
    ("delete", 3, Action.DELETE, ""),
    ("delete", None, Action.DELETE, ""),
    ("dead-letter", 1, GIVE_UP, "ValueError: boom"),
    ("dead-letter", 3, GIVE_UP, "ValueError: boom"),
    ("dead-letter", None, GIVE_UP, "ValueError: boom"),
    ("retry", 0, Action.KEEP, ""),  # delete_on_start records no start
    ("retry", 1, Action.KEEP, ""),  # below max_retries
    ("retry", 2, Action.KEEP, ""),  # at max_retries: one more start allowed
    ("retry", 3, GIVE_UP, "handler failed 3 times (max_retries): ValueError: boom"),  # above
    ("retry", 8, GIVE_UP, "handler failed 8 times (max_retries): ValueError: boom"),
    ("retry", None, Action.KEEP, ""),  # no start table: the next receive decides
]


@pytest.mark.parametrize(("dead_letter", "delete_on_start"), VARIANTS)
@pytest.mark.parametrize(("policy", "starts", "action", "reason"), FAILED)
def test_a_failure_follows_the_error_policy(
    dead_letter, delete_on_start, policy, starts, action, reason
):
    queue = rules(policy, dead_letter=dead_letter, delete_on_start=delete_on_start)
    for receive_count in (1, 4, 31):  # the receive count plays no part in a failure
        decision = after_handler(queue, BOOM, receive_count=receive_count, starts=starts)
        assert decision == expected(action, reason, dead_letter)


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt(), KeyError("x")])
def test_any_base_exception_is_a_failure_described_by_its_type(error):
    queue = rules("dead-letter", dead_letter=True)
    decision = after_handler(queue, error, receive_count=1, starts=1)
    assert decision == Decision(Action.DEAD_LETTER, describe(error))
    assert describe(SystemExit(3)) == "SystemExit: 3"
    assert describe(KeyError("x")) == "KeyError: 'x'"


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(("dead_letter", "delete_on_start"), VARIANTS)
@pytest.mark.parametrize("starts", [0, 2, 3, None])
def test_a_return_deletes_the_message_unless_delete_on_start_did(
    policy, dead_letter, delete_on_start, starts
):
    queue = rules(policy, dead_letter=dead_letter, delete_on_start=delete_on_start)
    decision = after_handler(queue, None, receive_count=5, starts=starts)
    assert decision == Decision(Action.GONE if delete_on_start else Action.DELETE)
    assert not decision.gives_up


# (delay asked for, receive count, delay decided)
RESTART_LATER = [
    (7, 1, 7),
    (0, 9, 0),
    (2.5, 3, 2.5),
    (None, 1, 5),  # doubling from 5 s with each receive
    (None, 2, 10),
    (None, 3, 20),
    (None, 8, 640),
    (None, 9, 900),  # at most 15 minutes
    (None, 40, 900),
]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(("dead_letter", "delete_on_start"), VARIANTS)
@pytest.mark.parametrize(("asked", "receive_count", "delay"), RESTART_LATER)
def test_restart_later_keeps_the_message_for_its_delay_whatever_the_policy(
    policy, dead_letter, delete_on_start, asked, receive_count, delay
):
    queue = rules(policy, dead_letter=dead_letter, delete_on_start=delete_on_start)
    for starts in (1, 3, None):  # not a failure: max_retries is left to the next receive
        decision = after_handler(
            queue, RestartLater("busy", delay=asked), receive_count=receive_count, starts=starts
        )
        assert decision == Decision(Action.RETRY_LATER, delay=delay)
    assert retry_delay(asked, receive_count) == delay


# -- the pieces -------------------------------------------------------------------------------


def test_rules_come_from_the_queue_settings():
    queue = QueueSettings(name="q", max_retries=3, dead_letter_queue="q_failed")
    assert Rules.of(queue) == Rules("dead-letter", 3, 40, False, True)
    assert Rules.of(queue, dead_letter=False).dead_letter is False
    plain = QueueSettings(name="p", on_error="retry", max_receives=7, delete_on_start=True)
    assert Rules.of(plain) == Rules("retry", 5, 7, True, False)


def test_giving_up_goes_to_the_dead_letter_queue_or_is_dropped():
    assert give_up(rules(dead_letter=True), "why") == Decision(Action.DEAD_LETTER, "why")
    assert give_up(rules(dead_letter=False), "why") == Decision(Action.DROP, "why")


def test_dead_letter_attributes_keep_the_users_first_within_the_limit():
    own = {"trace": {"DataType": "String", "StringValue": "abc"}}
    tagged = dead_letter_attributes(own, "x" * 2000, queue_label="q:big", receive_count=4)
    assert list(tagged) == ["trace", DLQ_ERROR_ATTRIBUTE, "sqsd_queue", "sqsd_receive_count"]
    assert tagged[DLQ_ERROR_ATTRIBUTE]["StringValue"] == "x" * 1000
    assert tagged["sqsd_receive_count"] == {"DataType": "Number", "StringValue": "4"}
    assert own == {"trace": {"DataType": "String", "StringValue": "abc"}}  # not changed
    assert dead_letter_attributes({}, "", queue_label="q", receive_count=1)[
        DLQ_ERROR_ATTRIBUTE
    ]["StringValue"] == "error"
    nine = {f"a{n}": {"DataType": "String", "StringValue": "v"} for n in range(9)}
    assert list(dead_letter_attributes(nine, "r", queue_label="q", receive_count=1))[9:] == [
        DLQ_ERROR_ATTRIBUTE
    ]
