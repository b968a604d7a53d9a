"""``sqsctl dlq``: look at a queue's dead-lettered messages and move them back.

SQS cannot peek: listing receives the messages with a short visibility timeout and makes
them visible again at once (their receive count in the dead-letter queue goes up).

Moving back (redrive) has two ways:

- SQS's message-move task (StartMessageMoveTask), when every message goes to one queue,
  the queues are standard ones and the endpoint has it (AWS does, for a dead-letter queue
  that some queue's RedrivePolicy names; moto does not). SQS moves the messages itself.
- Otherwise receive → send → delete, in batches of ten. A message is deleted from the
  dead-letter queue only after SQS accepted its copy, so none is lost. None is duplicated
  by this run: a message seen again (its delete failed, or its visibility ran out) is only
  deleted, and Ctrl-C waits for the batch in hand to be deleted. What remains is the gap
  between SQS accepting a copy and this process deleting the original: if the process is
  killed there (SIGKILL, power loss) or the delete keeps failing, the original stays in the
  dead-letter queue and a later redrive sends it again: a duplicate, never a loss, the same
  promise SQS itself makes (at-least-once). FIFO copies carry the original's id as
  MessageDeduplicationId, so SQS drops such a second copy within its 5-minute window;
  standard copies carry it in the ``sqsd_redriven_from`` attribute.

Messages dead-lettered after the redrive began (they may be the ones just moved, failing
again) and messages of other queues sharing the dead-letter queue are left where they are.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqsd.message import Received
from sqsd.sqs import MAX_ATTRIBUTES, MAX_BATCH, batches, describe_error, error_code
from sqsd.tools.queues import Target

PEEK_VISIBILITY = 30  # seconds a listed message stays hidden if releasing it fails
REDRIVE_VISIBILITY = 120  # seconds to send and delete one batch before it reappears
DELETE_TRIES = 3  # DeleteMessageBatch calls per receive of a message
DELETE_ROUNDS = 3  # receives of a message whose delete keeps failing
MOVE_TASK_POLL = 1.0
# What the worker adds when it dead-letters a message (sqsd.message_actions): notes, not
# the message.
ERROR_ATTRIBUTE = "sqsd_error"
SOURCE_ATTRIBUTE = "sqsd_queue"
RECEIVES_ATTRIBUTE = "sqsd_receive_count"
WORKER_NOTES = (ERROR_ATTRIBUTE, SOURCE_ATTRIBUTE, RECEIVES_ATTRIBUTE)
REDRIVEN_FROM_ATTRIBUTE = "sqsd_redriven_from"
TOO_LONG_CODES = ("AWS.SimpleQueueService.BatchRequestTooLong", "BatchRequestTooLong")


@dataclass(frozen=True)
class DeadLetter(Received):
    """One message received from a dead-letter queue."""

    raw: dict[str, Any]

    @property
    def sent_at(self) -> float:
        """When it entered the dead-letter queue (epoch seconds, SQS's clock)."""
        return int(self.raw.get("Attributes", {}).get("SentTimestamp", 0)) / 1000

    @property
    def group_id(self) -> str | None:
        return self.raw.get("Attributes", {}).get("MessageGroupId")

    def note(self, name: str) -> str:
        attribute = self.raw.get("MessageAttributes", {}).get(name, {})
        return attribute.get("StringValue", "")

    @property
    def source(self) -> str:
        """``QUEUE[:SUFFIX]`` the worker took it from ("" when another tool put it here)."""
        return self.note(SOURCE_ATTRIBUTE)

    def summary(self, with_body: bool = True) -> dict[str, Any]:
        """The message as ``sqsctl --json dlq`` prints it."""
        attributes = {}
        for name, value in self.raw.get("MessageAttributes", {}).items():
            attributes[name] = value.get("StringValue", value.get("BinaryValue"))
        entry: dict[str, Any] = {
            "id": self.id,
            "sent": self.sent_at,
            "source": self.source,
            "error": self.note(ERROR_ATTRIBUTE),
            "receive_count": self.note(RECEIVES_ATTRIBUTE),
            "attributes": {k: v for k, v in attributes.items() if k not in WORKER_NOTES},
        }
        if self.group_id:
            entry["group"] = self.group_id
        if with_body:
            entry["body"] = self.body
        return entry

    def copy_entry(self, fifo: bool) -> dict[str, Any]:
        """SendMessage parameters for its copy: body and the producer's attributes (the
        worker's notes dropped), marked with the original's id."""
        attributes = {
            name: value
            for name, value in self.raw.get("MessageAttributes", {}).items()
            if name not in WORKER_NOTES and name != REDRIVEN_FROM_ATTRIBUTE
        }
        if len(attributes) < MAX_ATTRIBUTES:  # the producer's attributes come first
            attributes[REDRIVEN_FROM_ATTRIBUTE] = {"DataType": "String", "StringValue": self.id}
        entry: dict[str, Any] = {"MessageBody": self.body}
        if attributes:
            entry["MessageAttributes"] = attributes
        if fifo:
            entry["MessageGroupId"] = self.group_id or "default"
            entry["MessageDeduplicationId"] = self.id
        return entry


def queue_url(client: Any, url_name: str) -> str:
    return client.get_queue_url(QueueName=url_name)["QueueUrl"]


def depth(client: Any, url: str) -> int:
    attributes = client.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes.get("ApproximateNumberOfMessages", 0))


