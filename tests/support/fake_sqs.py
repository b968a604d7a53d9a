"""An in-process SQS for model-based tests: queues with visibility timeouts, receipt handles
that change at every receive, ApproximateReceiveCount, message attributes, batches of up to
ten, a dead-letter queue, and a clock the test advances (no real sleeps).

Every call first asks ``chaos(point)`` what happens to it, so a test can inject, at any call:
throttling or a 5xx (the call raises ClientError, as botocore does once its retries are
spent), a ``Failed`` entry in a batch response, or the calling process dying before or after
SQS applied the call (``Killed``, a BaseException nothing in the worker catches).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

MAX_BATCH = 10

# What ``chaos`` may answer for an SQS call.
OK = "ok"
THROTTLE = "throttle"  # ClientError ThrottlingException (HTTP 400), no effect
SERVER_ERROR = "5xx"  # ClientError InternalError (HTTP 500), no effect
FAIL_ENTRY = "fail-entry"  # batch calls: one entry comes back in Failed, not applied
STALL = "stall"  # the call takes long (botocore retrying), then succeeds
KILL_BEFORE = "kill-before"  # the caller dies before the request reaches SQS
KILL_AFTER = "kill-after"  # SQS applied the call; the caller dies before reading the answer


class Killed(BaseException):  # noqa: N818 - a simulated SIGKILL, not an error
    """The worker process dies here: raised through every ``except Exception``."""


class FakeClock:
    """``time`` for the code under test: monotonic() and time() move only when told."""

    def __init__(self, now: float = 1000.0, epoch: float = 1_800_000_000.0):
        self.now = now
        self.epoch = epoch
        self.on_sleep: Callable[[float], None] = self.advance  # time.sleep() in the code


    def monotonic(self) -> float:
        return self.now

    perf_counter = monotonic

    def time(self) -> float:
        return self.epoch + self.now

    def sleep(self, seconds: float) -> None:
        self.on_sleep(seconds)

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@dataclass
class StoredMessage:
    id: str
    body: str
    attributes: dict[str, Any]
    sent: float
    seq: int
    visible_at: float = 0.0
    receipt: str = ""  # the newest receipt handle ("" = never received)
    receives: int = 0
    first_received: float = 0.0


@dataclass
class Queue:
    name: str
    url: str
    messages: dict[str, StoredMessage] = field(default_factory=dict)  # id -> message


def _client_error(code: str, status: int, operation: str, message: str = "") -> ClientError:
    response = {
        "Error": {"Code": code, "Message": message or code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, operation)  # type: ignore[arg-type]


class QueueDoesNotExist(ClientError):
    pass


class _Exceptions:
    QueueDoesNotExist = QueueDoesNotExist


class FakeSQS:
    """The boto3 SQS client calls a worker makes, against in-memory queues."""

    exceptions = _Exceptions

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.queues: dict[str, Queue] = {}  # url -> queue
        self.ids = itertools.count(1)
        self.handles: dict[str, tuple[str, str]] = {}  # receipt handle -> (url, message id)
        # Decides the fate of each call: chaos(point) -> one of the constants above; point is
        # the operation name. The default never interferes.
        self.chaos: Callable[[str], str] = lambda point: OK
        self.chaos_entry: Callable[[int], int] = lambda count: 0  # which entry fails
        # Observers for the test's ledger.
        # (url, message, receipt handle used): called before the message goes
        self.on_delete: Callable[[str, StoredMessage, str], None] = lambda *args: None
        self.on_send: Callable[[str, StoredMessage], None] = lambda url, message: None
        self.on_wait: Callable[[float], None] = self.clock.advance  # a long poll's wait
        # A stalled call: (operation, seconds); the default lets the time pass.
        self.on_stall: Callable[[str, float], None] = lambda op, seconds: self.clock.advance(
            seconds
        )
        self.stall_seconds: Callable[[], float] = lambda: 20.0
        self.calls: dict[str, int] = {}
        self.faults: dict[str, int] = {}

    # -- the test's side -------------------------------------------------------------------

    def create_queue(self, QueueName: str, Attributes: dict[str, str] | None = None):  # noqa: N803
        url = f"https://sqs.fake/123456789012/{QueueName}"
        self.queues.setdefault(url, Queue(QueueName, url))
        return {"QueueUrl": url}

    def put(self, url: str, body: str, attributes: dict[str, Any] | None = None) -> StoredMessage:
        seq = next(self.ids)
        message = StoredMessage(
            id=f"{seq:08d}-0000-4000-8000-{seq:012d}",
            body=body,
            attributes=dict(attributes or {}),
            sent=self.clock.now,
            seq=seq,
        )
        self.queues[url].messages[message.id] = message
        return message

    def bodies(self, url: str) -> list[str]:
        return [m.body for m in self.queues[url].messages.values()]

    def in_flight(self, url: str) -> list[StoredMessage]:
        now = self.clock.now
        return [m for m in self.queues[url].messages.values() if m.visible_at > now]

    # -- fault injection -------------------------------------------------------------------

    def _fate(self, operation: str, *, batch: bool = False) -> str:
        self.calls[operation] = self.calls.get(operation, 0) + 1
        fate = self.chaos(operation)
        if fate == FAIL_ENTRY and not batch:
            fate = OK
        if fate != OK:
            self.faults[fate] = self.faults.get(fate, 0) + 1
            key = f"{operation} {fate}"
            self.faults[key] = self.faults.get(key, 0) + 1
        if fate == STALL:
            self.on_stall(operation, self.stall_seconds())
        if fate == KILL_BEFORE:
            raise Killed(f"killed before {operation}")
        if fate == THROTTLE:
            raise _client_error("ThrottlingException", 400, operation, "Rate exceeded")
        if fate == SERVER_ERROR:
            raise _client_error("InternalError", 500, operation, "We encountered an error")
        return fate

    def _after(self, fate: str, operation: str) -> None:
        if fate == KILL_AFTER:
            raise Killed(f"killed after {operation}")

    def _queue(self, url: str, operation: str) -> Queue:
        if url not in self.queues:
            raise QueueDoesNotExist(
                {
                    "Error": {"Code": "AWS.SimpleQueueService.NonExistentQueue", "Message": url},
                    "ResponseMetadata": {"HTTPStatusCode": 400},
                },
                operation,
            )
        return self.queues[url]

    def _lookup(self, url: str, handle: str) -> tuple[StoredMessage | None, str]:
        """The message a receipt handle names and what is wrong with it ("" = current)."""
        where = self.handles.get(handle)
        if where is None or where[0] != url:
            return None, "ReceiptHandleIsInvalid"
        message = self.queues[url].messages.get(where[1])
        if message is None:
            return None, "gone"
        if message.receipt != handle:
            return message, "stale"
        return message, ""

    # -- the boto3 calls -------------------------------------------------------------------

    def get_queue_url(self, QueueName: str, **_: Any) -> dict[str, str]:  # noqa: N803
        fate = self._fate("get_queue_url")
        url = f"https://sqs.fake/123456789012/{QueueName}"
        self._queue(url, "GetQueueUrl")
        self._after(fate, "get_queue_url")
        return {"QueueUrl": url}

    def receive_message(
        self,
        QueueUrl: str,  # noqa: N803
        MaxNumberOfMessages: int = 1,  # noqa: N803
        VisibilityTimeout: int | None = None,  # noqa: N803
        WaitTimeSeconds: int = 0,  # noqa: N803
        **_: Any,
    ) -> dict[str, Any]:
        fate = self._fate("receive_message")
        queue = self._queue(QueueUrl, "ReceiveMessage")
        assert 1 <= MaxNumberOfMessages <= MAX_BATCH
        assert VisibilityTimeout is not None, "the worker always names its visibility timeout"
        visible = self._visible(queue)
        if not visible and WaitTimeSeconds:
            # A long poll returns as soon as a message becomes visible, else after the wait.
            due = [m.visible_at for m in queue.messages.values()]
            wait = min([WaitTimeSeconds, *[t - self.clock.now for t in due]])
            self.on_wait(max(0.0, wait))
            visible = self._visible(queue)
        found = []
        for message in visible[:MaxNumberOfMessages]:
            message.receives += 1
            if message.receives == 1:
                message.first_received = self.clock.now
            message.visible_at = self.clock.now + VisibilityTimeout
            message.receipt = f"rh-{message.id}-{message.receives}-{next(self.ids)}"
            self.handles[message.receipt] = (QueueUrl, message.id)
            raw: dict[str, Any] = {
                "MessageId": message.id,
                "ReceiptHandle": message.receipt,
                "Body": message.body,
                "MD5OfBody": "0" * 32,
                "Attributes": {
                    "ApproximateReceiveCount": str(message.receives),
                    "SentTimestamp": str(int((self.clock.epoch + message.sent) * 1000)),
                    "ApproximateFirstReceiveTimestamp": str(
                        int((self.clock.epoch + message.first_received) * 1000)
                    ),
                    "SenderId": "AIDAFAKE",
                },
            }
            if message.attributes:
                raw["MessageAttributes"] = {k: dict(v) for k, v in message.attributes.items()}
            found.append(raw)
        self._after(fate, "receive_message")
        return {"Messages": found} if found else {}

    def _visible(self, queue: Queue) -> list[StoredMessage]:
        now = self.clock.now
        return sorted(
            (m for m in queue.messages.values() if m.visible_at <= now), key=lambda m: m.seq
        )

    def send_message(
        self,
        QueueUrl: str,  # noqa: N803
        MessageBody: str,  # noqa: N803
        MessageAttributes: dict[str, Any] | None = None,  # noqa: N803
        DelaySeconds: int = 0,  # noqa: N803
        **_: Any,
    ) -> dict[str, str]:
        fate = self._fate("send_message")
        queue = self._queue(QueueUrl, "SendMessage")
        message = self.put(queue.url, MessageBody, MessageAttributes)
        message.visible_at = self.clock.now + DelaySeconds
        self.on_send(queue.url, message)
        self._after(fate, "send_message")
        return {"MessageId": message.id, "MD5OfMessageBody": "0" * 32}

    def delete_message(self, QueueUrl: str, ReceiptHandle: str, **_: Any) -> dict:  # noqa: N803
        fate = self._fate("delete_message")
        self._queue(QueueUrl, "DeleteMessage")
        message, problem = self._lookup(QueueUrl, ReceiptHandle)
        if problem == "ReceiptHandleIsInvalid":
            raise _client_error(problem, 400, "DeleteMessage")
        if message is not None:  # a stale handle deletes too (standard queues)
            self._delete(QueueUrl, message, ReceiptHandle)
        self._after(fate, "delete_message")
        return {}

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict], **_: Any) -> dict:  # noqa: N803
        def delete(entry: dict) -> str:
            message, problem = self._lookup(QueueUrl, entry["ReceiptHandle"])
            if problem == "ReceiptHandleIsInvalid":
                return problem
            if message is not None:
                self._delete(QueueUrl, message, entry["ReceiptHandle"])
            return ""

        return self._batch("delete_message_batch", "DeleteMessageBatch", QueueUrl, Entries,
                           delete)

    def _batch(self, name: str, action: str, url: str, entries: list[dict],
               apply: Callable[[dict], str]) -> dict:
        """A batch call: ``apply`` each entry (it returns an error code, or ""), one entry
        failing by injection when the call's fate says so."""
        fate = self._fate(name, batch=True)
        self._queue(url, action)
        self._check_entries(entries)
        failing = self.chaos_entry(len(entries)) if fate == FAIL_ENTRY else -1
        successful, failed = [], []
        for index, entry in enumerate(entries):
            if index == failing:
                failed.append({"Id": entry["Id"], "Code": "InternalError", "SenderFault": False,
                               "Message": "injected"})
                continue
            problem = apply(entry)
            if problem:
                failed.append({"Id": entry["Id"], "Code": problem, "SenderFault": True})
            else:
                successful.append({"Id": entry["Id"]})
        self._after(fate, name)
        return {"Successful": successful, "Failed": failed}

    def _delete(self, url: str, message: StoredMessage, handle: str) -> None:
        self.on_delete(url, message, handle)
        del self.queues[url].messages[message.id]

    def change_message_visibility(
        self,
        QueueUrl: str,  # noqa: N803
        ReceiptHandle: str,  # noqa: N803
        VisibilityTimeout: int,  # noqa: N803
        **_: Any,
    ) -> dict:
        fate = self._fate("change_message_visibility")
        self._queue(QueueUrl, "ChangeMessageVisibility")
        problem = self._change(QueueUrl, ReceiptHandle, VisibilityTimeout)
        if problem:
            raise _client_error(problem, 400, "ChangeMessageVisibility")
        self._after(fate, "change_message_visibility")
        return {}

    def change_message_visibility_batch(
        self,
        QueueUrl: str,  # noqa: N803
        Entries: list[dict],  # noqa: N803
        **_: Any,
    ) -> dict:
        def change(entry: dict) -> str:
            return self._change(QueueUrl, entry["ReceiptHandle"], entry["VisibilityTimeout"])

        return self._batch("change_message_visibility_batch", "ChangeMessageVisibilityBatch",
                           QueueUrl, Entries, change)

    def _change(self, url: str, handle: str, seconds: int) -> str:
        assert 0 <= seconds <= 43200
        message, problem = self._lookup(url, handle)
        if problem in ("gone", "stale"):
            return "ReceiptHandleIsInvalid"
        if problem:
            return problem
        assert message is not None
        if message.visible_at <= self.clock.now:
            return "MessageNotInflight"
        message.visible_at = self.clock.now + seconds
        return ""

    @staticmethod
    def _check_entries(entries: list[dict]) -> None:
        assert 1 <= len(entries) <= MAX_BATCH, f"{len(entries)} entries in one batch call"
        ids = [e["Id"] for e in entries]
        assert len(set(ids)) == len(ids), f"duplicate batch entry ids {ids}"
