"""What the worker does to one message in SQS besides handling it.

Before its handler: a re-delay of a message delayed past SQS's maximum, the delete of one
handled before, giving up on one past its limits. After a failed handler: the queue's
error policy (keep, delete, dead-letter or drop) and RestartLater's new visibility. And
the single-message calls these and the engines make: delete now, change visibility, give
received messages back. The decisions are sqsd.outcome's; this module carries them out.

``MessageActions`` is a mixin of sqsd.worker.Worker: the methods are the worker's own, so
the engines, the prefetch and the tests call them on the worker as before, at no extra
lookup on the per-message path.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqsd import outcome, scoreboard
from sqsd.housekeeping import failure_kind
from sqsd.message import NOT_BEFORE_ATTRIBUTE, Message, read_not_before
from sqsd.outcome import Action, Decision
from sqsd.sqs import MAX_VISIBILITY, batches, max_delay

if TYPE_CHECKING:
    from sqsd.attempts import AttemptTable
    from sqsd.config import QueueSettings
    from sqsd.errors import RestartLater
    from sqsd.housekeeping import Housekeeper
    from sqsd.logs import FailedLog
    from sqsd.plan import WorkerSpec

GIVE_BACK_TRIES = 3


class MessageActions:
    """The worker's actions on one message other than calling its handler (a mixin of
    sqsd.worker.Worker, which sets the attributes below)."""

    queue: QueueSettings
    spec: WorkerSpec
    client: Any
    url: str
    dead_letter_url: str
    slot: scoreboard.Slot
    attempts: AttemptTable
    housekeeper: Housekeeper | None
    log: Any
    failed_log: FailedLog
    warned: set[str]
    broken: dict[str, Exception]

    def _rules(self) -> outcome.Rules:
        return outcome.Rules.of(self.queue, dead_letter=bool(self.dead_letter_url))

    # -- before the handler -------------------------------------------------------------

    def _settle_unhandled(self, message: Message) -> bool | None:
        """What happens before the handler: a re-delay, or giving up on the message. None
        when its handler is to be called, else whether the message stays queued."""
        housekeeper = self.housekeeper
        assert housekeeper is not None
        not_before, problem = read_not_before(message.raw)
        if problem:
            self._warn_once(message, f"{NOT_BEFORE_ATTRIBUTE} ignored: {problem}")
        if not_before is not None and self._redelay(message, not_before):
            return False
        if message.receive_count > 1 and self.attempts.finished(message.id):
            # Its handler returned here before; only the delete was lost (the worker died).
            self.log.info("deleting a message handled before", message_id=message.id,
                          receive_count=message.receive_count)
            housekeeper.delete(message)
            return False
        reason = self._given_up(message)
        if reason:
            if self._give_up(message, outcome.give_up(self._rules(), reason)):
                return False
            housekeeper.release(message)  # stays in the queue: no heartbeat keeps it hidden
            return True
        return None

    def _given_up(self, message: Message) -> str:
        """Why ``message`` goes without its handler being called again ("" when it does
        not), as ``outcome.before_handler`` decides from the starts on this host."""
        # A first delivery has had no handler start anywhere: no table lookup (a file lock)
        # on the common path.
        starts = 0 if message.receive_count == 1 else self.attempts.starts(message.id)
        return outcome.before_handler(
            self._rules(), receive_count=message.receive_count, starts=starts
        ).reason

    def _warn_once(self, message: Message, warning: str) -> None:
        """One warning per message id and worker for what a producer got wrong."""
        if message.id in self.warned:
            return
        if len(self.warned) >= 1000:
            self.warned.clear()
        self.warned.add(message.id)
        self.log.warning(warning, message_id=message.id)

    def _redelay(self, message: Message, not_before: float) -> bool:
        """A delay above SQS's maximum: send again with the remaining delay until due.
        True when the message was re-delayed (and so not handled now)."""
        attrs = message.raw["MessageAttributes"]
        remaining = not_before - time.time()
        if remaining <= 0:
            return False
        params: dict[str, Any] = {
            "QueueUrl": self.url,
            "MessageBody": message.body,
            "MessageAttributes": attrs,
            "DelaySeconds": int(min(max(remaining, 0), max_delay())),
        }
        try:
            self.client.send_message(**params)
        except Exception as exc:
            self.log.warning("re-delay failed", message_id=message.id, error=str(exc))
            self._change_visibility(message, int(min(remaining, max_delay())))
            return True
        self.slot.add(scoreboard.SENDS)
        self.slot.count_payload([params])
        self._delete_now(message)
        self.log.debug("re-delayed", message_id=message.id, remaining=round(remaining, 1))
        return True

    # -- after a failed handler, and giving up ------------------------------------------

    def _restart_later(self, message: Message, exc: RestartLater, started: float) -> None:
        delay = outcome.after_handler(
            self._rules(), exc, receive_count=message.receive_count, starts=None
        ).delay
        self.slot.add(scoreboard.RETRIED)
        self._change_visibility(message, int(delay))
        self.log.info(
            "restart later",
            message_id=message.id,
            receive_count=message.receive_count,
            delay=delay,
            reason=str(exc) or None,
            duration=round(time.monotonic() - started, 4),
        )

    def _fail(self, message: Message, exc: BaseException, started: float) -> bool:
        """Log, record the body, then apply the error policy; True when the message stays."""
        self.slot.add(scoreboard.FAILED)
        policy = self.queue.error_policy
        # One record for the failure: its traceback, body and what happens next.
        recorded = self.failed_log.write(
            event="handler failed",
            exc_info=exc,
            queue=self.queue.name,
            suffix=self.spec.suffix,
            message_id=message.id,
            receive_count=message.receive_count,
            duration=round(time.monotonic() - started, 4),
            policy=policy,
            error=outcome.describe(exc),
            body=message.body,
        )
        if not recorded:
            return True
        # The start table is a file under a lock: read only when the decision needs it.
        starts = self.attempts.starts(message.id) if policy == "retry" else None
        decision = outcome.after_handler(
            self._rules(), exc, receive_count=message.receive_count, starts=starts
        )
        if decision.action is Action.KEEP:
            return True
        if decision.gives_up:
            return not self._give_up(message, decision, announced=True)
        return not self._delete_now(message)

    def _give_up(self, message: Message, decision: Decision, *, announced: bool = False) -> bool:
        """Carry out DEAD_LETTER, or DROP: log the body to the failed log and delete. False
        when the message could not leave its queue (it stays). ``announced``: the failure
        record said so already."""
        if decision.action is Action.DEAD_LETTER:
            return self._dead_letter(message, decision.reason, announced=announced)
        recorded = self.failed_log.write(
            event="dropping message",
            queue=self.queue.name,
            suffix=self.spec.suffix,
            message_id=message.id,
            receive_count=message.receive_count,
            error=decision.reason,
            body=message.body,
        )
        if not recorded:  # the body's only other copy: keep the message
            return False
        return self._delete_now(message)

    def _dead_letter(self, message: Message, reason: str, *, announced: bool = False) -> bool:
        """Move to the dead-letter queue. False when the message could not be moved (it
        stays in the queue). ``announced``: the failure record said so already, the move
        itself is only a debug line."""
        attributes = outcome.dead_letter_attributes(
            message.raw.get("MessageAttributes", {}),
            reason,
            queue_label=self.spec.label,
            receive_count=message.receive_count,
        )
        params: dict[str, Any] = {
            "QueueUrl": self.dead_letter_url,
            "MessageBody": message.body,
            "MessageAttributes": attributes,
        }
        if self.dead_letter_url.endswith(".fifo"):
            params["MessageGroupId"] = message.group_id or "default"
            params["MessageDeduplicationId"] = message.id
        try:
            self.client.send_message(**params)
        except Exception as exc:
            self.log.error("dead-letter send failed", message_id=message.id, error=str(exc))
            return False
        self.slot.add(scoreboard.SENDS)
        self.slot.count_payload([params])
        self.slot.add(scoreboard.DEAD_LETTERED)
        log = self.log.debug if announced else self.log.warning
        log("dead-lettered", message_id=message.id, reason=reason)
        return self._delete_now(message)

    # -- SQS calls on single messages ---------------------------------------------------

    def _delete_now(self, message: Message) -> bool:
        assert self.housekeeper is not None
        # Still kept hidden while the call is in flight: a slow delete must not let the
        # message reappear (and run elsewhere) before it is gone.
        self.housekeeper.deleting(message)
        try:
            self.client.delete_message(QueueUrl=self.url, ReceiptHandle=message.receipt_handle)
        except Exception as exc:
            self.log.warning("delete failed", message_id=message.id, error=str(exc))
            return False
        finally:
            self.housekeeper.release(message)
            self.slot.add(scoreboard.DELETES)
        self.attempts.forget(message.id)
        return True

    def _change_visibility(self, message: Message, seconds: int) -> None:
        assert self.housekeeper is not None
        self.housekeeper.release(message)  # or the heartbeat could undo the new timeout
        seconds = max(0, min(seconds, MAX_VISIBILITY))
        try:
            self.client.change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=message.receipt_handle, VisibilityTimeout=seconds
            )
        except Exception as exc:
            self.log.warning("visibility change failed", message_id=message.id, error=str(exc))
        self.slot.add(scoreboard.VISIBILITY_CHANGES)

    def _give_back(self, messages: list[Message]) -> None:
        """Make received but unstarted messages visible again at once."""
        assert self.housekeeper is not None
        if not messages:
            return
        self.slot.add(scoreboard.GIVEN_BACK, len(messages))
        for message in messages:
            self.housekeeper.release(message)  # never started: no attempt to count
            self.broken.pop(message.id, None)  # it comes back anew
        for attempt in range(GIVE_BACK_TRIES):
            if attempt:
                time.sleep(0.1 * 2**attempt)  # throttled or a server fault: a moment's pause
            messages = self._give_back_once(messages)
            if not messages:
                return
        # Not given back: they reappear after their visibility timeout all the same.
        self.log.warning("give back given up", messages=len(messages))

    def _give_back_once(self, messages: list[Message]) -> list[Message]:
        """One ChangeMessageVisibilityBatch to 0 per ten messages; returns those to retry."""
        retry: list[Message] = []
        for chunk, entries in batches(
            messages, lambda m: {"ReceiptHandle": m.receipt_handle, "VisibilityTimeout": 0}
        ):
            try:
                response = self.client.change_message_visibility_batch(
                    QueueUrl=self.url, Entries=entries
                )
            except Exception as exc:
                self.log.warning("give back failed", messages=len(chunk), error=str(exc))
                retry.extend(chunk)
                continue
            finally:
                self.slot.add(scoreboard.VISIBILITY_CHANGES)
            for failure in response.get("Failed", []):
                message = chunk[int(failure["Id"])]
                kind = failure_kind(failure)
                if kind == "transient":
                    retry.append(message)
                elif kind == "gone":
                    self.log.warning(
                        "give back refused: the message is no longer ours, it may be handled again",
                        message_id=message.id,
                        code=failure.get("Code"),
                    )
                else:  # it reappears after its visibility timeout instead
                    self.log.warning(
                        "give back refused",
                        message_id=message.id,
                        code=failure.get("Code"),
                        error=failure.get("Message"),
                    )
        return retry