def _receive(client: Any, url: str, count: int, visibility: int) -> list[DeadLetter]:
    response = client.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=max(1, min(MAX_BATCH, count)),
        VisibilityTimeout=visibility,
        WaitTimeSeconds=0,
        AttributeNames=["All"],
        MessageAttributeNames=["All"],
    )
    return [DeadLetter(raw) for raw in response.get("Messages", [])]


def release(client: Any, url: str, handles: list[str]) -> None:
    """Make received messages visible again at once (best effort: else they reappear when
    their visibility timeout ends)."""
    for _, entries in batches(handles, lambda h: {"ReceiptHandle": h, "VisibilityTimeout": 0}):
        with contextlib.suppress(Exception):
            client.change_message_visibility_batch(QueueUrl=url, Entries=entries)


def peek(
    client: Any, url: str, limit: int, until: Callable[[DeadLetter], bool] | None = None
) -> list[DeadLetter]:
    """Up to ``limit`` distinct messages, oldest SQS hands out first, all made visible again
    before returning; stops early at the first message ``until`` accepts."""
    seen: dict[str, DeadLetter] = {}
    handles: list[str] = []
    empty_in_a_row = 0
    try:
        while len(seen) < limit and empty_in_a_row < 2:
            received = _receive(client, url, limit - len(seen), PEEK_VISIBILITY)
            handles.extend(message.receipt_handle for message in received)
            if received and all(m.id in seen for m in received):
                break  # the first ones are back: listing took longer than their visibility
            empty_in_a_row = 0 if received else empty_in_a_row + 1
            for message in received:
                seen.setdefault(message.id, message)
                if until is not None and until(message):
                    return [message]
    finally:
        release(client, url, handles)
    return [] if until is not None else list(seen.values())


# -- redrive --------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """Where a message goes back to: its queue's SQS name and URL."""

    url_name: str
    url: str

    @property
    def fifo(self) -> bool:
        return self.url_name.endswith(".fifo")


Route = Callable[[DeadLetter], Destination | None]  # None: not this redrive's message


@dataclass
class Redrive:
    """What a redrive did; ``moved`` counts per destination's SQS name."""

    method: str = "receive"
    moved: Counter[str] = field(default_factory=Counter)
    left_newer: int = 0  # dead-lettered after the redrive began
    left_other: int = 0  # from queues this redrive was not asked for
    failed: dict[str, str] = field(default_factory=dict)  # id -> why its copy was refused
    undeleted: set[str] = field(default_factory=set)  # copied, original still there
    interrupted: bool = False
    note: str = ""  # e.g. why the move task was not used

    @property
    def total(self) -> int:
        return sum(self.moved.values())

    def reply(self) -> dict[str, Any]:
        return {
            "ok": not (self.failed or self.undeleted or self.interrupted),
            "method": self.method,
            "moved": dict(self.moved),
            "total": self.total,
            "left_newer": self.left_newer,
            "left_other": self.left_other,
            "failed": self.failed,
            "undeleted": sorted(self.undeleted),
            "interrupted": self.interrupted,
            "note": self.note,
        }


