"""What the regression suites of issues #10 and #12 share: a ledger fixture that prints
the test's figures as one JSON line (also when the test failed first), queues created
before any daemon runs, and waiting for the ledger to settle (saying how the workers
fared when it does not)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.chaos.ledger import Ledger

VISIBILITY = 5  # the harness's default and sqsd's floor


def ledger_fixture(label: str):
    """A ``ledger`` fixture whose figures are printed as ``LABEL TEST: {json}``."""

    @pytest.fixture
    def ledger(request, harness):
        book = Ledger(harness)
        book.extra = {}
        book.label = label
        yield book
        if book.sent and not getattr(book, "reported", False):
            report(request.node.name, book, incomplete=True)

    return ledger


def report(name: str, ledger: Ledger, **extra: Any) -> dict[str, Any]:
    """Print the ledger's figures (and ``extra``) as one JSON line; return them."""
    summary = ledger.summary()
    figures = {
        "sent": summary["sent"],
        "handled": summary["handled"],
        "duplicates": summary["duplicates"],
        "dead_lettered": summary["dead_lettered"],
        "failed_logged": summary["failed_logged"],
        "lost": summary["lost"],
        "dead_but_expected_handled": summary["dead_but_expected_handled"],
        **ledger.extra,
        **extra,
    }
    ledger.reported = True
    print(f"\n{ledger.label} {name}: {json.dumps(figures, default=str)}")
    return figures


def create_queue(harness, name: str) -> str:
    """Create a queue before any daemon runs, so the messages sent now are all there for
    the worker's first receive (one SendMessageBatch, one ReceiveMessage of up to 10)."""
    attributes = {"VisibilityTimeout": str(VISIBILITY)}
    if name.endswith(".fifo"):
        attributes.update(FifoQueue="true", ContentBasedDeduplication="true")
    return harness.sqs.create_queue(QueueName=harness.queue_name(name),
                                    Attributes=attributes)["QueueUrl"]


def settle(ledger: Ledger, daemon, queues: list[str], timeout: float) -> None:
    """``ledger.wait_settled``; a failure also says how the workers fared meanwhile
    (restarts, state, last exit), which is usually why messages were not settled."""
    try:
        ledger.wait_settled(timeout=timeout, queues=queues, daemon=daemon)
    except AssertionError as exc:
        try:
            workers = [{k: w.get(k) for k in ("queue", "pid", "state", "restarts", "last_exit")}
                       for w in daemon.status()["workers"]]
        except Exception as status_error:  # the daemon may be gone: say so instead
            workers = f"no status: {status_error}"
        raise AssertionError(f"{exc}\nworkers: {workers}") from None


def assert_nothing_dropped(figures: dict[str, Any]) -> None:
    assert figures["lost"] == 0, figures
    assert not figures["dead_but_expected_handled"], figures
