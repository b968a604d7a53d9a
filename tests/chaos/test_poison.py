"""3. Poison messages: handlers that segfault, ``os._exit``, hang past ``hard_timeout`` or
raise on undecodable task JSON; bodies at the size limit; binary (non-UTF-8) attributes.
Each poison ends in the dead-letter queue (or, for a queue without one, the failed-messages
log) after ``max_retries``, while the innocent messages beside them are handled.

The emulator (moto 5) accepts bodies up to 1,048,576 characters, SQS's current limit
(256 KiB before 2025); the big bodies here are exactly that long.
"""

import time

import pytest

from chaos.conftest import (
    CHAOS_RECEIVER,
    PROFILE,
    all_workers_running,
    assert_answers_sqsctl_ping,
)
from sqsd.message import encode_call
from tests.receivers.chaos import attributes_digest, body_key

pytestmark = pytest.mark.timeout(PROFILE.timeout)

MAX_BODY = 1_048_576
MAX_RETRIES = 1  # two handler starts, then the dead-letter queue on the third receive
QUEUES = {
    # Each poison kills its worker; two processes keep the queue moving meanwhile. One
    # message per receive keeps the figures comparable with earlier runs; since #10 the
    # unstarted neighbours of a crash are not charged (max_retries counts handler starts),
    # which tests/integration/test_at_least_once.py checks with full batches.
    "crash": {"receiver": CHAOS_RECEIVER, "processes": 2, "dead_letter_queue": "crash_dlq",
              "hard_timeout": 2, "batch_size": 1},
    # A task queue that retries failures: undecodable JSON raises on every delivery.
    "task": {"receiver": "tests.receivers.chaos:add", "dead_letter_queue": "task_dlq",
             "on_error": "retry"},
    # No dead-letter queue: failures are written to the failed log and deleted.
    "big": {"receiver": CHAOS_RECEIVER, "batch_size": 2},
    "attrs": {"receiver": CHAOS_RECEIVER, "dead_letter_queue": "attrs_dlq"},
}
BINARY = bytes(range(256))[::-1]  # every byte value; invalid UTF-8 from the first byte
ATTRIBUTES = {
    "blob": {"DataType": "Binary", "BinaryValue": BINARY},
    "raw": {"DataType": "Binary.gz", "BinaryValue": b"\x1f\x8b\x08\x00\xff\xfe\xfd"},
    "text": {"DataType": "String", "StringValue": "z\u00fcrich \u2603 \U0001f600"},
    "n": {"DataType": "Number", "StringValue": "-12.5e3"},
}


def padded(head: str) -> str:
    return head + "|" + "x" * (MAX_BODY - len(head) - 1)


def test_poison_messages_end_in_the_dead_letter_queue_or_failed_log(harness, ledger, report,
                                                                    profile):
    daemon = harness.start(QUEUES, defaults={"max_retries": MAX_RETRIES})
    for name in ("crash_dlq", "task_dlq", "attrs_dlq"):
        ledger.dead_letter_queues.append(name)
    ledger.failed_log_queues.add("big")
    each = range(profile.poison_each)
    innocents = profile.poison_innocents
    started = time.time()

    poisons = [f"{kind}|{kind}{n}" for kind in ("segv", "exit:3", "hang") for n in each]
    crash_innocents = [f"ok|crash{n}" for n in range(innocents)]
    # Poison spread among the innocents, so crashes hit batches holding both.
    mixed = list(crash_innocents)
    for i, body in enumerate(poisons):
        mixed.insert((i + 1) * len(mixed) // (len(poisons) + 1), body)
    ledger.send("crash", mixed, expect=lambda body: "dead" if body in poisons else "handled")

    ledger.send("task", [encode_call([f"t{n}"], {}) for n in range(innocents // 4)])
    ledger.send("task", [f'{{"not json|{n}' for n in each] + [f"[[1], {n}" for n in each]
                + [f"\u00ff\ufffd|{n}" for n in each], expect="dead")

    ledger.send("big", [padded(f"ok|big{n}") for n in each])
    ledger.send("big", [padded(f"fail|bigfail{n}") for n in each], expect="dead")

    ledger.send("attrs", [f"attrs|a{n}" for n in range(innocents // 4)], attributes=ATTRIBUTES)
    ledger.send("attrs", [f"attrs-fail|af{n}" for n in each], attributes=ATTRIBUTES,
                expect="dead")

    ledger.wait_settled(timeout=profile.settle,
                        queues=["crash", "task", "big", "attrs"], daemon=daemon)
    settled = time.time() - started
    innocents_done = max(r["ended"] for r in harness.records("end", queue="crash", outcome="ok"))
    daemon.wait_for(lambda: all_workers_running(daemon), timeout=profile.settle,
                    what="every worker running after the poison")
    workers = daemon.status()["workers"]
    figures = report(
        **ledger.summary(), poisons=len(poisons) + 5 * len(each),
        settled_seconds=round(settled, 1),
        crash_innocents_done_after=round(innocents_done - started, 1),
        crash_restarts=sum(w["restarts"] for w in workers if w["queue"] == "crash"),
        crash_last_exits=[w["last_exit"] for w in workers if w["queue"] == "crash"],
        failed_log_lines=len(harness.failed_lines()),
        max_body_chars=MAX_BODY,
    )
    assert figures["lost"] == 0
    assert not figures["handled_but_expected_dead"]
    assert not figures["dead_but_expected_handled"], "innocent messages were dead-lettered"

    # Binary attributes reach the handler intact, and the dead-letter queue keeps them.
    sent_digest = attributes_digest(ATTRIBUTES)
    seen = {r["attributes"] for r in harness.records("end", queue="attrs")}
    assert seen == {sent_digest}
    for n in each:
        kept = ledger.dead_letter_attributes[f"attrs-fail|af{n}"]
        assert attributes_digest({k: kept[k] for k in ATTRIBUTES}) == sent_digest
        assert "sqsd_error" in kept
    # The failed log holds the full big bodies that failed.
    logged = {body_key(line["body"]) for line in harness.failed_lines() if line["queue"] == "big"}
    assert logged == {body_key(padded(f"fail|bigfail{n}")) for n in each}
    assert_answers_sqsctl_ping(daemon)
