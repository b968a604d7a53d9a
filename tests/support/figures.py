"""What the regression suites of issues #10 and #12 share: a ledger fixture that prints
the test's figures as one JSON line (also when the test failed first), and queues created
before any daemon runs."""

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