def redrive(
    client: Any,
    url: str,
    route: Route,
    *,
    began: float | None = None,
    limit: int = 0,
    progress: Callable[[Redrive], None] | None = None,
) -> Redrive:
    """Move messages from the dead-letter queue at ``url`` to where ``route`` says, by
    receive → send → delete (see the module's docstring for what it promises). ``limit``:
    at most that many (0 = all)."""
    began = time.time() if began is None else began
    result = Redrive()
    copied: set[str] = set()  # ids whose copy SQS accepted in this run
    held: list[str] = []  # receipt handles of messages left alone, released at the end
    left: set[str] = set()
    received: list[DeadLetter] = []
    delete_rounds: Counter[str] = Counter()
    empty_in_a_row = 0
    try:
        while empty_in_a_row < 2 and not (limit and result.total >= limit):
            received = _receive(client, url, MAX_BATCH, REDRIVE_VISIBILITY)
            empty_in_a_row = 0 if received else empty_in_a_row + 1
            to_copy: list[tuple[DeadLetter, Destination]] = []
            to_delete: list[DeadLetter] = []
            for message in received:
                if message.id in copied:
                    to_delete.append(message)  # seen again: its copy exists, finish the move
                    continue
                newer = message.sent_at > began
                destination = None if newer else route(message)
                if destination is None or (limit and result.total + len(to_copy) >= limit):
                    held.append(message.receipt_handle)
                    if destination is None and message.id not in left:
                        left.add(message.id)
                        if newer:
                            result.left_newer += 1
                        else:
                            result.left_other += 1
                    continue
                to_copy.append((message, destination))
            with _interrupts_deferred():
                for message, destination in _copy(client, to_copy, result):
                    copied.add(message.id)
                    result.failed.pop(message.id, None)
                    result.moved[destination.url_name] += 1
                    to_delete.append(message)
                stuck = _delete(client, url, to_delete, result)
            # A delete refused again and again: let SQS hand the message out once more (a
            # new receipt handle often works where the old one failed), a few rounds at most.
            retry = [m for m in to_delete if m.id in stuck and delete_rounds[m.id] < DELETE_ROUNDS]
            delete_rounds.update(m.id for m in retry)
            release(client, url, [m.receipt_handle for m in retry])
            received = []
            if progress is not None and to_delete:
                progress(result)
    except KeyboardInterrupt:
        result.interrupted = True
        held.extend(m.receipt_handle for m in received if m.id not in copied)
    finally:
        release(client, url, held)
    return result


def _copy(
    client: Any, pairs: list[tuple[DeadLetter, Destination]], result: Redrive
) -> Iterator[tuple[DeadLetter, Destination]]:
    """Send each message's copy to its destination; yield those SQS accepted."""
    by_destination: dict[Destination, list[DeadLetter]] = {}
    for message, destination in pairs:
        by_destination.setdefault(destination, []).append(message)
    for destination, messages in by_destination.items():
        try:
            response = client.send_message_batch(
                QueueUrl=destination.url,
                Entries=[
                    {"Id": str(i), **m.copy_entry(destination.fifo)} for i, m in enumerate(messages)
                ],
            )
        except Exception as exc:
            if error_code(exc) not in TOO_LONG_CODES:
                raise
            yield from _copy_one_by_one(client, destination, messages, result)
            continue
        for failure in response.get("Failed", []):
            message = messages[int(failure["Id"])]
            result.failed[message.id] = failure.get("Message") or failure.get("Code", "refused")
        for success in response.get("Successful", []):
            yield messages[int(success["Id"])], destination


def _copy_one_by_one(
    client: Any, destination: Destination, messages: list[DeadLetter], result: Redrive
) -> Iterator[tuple[DeadLetter, Destination]]:
    for message in messages:
        try:
            client.send_message(QueueUrl=destination.url, **message.copy_entry(destination.fifo))
        except Exception as exc:
            result.failed[message.id] = f"{type(exc).__name__}: {exc}"
            continue
        yield message, destination


