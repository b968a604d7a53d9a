"""``sqsctl send``: one message to a queue, as a producer sends it (``sqsd.send``)."""

from __future__ import annotations

from typing import Any

from sqsd.producer import Producer
from sqsd.tools.queues import Target

ATTRIBUTE_TYPES = ("String", "Number")


def parse_attribute(text: str) -> tuple[str, dict[str, str]]:
    """``NAME=VALUE`` (a String attribute) or ``NAME:Number=VALUE`` → (name, SQS attribute)."""
    name, equals, value = text.partition("=")
    name, _, data_type = name.partition(":")
    data_type = data_type or "String"
    if not equals or not name or data_type not in ATTRIBUTE_TYPES:
        raise ValueError(f"{text!r}: expected NAME=VALUE or NAME:Number=VALUE")
    if data_type == "Number":
        try:
            float(value)
        except ValueError:
            raise ValueError(f"{text!r}: {value!r} is not a number") from None
    return name, {"DataType": data_type, "StringValue": value}


def send(
    producer: Producer,
    target: Target,
    body: str,
    *,
    delay: float = 0,
    attributes: dict[str, dict[str, str]] | None = None,
    group: str | None = None,
    dedup: str | None = None,
) -> dict[str, Any]:
    """Send ``body`` to ``target``; the reply sqsctl prints. Raises ValueError for
    arguments SQS would refuse, SendError when SQS does."""
    if not body:
        raise ValueError("SQS refuses an empty message body")
    if (group or dedup) and not target.fifo:
        raise ValueError(f"{target.label} is not a FIFO queue: --group and --dedup are for .fifo")
    message_id = producer.send(
        target.queue,
        body,
        suffix=target.suffix,
        delay_seconds=delay,
        group_id=group,
        dedup_id=dedup,
        message_attributes=attributes or None,
        wake=False,  # sqsctl wakes through the socket it was pointed at
    )
    return {
        "ok": True,
        "queue": target.queue,
        "suffix": target.suffix,
        "url_name": target.url_name,
        "message_id": message_id,
        "delay": delay,
    }
