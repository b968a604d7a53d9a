"""The worker's two helper threads: the heartbeat, which keeps the messages in hand hidden,
and the deleter, which deletes finished messages in batches off the handler path.

They are separate so that a visibility extension never waits behind a delete: a
DeleteMessageBatch that takes its full botocore retry time (tens of seconds) must not let
a running message's visibility lapse. A failed extension is tried again well before the
deadline (at a third of the time left), not at the deadline itself.

Every batch call's ``Failed`` entries are read: transient ones (server faults, throttling)
are retried; a receipt handle SQS no longer knows means the message is no longer ours
(it may be handled again) and is logged once with its id.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqsd import scoreboard
from sqsd.message import Message
from sqsd.sqs import MAX_BATCH, batches

DELETE_FLUSH_AGE = 1.0  # seconds a finished message may wait for a fuller delete batch
FLUSH_WAIT_MAX = 30.0
DELETE_TRIES = 5  # a delete given up on: the message reappears, a duplicate but no loss
RETRY_FLOOR = 0.25  # seconds: the soonest a failed extension is tried again
RETRY_LATE_MAX = 8.0  # seconds between tries once the deadline has passed

# ``Failed[].Code`` values that say the receipt handle is no longer valid: another receive
# took the message (its visibility lapsed) or it was deleted.
GONE_CODES = frozenset(
    {
        "ReceiptHandleIsInvalid",
        "InvalidReceiptHandle",
        "MessageNotInflight",
        "AWS.SimpleQueueService.MessageNotInflight",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "KmsThrottled",
    }
)


def failure_kind(failure: dict[str, Any]) -> str:
    """What a ``Failed`` entry of a batch call means: "gone" (the handle is no longer
    ours), "transient" (worth another try) or "refused" (the request itself was wrong)."""
    code = str(failure.get("Code", ""))
    if code in GONE_CODES:
        return "gone"
    if code in TRANSIENT_CODES or not failure.get("SenderFault", False):
        return "transient"
    return "refused"


class _QueueThread(threading.Thread):
    """A daemon thread making SQS calls on one queue URL, woken through ``cond``."""

    def __init__(self, name: str, client: Any, url: str, slot: scoreboard.Slot, log: Any):
        super().__init__(name=name, daemon=True)
        self.client = client
        self.url = url
        self.slot = slot
        self.log = log
        self.cond = threading.Condition()
        self.stopping = False

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.is_alive():
            self.join()


class Heartbeat(_QueueThread):
    """Extends the visibility of the messages in hand (the one running and those waiting
    in its batch) while less than half of their visibility timeout is left."""

    def __init__(
        self, client: Any, url: str, visibility_timeout: int, slot: scoreboard.Slot, log: Any
    ):
        super().__init__("sqsd-heartbeat", client, url, slot, log)
        self.visibility_timeout = visibility_timeout
        self.in_hand: dict[str, _Held] = {}  # receipt handle -> what we know of it

    def hold(self, messages: Sequence[Message], received_at: float) -> None:
        deadline = received_at + self.visibility_timeout
        with self.cond:
            for message in messages:
                self.in_hand[message.receipt_handle] = _Held(
                    message.id, deadline, deadline - self.visibility_timeout / 2
                )
            self.cond.notify_all()

    def release(self, message: Message) -> None:
        self.release_handle(message.receipt_handle)

    def release_handle(self, handle: str) -> None:
        with self.cond:
            self.in_hand.pop(handle, None)

    def deleting(self, message: Message) -> None:
        """``message`` is queued for deletion: keep it hidden until the delete is done (a
        slow delete must not let it reappear), and expect its handle to become invalid."""
        with self.cond:
            held = self.in_hand.get(message.receipt_handle)
            if held is not None:
                held.deleting = True

    def run(self) -> None:
        while True:
            with self.cond:
                due = self._due(time.monotonic())
                while not due and not self.stopping:
                    self.cond.wait(self._next_timeout())
                    due = self._due(time.monotonic())
                if self.stopping:
                    return
            self._extend(due)

    def _due(self, now: float) -> list[str]:
        return [handle for handle, held in self.in_hand.items() if held.next_at <= now]

    def _next_timeout(self) -> float | None:
        if not self.in_hand:
            return None
        return max(0.0, min(held.next_at for held in self.in_hand.values()) - time.monotonic())

    def _extend(self, handles: list[str]) -> None:
        timeout = self.visibility_timeout
        for chunk, entries in batches(
            handles, lambda handle: {"ReceiptHandle": handle, "VisibilityTimeout": timeout}
        ):
            sent_at = time.monotonic()
            try:
                response = self.client.change_message_visibility_batch(
                    QueueUrl=self.url, Entries=entries
                )
            except Exception as exc:
                self.log.warning("visibility heartbeat failed", error=str(exc), messages=len(chunk))
                failed = {position: {"Message": str(exc)} for position in range(len(chunk))}
            else:
                failed = {int(f["Id"]): f for f in response.get("Failed", [])}
            finally:
                self.slot.add(scoreboard.VISIBILITY_CHANGES)
            with self.cond:
                for position, handle in enumerate(chunk):
                    held = self.in_hand.get(handle)
                    if held is None:  # released meanwhile: finished, or given back
                        continue
                    failure = failed.get(position)
                    if failure is None:
                        held.extended(sent_at + timeout, timeout)
                    elif "Code" in failure and failure_kind(failure) != "transient":
                        del self.in_hand[handle]
                        if held.deleting:  # the delete won the race: nothing lost
                            continue
                        gone = failure_kind(failure) == "gone"
                        if gone:
                            self.slot.add(scoreboard.DROPPED)
                        self.log.warning(
                            "visibility heartbeat refused: the message is no longer ours, "
                            "it may be handled again"
                            if gone  # else, say, past SQS's 12 hours in flight
                            else "visibility heartbeat refused: the message will reappear "
                            "when its visibility ends, it may be handled again",
                            message_id=held.message_id,
                            code=failure.get("Code"),
                            error=failure.get("Message"),
                        )
                    else:
                        held.retry_later(time.monotonic(), timeout)
                        if "Code" in failure:
                            self.log.warning(
                                "visibility heartbeat failed; retrying",
                                message_id=held.message_id,
                                code=failure.get("Code"),
                                seconds_left=round(held.deadline - time.monotonic(), 1),
                            )
                self.cond.notify_all()  # for whoever waits on what the heartbeat did


@dataclass
class _Held:
    """A message in hand: when its visibility ends and when to extend it next."""

    message_id: str
    deadline: float
    next_at: float
    failures: int = 0
    deleting: bool = False

    def extended(self, deadline: float, timeout: int) -> None:
        self.deadline, self.next_at, self.failures = deadline, deadline - timeout / 2, 0

    def retry_later(self, now: float, timeout: int) -> None:
        self.failures += 1
        left = self.deadline - now
        if left > 0:  # several tries before the deadline, each at a third of what is left
            delay = max(RETRY_FLOOR, left / 3)
        else:
            delay = min(RETRY_LATE_MAX, timeout / 2, RETRY_FLOOR * 2 ** min(self.failures, 8))
        self.next_at = now + delay


class Deleter(_QueueThread):
    """Deletes finished messages in batches: a full batch at once, a partial one within
    ``DELETE_FLUSH_AGE``, everything when flushed or stopped."""

    def __init__(
        self,
        client: Any,
        url: str,
        slot: scoreboard.Slot,
        log: Any,
        on_deleted: Callable[[str], None],
        on_done: Callable[[str], None] = lambda handle: None,
    ):
        super().__init__("sqsd-deleter", client, url, slot, log)
        self.on_deleted = on_deleted  # with the message id of each message SQS deleted
        self.on_done = on_done  # with the receipt handle of each delete done or given up
        self.pending: list[tuple[str, str, int]] = []  # (message id, receipt handle, tries)
        self.oldest_pending = 0.0
        self.flush_requested = False
        self.deleting = False  # a batch taken from pending is being deleted

    def add(self, message: Message) -> None:
        with self.cond:
            if not self.pending:
                self.oldest_pending = time.monotonic()
            self.pending.append((message.id, message.receipt_handle, 0))
            # The first one starts the flush clock (DELETE_FLUSH_AGE): handler threads
            # finish messages while no batch end comes to flush them.
            if len(self.pending) >= MAX_BATCH or len(self.pending) == 1:
                self.cond.notify_all()

    def flush(self, *, wait: bool = False) -> None:
        with self.cond:
            if self.pending:
                self.flush_requested = True
                self.cond.notify_all()
            if wait:
                self.cond.wait_for(lambda: not (self.pending or self.deleting), FLUSH_WAIT_MAX)

    def run(self) -> None:
        while True:
            with self.cond:
                if not self._has_work():
                    self.cond.wait(self._next_timeout())
                batch = self._take_batch()
                self.deleting = bool(batch)
                done = self.stopping and not self.pending and not batch
            if batch:
                self._delete_batch(batch)
                with self.cond:
                    self.deleting = False
                    self.cond.notify_all()
            if done:
                return

    def _has_work(self) -> bool:
        return self.stopping or self.flush_requested or len(self.pending) >= MAX_BATCH

    def _flush_at(self) -> float:
        # One expression for the wait and the check after it: computed two ways, rounding
        # could find the batch not yet due after a wait that ended exactly at its time.
        return self.oldest_pending + DELETE_FLUSH_AGE

    def _next_timeout(self) -> float | None:
        if not self.pending:
            return None
        return max(0.0, self._flush_at() - time.monotonic())

    def _take_batch(self) -> list[tuple[str, str, int]]:
        due = self.pending and time.monotonic() >= self._flush_at()
        if not (self.flush_requested or self.stopping or due or len(self.pending) >= MAX_BATCH):
            return []
        batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
        self.flush_requested = bool(self.pending) and self.flush_requested
        self.oldest_pending = time.monotonic()
        return batch

    def _delete_batch(self, batch: list[tuple[str, str, int]]) -> None:
        entries = [{"Id": str(i), "ReceiptHandle": entry[1]} for i, entry in enumerate(batch)]
        try:
            response = self.client.delete_message_batch(QueueUrl=self.url, Entries=entries)
        except Exception as exc:
            retry = self._retry(batch)
            self.log.warning(
                "delete failed", error=str(exc), messages=len(batch), retrying=len(retry)
            )
            return
        finally:
            self.slot.add(scoreboard.DELETES)
        failed = {int(failure["Id"]): failure for failure in response.get("Failed", [])}
        transient = []
        for position, (message_id, handle, tries) in enumerate(batch):
            failure = failed.get(position)
            if failure is None:
                self.on_done(handle)
                self.on_deleted(message_id)
                continue
            kind = failure_kind(failure)
            if kind == "transient":
                transient.append((message_id, handle, tries))
                continue
            self.on_done(handle)
            self.slot.add(scoreboard.DROPPED)
            if kind == "gone":
                self.log.warning(
                    "delete refused: the message is no longer ours, it may be handled again",
                    message_id=message_id,
                    code=failure.get("Code"),
                )
            else:
                self.log.warning(
                    "delete refused", message_id=message_id, error=failure.get("Message")
                )
        if transient:
            retry = self._retry(transient)
            self.log.warning(
                "delete failed for some messages", messages=len(transient), retrying=len(retry)
            )

    def _retry(self, batch: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
        """Put ``batch`` back in front for another try, except those tried too often:
        they reappear after their visibility timeout, a duplicate but never a loss."""
        retry = [(mid, handle, n + 1) for mid, handle, n in batch if n + 1 < DELETE_TRIES]
        for _, handle, n in batch:
            if n + 1 >= DELETE_TRIES:
                self.on_done(handle)  # no longer kept hidden: it reappears
        with self.cond:
            if retry and not self.pending:
                self.oldest_pending = time.monotonic()
            self.pending[:0] = retry
        return retry


class Housekeeper:
    """The worker's view of both threads: hold, release, delete, flush, stop."""

    def __init__(
        self,
        client: Any,
        url: str,
        visibility_timeout: int,
        slot: scoreboard.Slot,
        log: Any,
        *,
        on_deleted: Callable[[str], None] = lambda message_id: None,
    ):
        self.heartbeat = Heartbeat(client, url, visibility_timeout, slot, log)
        self.deleter = Deleter(client, url, slot, log, on_deleted, self.heartbeat.release_handle)

    def start(self) -> None:
        self.heartbeat.start()
        self.deleter.start()

    def hold(self, messages: Sequence[Message], received_at: float) -> None:
        """Keep ``messages`` hidden while in hand (received at ``received_at``)."""
        self.heartbeat.hold(messages, received_at)

    def release(self, message: Message) -> None:
        """Stop extending ``message``'s visibility (done with, or given back)."""
        self.heartbeat.release(message)

    def delete(self, message: Message) -> None:
        """Queue a delete; a full batch is sent at once, a partial one within a second.
        The heartbeat keeps the message hidden until the delete is done."""
        self.heartbeat.deleting(message)
        self.deleter.add(message)

    def deleting(self, message: Message) -> None:
        """``message`` is being deleted by the caller: keep it hidden until it releases it."""
        self.heartbeat.deleting(message)

    def flush(self, *, wait: bool = False) -> None:
        """Ask for pending deletes to go out now (end of a batch); with ``wait``, return
        once they are done (FIFO: a group stays locked until its messages are deleted)."""
        self.deleter.flush(wait=wait)

    def stop(self) -> None:
        """Flush what is pending and end both threads; returns when they are done."""
        self.deleter.stop()
        self.heartbeat.stop()

    def is_alive(self) -> bool:
        return self.heartbeat.is_alive() or self.deleter.is_alive()
