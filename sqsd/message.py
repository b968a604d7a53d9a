"""The message a handler receives, and how producers turn arguments into a body (including
the task wire format ``[[args], {kwargs}]``)."""

from __future__ import annotations

import json
from typing import Any

NOT_BEFORE_ATTRIBUTE = "sqsd_not_before"  # epoch seconds; set when a delay exceeds SQS's 15 min


class Message:
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
    def body(self) -> str:
        return self.raw["Body"]

    @property
    def id(self) -> str:
        return self.raw["MessageId"]

    @property
    def receipt_handle(self) -> str:
        return self.raw["ReceiptHandle"]

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
