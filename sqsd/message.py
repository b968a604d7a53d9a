"""The message a handler receives, and how producers turn arguments into a body (including
the task wire format ``[[args], {kwargs}]``)."""

from __future__ import annotations

import json
import math
import time
from typing import Any

NOT_BEFORE_ATTRIBUTE = "sqsd_not_before"  # epoch seconds; set when a delay exceeds SQS's 15 min
NOT_BEFORE_MAX_AHEAD = 10 * 365 * 86400  # further ahead is a producer's mistake, not a delay


class Received:
    """The fields of a received SQS message every reader needs, read from ``self.raw``
    (a ReceiveMessage entry): for ``Message`` and for sqsctl's dead-letter listing."""

    __slots__ = ()
    raw: dict[str, Any]

    @property
    def body(self) -> str:
        return self.raw["Body"]

    @property
    def id(self) -> str:
        return self.raw["MessageId"]

    @property
    def receipt_handle(self) -> str:
        return self.raw["ReceiptHandle"]


class Message(Received):
    """One received SQS message.

    Subclass it and pass ``message_class=`` to ``@receiver`` to change how bodies are
    encoded at send time (``encode``) and add properties that read the body.
    """

    __slots__ = ("raw", "queue", "suffix")

    def __init__(self, raw: dict[str, Any], queue: str = "", suffix: str = "") -> None:
        self.raw = raw
        self.queue = queue
        self.suffix = suffix

    @property
    def attributes(self) -> dict[str, str]:
        """SQS system attributes (``ApproximateReceiveCount``, ``SentTimestamp``, ...)."""
        return self.raw.get("Attributes", {})

    @property
    def receive_count(self) -> int:
        return int(self.attributes.get("ApproximateReceiveCount", 1))

    @property
    def group_id(self) -> str | None:
        return self.attributes.get("MessageGroupId")

    @property
    def message_attributes(self) -> dict[str, Any]:
        """User message attributes as plain values (str, number string or bytes)."""
        result: dict[str, Any] = {}
        for name, attr in self.raw.get("MessageAttributes", {}).items():
            result[name] = attr.get("StringValue", attr.get("BinaryValue"))
        return result

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @classmethod
    def encode(cls, message: Any = None, **kwargs: Any) -> str:
        """Turn ``send()`` arguments into a body: a string as is, ``body=`` as is,
        anything else (or keyword arguments) as JSON."""
        if message is None:
            if set(kwargs) == {"body"}:
                message = kwargs["body"]
            elif kwargs:
                message = kwargs
            else:
                raise TypeError("send() needs a message or body=")
        elif kwargs:
            raise TypeError(f"unexpected arguments for {cls.__name__}: {sorted(kwargs)}")
        if isinstance(message, Message):
            return message.body
        if isinstance(message, str):
            return message
        return json.dumps(message, separators=(",", ":"))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.queue}:{self.suffix} id={self.id}>"


def read_not_before(raw: Any, now: float | None = None) -> tuple[float | None, str]:
    """The ``sqsd_not_before`` attribute of a received message, parsed defensively:
    ``(epoch seconds, "")``, ``(None, "")`` without one, or ``(None, why)`` when it is
    unusable (wrong data type, not a number, not finite, negative, more than ten years
    ahead): a producer's message must never stop the worker, so such a value is ignored."""
    attributes = raw.get("MessageAttributes") if isinstance(raw, dict) else None
    if not isinstance(attributes, dict) or NOT_BEFORE_ATTRIBUTE not in attributes:
        return None, ""
    attribute = attributes[NOT_BEFORE_ATTRIBUTE]
    if not isinstance(attribute, dict):
        return None, "not an attribute"
    data_type = attribute.get("DataType")
    if not isinstance(data_type, str) or data_type.split(".")[0] not in ("String", "Number"):
        return None, f"data type {data_type!r}, expected String or Number"
    text = attribute.get("StringValue")
    if not isinstance(text, str):
        return None, "no string value"
    try:
        value = float(text[:64])
    except ValueError:
        return None, f"{text[:40]!r} is not a number"
    if not math.isfinite(value) or value < 0:
        return None, f"{text[:40]!r} is not a time"
    if value > (time.time() if now is None else now) + NOT_BEFORE_MAX_AHEAD:
        return None, f"{text[:40]!r} is more than ten years ahead"
    return value, ""


def encode_call(args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> str:
    """The zc.sqs wire format: ``[[args], {kwargs}]``."""
    return json.dumps([list(args), kwargs], separators=(",", ":"))


def decode_call(body: str) -> tuple[list[Any], dict[str, Any]]:
    """Parse ``[[args], {kwargs}]``; ValueError with the reason when the body is not one."""
    data = json.loads(body)
    if (
        not isinstance(data, list)
        or len(data) != 2
        or not isinstance(data[0], list)
        or not isinstance(data[1], dict)
    ):
        raise ValueError("task message body is not [[args], {kwargs}]")
    return data[0], data[1]