def _delete(client: Any, url: str, messages: list[DeadLetter], result: Redrive) -> set[str]:
    """Delete the originals, retrying refused entries; returns (and reports) the ids of
    those never deleted."""
    pending = messages
    for _ in range(DELETE_TRIES):
        if not pending:
            break
        refused: list[DeadLetter] = []
        for chunk, entries in batches(pending, lambda m: {"ReceiptHandle": m.receipt_handle}):
            try:
                response = client.delete_message_batch(QueueUrl=url, Entries=entries)
            except Exception:
                refused.extend(chunk)
                continue
            refused.extend(chunk[int(f["Id"])] for f in response.get("Failed", []))
        pending = refused
    never = {m.id for m in pending}
    result.undeleted.difference_update(m.id for m in messages if m.id not in never)
    result.undeleted.update(never)
    return never


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block is done (a copy sent is a copy whose original is deleted),
    then raise it."""
    caught: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    except ValueError:  # not the main thread: nothing to defer
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


# -- SQS's message-move task ----------------------------------------------------------


class MoveTaskUnavailable(Exception):
    """The endpoint (or this dead-letter queue) cannot run a message-move task."""


def move_task(
    client: Any,
    source_url: str,
    destination: Destination,
    *,
    progress: Callable[[Redrive], None] | None = None,
    poll: float = MOVE_TASK_POLL,
) -> Redrive:
    """Let SQS move every message from ``source_url`` to ``destination``; returns once the
    task has ended. Ctrl-C cancels the task (what it moved stays moved)."""
    source_arn = _arn(client, source_url)
    destination_arn = _arn(client, destination.url)
    try:
        handle = client.start_message_move_task(
            SourceArn=source_arn, DestinationArn=destination_arn
        )["TaskHandle"]
    except Exception as exc:
        reason = describe_error(exc).partition("\n")[0]
        raise MoveTaskUnavailable(reason[:300]) from exc
    result = Redrive(method="move-task")
    try:
        while True:
            task = _task(client, source_arn, handle)
            moved = task.get("ApproximateNumberOfMessagesMoved", 0)
            result.moved[destination.url_name] = int(moved)
            status = task.get("Status", "")
            if status in ("COMPLETED", "CANCELLED", "FAILED"):
                if status != "COMPLETED":
                    result.note = f"move task {status.lower()}: {task.get('FailureReason', '')}"
                    result.failed["*"] = result.note
                return result
            if progress is not None:
                progress(result)
            time.sleep(poll)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            client.cancel_message_move_task(TaskHandle=handle)
        result.interrupted = True
        return result


def _arn(client: Any, url: str) -> str:
    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return attributes["Attributes"]["QueueArn"]


def _task(client: Any, source_arn: str, handle: str) -> dict[str, Any]:
    results = client.list_message_move_tasks(SourceArn=source_arn, MaxResults=10)["Results"]
    for task in results:
        if task.get("TaskHandle") in (handle, None):
            return task
    return results[0] if results else {"Status": "FAILED", "FailureReason": "task not found"}


# -- where messages go back to --------------------------------------------------------


def router(
    targets: list[Target], queue: str, to: Target | None, url_of: Callable[[str], str]
) -> Route:
    """Each message back to the queue and suffix it came from (the worker's note), when
    that is one of ``queue``'s; a message without a note to ``queue``'s plain queue (else its
    first suffix); with ``to``, every message there. Messages of other queues: None."""
    own = {t.label: t for t in targets if t.queue == queue}
    default = own.get(queue) or next(iter(own.values()))
    destinations: dict[str, Destination] = {}

    def destination(target: Target) -> Destination:
        if target.url_name not in destinations:
            destinations[target.url_name] = Destination(target.url_name, url_of(target.url_name))
        return destinations[target.url_name]

    def route(message: DeadLetter) -> Destination | None:
        if to is not None:
            return destination(to)
        if not message.source:
            return destination(default)
        target = own.get(message.source)
        return destination(target) if target is not None else None

    return route


def single_destination(targets: list[Target], queue: str, to: Target | None) -> Target | None:
    """The one queue every message of ``queue``'s dead-letter queue goes back to, when there
    is exactly one (a message-move task has one destination); else None."""
    if to is not None:
        return to
    own = [t for t in targets if t.queue == queue]
    sharing = [t for t in targets if own and t.dead_letter == own[0].dead_letter]
    return own[0] if len(own) == 1 and len(sharing) == 1 else None
