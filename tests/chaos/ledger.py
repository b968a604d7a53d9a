"""Accounting for every message a chaos scenario sends.

The test sends through a :class:`Ledger`, which remembers each body's key
(:func:`tests.receivers.chaos.body_key`) and what should become of it: ``handled`` (the
handler returns on some delivery) or ``dead`` (a poison message: it must end in a
dead-letter queue or, for a queue without one, in the failed-messages log). Handlers
record each call in the harness's record file; dead-letter queues are drained into the
ledger (read, then deleted, so they never need paging).

    lost = sent - handled - dead-lettered - failed-logged   (by policy; must be 0)

Duplicates (a body handled more than once) are allowed, at least once is the contract,
and are counted and reported.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from tests.receivers.chaos import body_key

SQS_BATCH_BYTES = 1_048_576  # moto's (and SQS's) limit on a SendMessageBatch's bodies


class Ledger:
    def __init__(self, harness):
        self.harness = harness
        self.expected: dict[str, str] = {}  # key -> "handled" | "dead"
        self.queue_of: dict[str, str] = {}  # key -> configured queue name
        self.sent = 0
        self.dead_letter_queues: list[str] = []  # configured names of DLQs to drain
        self.failed_log_queues: set[str] = set()  # queues whose poison ends in the failed log
        self.dead_lettered: Counter[str] = Counter()
        self.dead_letter_attributes: dict[str, dict] = {}

    # -- sending ------------------------------------------------------------------------

    def send(self, queue: str, bodies: Iterable[str], *,
             expect: str | Callable[[str], str] = "handled", suffix: str = "",
             attributes: dict[str, Any] | None = None) -> int:
        """Send ``bodies`` with SendMessageBatch straight to the emulator (no wake-up).
        ``expect``: "handled", "dead", or a function of the body that says which."""
        url = self.harness.queue_url(queue, suffix)
        batch: list[str] = []
        size = 0
        count = 0
        for body in bodies:
            key = body_key(body)
            assert key not in self.expected, f"body sent twice: {key}"
            fate = expect(body) if callable(expect) else expect
            assert fate in ("handled", "dead"), fate
            self.expected[key] = fate
            self.queue_of[key] = queue
            if batch and (len(batch) == 10 or size + len(body) > SQS_BATCH_BYTES):
                self._send_batch(url, batch, attributes)
                batch, size = [], 0
            batch.append(body)
            size += len(body)
            count += 1
        if batch:
            self._send_batch(url, batch, attributes)
        self.sent += count
        return count

    def _send_batch(self, url: str, bodies: list[str], attributes: dict[str, Any] | None) -> None:
        entries = []
        for i, body in enumerate(bodies):
            entry: dict[str, Any] = {"Id": str(i), "MessageBody": body}
            if attributes:
                entry["MessageAttributes"] = attributes
            entries.append(entry)
        response = self.harness.sqs.send_message_batch(QueueUrl=url, Entries=entries)
        assert not response.get("Failed"), response.get("Failed")

    # -- observing ----------------------------------------------------------------------

    def handled(self) -> Counter[str]:
        """How often each of this ledger's bodies was handled successfully."""
        counts: Counter[str] = Counter()
        for entry in self.harness.records("end"):
            key = entry.get("key")
            if key in self.expected and entry.get("outcome") == "ok":
                counts[key] += 1
        return counts

    def failed_logged(self) -> set[str]:
        """Keys of poison bodies in the failed-messages log of a queue without a DLQ."""
        found = set()
        for line in self.harness.failed_lines():
            key = body_key(line.get("body", ""))
            if key in self.expected and line.get("queue") in self.failed_log_queues:
                found.add(key)
        return found

    def drain_dead_letters(self) -> None:
        for name in self.dead_letter_queues:
            url = self.harness.queue_url(name)
            while True:
                messages = self.harness.sqs.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=300,
                    WaitTimeSeconds=0, MessageAttributeNames=["All"],
                ).get("Messages", [])
                if not messages:
                    break
                for message in messages:
                    key = body_key(message["Body"])
                    self.dead_lettered[key] += 1
                    self.dead_letter_attributes[key] = message.get("MessageAttributes", {})
                self.harness.sqs.delete_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ])

    def dropped(self) -> list[str]:
        """Bodies that should have been handled but were dead-lettered or written to the
        failed log unhandled: they will not come back by themselves."""
        handled = self.handled()
        gone = {k for k in self.expected if self.dead_lettered[k]}
        gone |= {body_key(line.get("body", "")) for line in self.harness.failed_lines()
                 if str(line.get("error", "")).startswith("received ")}
        return sorted(k for k in gone
                      if self.expected.get(k) == "handled" and not handled[k])

    def outstanding(self) -> list[str]:
        """Keys not yet accounted for: neither handled nor dead-lettered nor failed-logged."""
        self.drain_dead_letters()
        handled = self.handled()
        failed = self.failed_logged()
        return [k for k in self.expected
                if not handled[k] and not self.dead_lettered[k] and k not in failed]

    def wait_settled(self, timeout: float, queues: Iterable[str] = (), daemon=None) -> None:
        """Wait until every body is accounted for and ``queues`` (``NAME`` or
        ``NAME:SUFFIX``) are empty in SQS: no duplicate is still on its way. With ``daemon``,
        fail at once if it exits meanwhile."""
        deadline = time.monotonic() + timeout
        left: list[str] = []
        while time.monotonic() < deadline:
            if daemon is not None and daemon.proc.poll() is not None and not daemon.killed:
                raise AssertionError(f"sqsd exited with {daemon.proc.returncode} while "
                                     f"{len(self.outstanding())} messages were outstanding")
            # Depths first: a message that left its queue before this has been recorded,
            # dead-lettered or failed-logged before the ledger looks below.
            empty = all(self.harness.depth(*q.split(":", 1)) == 0 for q in queues)
            left = self.outstanding()
            if not left and empty:
                return
            dropped = self.dropped()
            if dropped:
                raise AssertionError(f"{len(dropped)} messages were dead-lettered or failed-"
                                     f"logged without being handled, e.g. {dropped[:5]}; "
                                     f"summary: {self.summary()}")
            if left and empty and queues:
                raise AssertionError(f"{len(left)} messages left their queues without being "
                                     f"handled, dead-lettered or failed-logged, e.g. "
                                     f"{left[:5]}; summary: {self.summary()}")
            time.sleep(0.25)  # polling interval of a deadline wait, not a synchronisation
        raise AssertionError(f"{len(left)} of {self.sent} messages not accounted for after "
                             f"{timeout} s, e.g. {left[:5]}; summary: {self.summary()}")

    # -- figures ------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The figures; the three outcomes are disjoint, so lost = sent - the other three."""
        self.drain_dead_letters()
        handled = self.handled()
        handled_keys = {k for k in self.expected if handled[k]}
        dead_keys = {k for k in self.expected if self.dead_lettered[k]} - handled_keys
        failed = self.failed_logged() - handled_keys - dead_keys
        lost = [k for k in self.expected
                if k not in handled_keys and k not in dead_keys and k not in failed]
        return {
            "sent": self.sent,
            "handled": len(handled_keys),
            "duplicates": sum(n - 1 for n in handled.values() if n > 1),
            "dead_lettered": len(dead_keys),
            "failed_logged": len(failed),
            "lost": len(lost),
            "lost_examples": lost[:5],
            "dead_lettered_after_handling": sum(1 for k in handled_keys if self.dead_lettered[k]),
            "dead_letter_duplicates": sum(n - 1 for n in self.dead_lettered.values() if n > 1),
            "dead_but_expected_handled": sorted(
                k for k in dead_keys | failed if self.expected[k] == "handled")[:20],
            "handled_but_expected_dead": sorted(
                k for k in handled_keys if self.expected[k] == "dead")[:20],
        }
