"""What becomes of a message: the decisions before and after its handler, as pure functions.

The worker (sqsd.worker) and the in-memory test runner (sqsd.testing) both ask these
functions and only carry out the answer: the SQS calls, log lines, failed-log records and
counters stay with them. Nothing here reads a clock, a table or a queue.

Two callers count handler starts differently. The worker keeps a table of starts per
message id (sqsd.attempts) and passes the count. ``sqsd.testing`` keeps none: every
earlier receive ran the handler, so it passes ``starts=None`` and the receive count stands
for the starts (its give-up reason names the receives, and it gives up at the next receive
rather than right after the failure).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sqsd.config import QueueSettings
from sqsd.errors import RestartLater
from sqsd.sqs import MAX_ATTRIBUTES, encode_attributes

DLQ_ERROR_ATTRIBUTE = "sqsd_error"
RETRY_DELAY_BASE = 5  # RestartLater without delay: 5 s, 10 s, 20 s, ... per receive
RETRY_DELAY_MAX = 900


class Action(enum.Enum):
    """What the caller does with the message."""

    RUN = "run"  # call the handler
    DELETE = "delete"  # remove it from its queue
    GONE = "gone"  # delete_on_start removed it before the handler: nothing left to do
    KEEP = "keep"  # leave it; it reappears after its visibility timeout
    RETRY_LATER = "retry later"  # leave it, visible again after ``delay`` seconds
    DEAD_LETTER = "dead-letter"  # move it to the dead-letter queue, tagged with ``reason``
    DROP = "drop"  # no dead-letter queue: log its body with ``reason``, then delete it


@dataclass(frozen=True)
class Rules:
    """The queue settings the decisions depend on."""

    error_policy: str  # "delete", "retry" or "dead-letter"
    max_retries: int
    receive_limit: int  # max_receives, resolved (QueueSettings.receive_limit)
    delete_on_start: bool = False
    dead_letter: bool = False  # the queue has a dead-letter queue

    @classmethod
    def of(cls, queue: QueueSettings, *, dead_letter: bool | None = None) -> Rules:
        """The rules of ``queue``; ``dead_letter``: its dead-letter queue is known (None:
        the queue names one)."""
        if dead_letter is None:
            dead_letter = bool(queue.dead_letter_queue)
        return cls(
            error_policy=queue.error_policy,
            max_retries=queue.max_retries,
            receive_limit=queue.receive_limit,
            delete_on_start=queue.delete_on_start,
            dead_letter=dead_letter,
        )


@dataclass(frozen=True)
class Decision:
    """One decision: the action, with the reason logged (and sent along to the
    dead-letter queue) when the message is given up on, or the delay of RETRY_LATER."""

    action: Action
    reason: str = ""
    delay: float = 0

    @property
    def gives_up(self) -> bool:
        """The message leaves its queue without being handled."""
        return self.action in (Action.DEAD_LETTER, Action.DROP)


RUN = Decision(Action.RUN)


def give_up(rules: Rules, reason: str) -> Decision:
    """Give up on a message: to the dead-letter queue when there is one, else dropped
    (its body kept in the failed log)."""
    return Decision(Action.DEAD_LETTER if rules.dead_letter else Action.DROP, reason)


def before_handler(rules: Rules, *, receive_count: int, starts: int | None) -> Decision:
    """RUN, or give up without calling the handler: it started ``max_retries + 1`` times
    and never finished (say it crashed the worker each time), or SQS delivered the message
    more than ``max_receives`` times (the safety net for starts never seen). ``starts``:
    the handler starts recorded so far; None when every earlier receive was one."""
    if starts is None:
        if receive_count > rules.max_retries + 1:
            return give_up(rules, f"received {receive_count} times (max_retries)")
        return RUN
    if starts > rules.max_retries:
        return give_up(rules, f"handler started {starts} times (max_retries)")
    if receive_count > rules.receive_limit:
        return give_up(rules, f"received {receive_count} times (max_receives)")
    return RUN


def after_handler(
    rules: Rules, error: BaseException | None, *, receive_count: int, starts: int | None
) -> Decision:
    """The outcome of the handler's call: ``error`` None when it returned, else what it
    raised. ``starts``: the handler starts recorded, this one included (read only under
    on_error = "retry"); None when the next receive decides (``before_handler``)."""
    if error is None:
        return Decision(Action.GONE if rules.delete_on_start else Action.DELETE)
    if isinstance(error, RestartLater):
        return Decision(Action.RETRY_LATER, delay=retry_delay(error.delay, receive_count))
    if rules.error_policy == "retry":
        if starts is None or starts <= rules.max_retries:
            return Decision(Action.KEEP)
        return give_up(rules, f"handler failed {starts} times (max_retries): {describe(error)}")
    if rules.error_policy == "dead-letter":
        return give_up(rules, describe(error))
    return Decision(Action.DELETE)


def retry_delay(requested: float | None, receive_count: int) -> float:
    """RestartLater's delay: the one asked for, else doubling with each receive."""
    if requested is not None:
        return requested
    return min(RETRY_DELAY_MAX, RETRY_DELAY_BASE * 2 ** (receive_count - 1))


def describe(exc: BaseException) -> str:
    """A failure as logged and sent to the dead-letter queue: ``"KeyError: 'x'"``."""
    return f"{type(exc).__name__}: {exc}"


def dead_letter_attributes(
    attributes: dict[str, Any], reason: str, *, queue_label: str, receive_count: int
) -> dict[str, Any]:
    """A dead-lettered message's MessageAttributes: its own, then why it was given up on,
    from which queue and after how many receives, as far as SQS's limit allows."""
    tagged = dict(attributes)
    extra = encode_attributes(
        {
            DLQ_ERROR_ATTRIBUTE: reason[:1000] or "error",
            "sqsd_queue": queue_label,
            "sqsd_receive_count": receive_count,
        }
    )
    for name, value in extra.items():
        if len(tagged) < MAX_ATTRIBUTES:  # the user's attributes come first
            tagged[name] = value
    return tagged
