"""Handlers for the reliability suite (``tests/chaos``): the body chooses what happens.

Body ``COMMAND[:ARGUMENT]|TAG[|PADDING]``; the tag makes bodies distinct, the padding
makes them large. Unlike :mod:`tests.receivers.basic`, a poison command misbehaves on
*every* delivery, so only ``max_retries`` ends it. Commands:

``ok``          return (the message is deleted)
``sleep:S``     sleep S seconds, then return
``fail``        raise ValueError
``segv``        dereference a NULL pointer: the worker dies of SIGSEGV
``exit:N``      end the worker with ``os._exit(N)`` (N defaults to 3)
``hang``        sleep an hour: only ``hard_timeout`` ends it
``leak:MB``     keep MB MiB of touched memory for the life of the process, then return
``attrs``       record a digest of the message attributes, then return
``attrs-fail``  record the digest, then raise ValueError

Each call records a ``start`` line, and an ``end`` line when the process survives it,
with ``key`` (:func:`body_key`) instead of the body, so 1 MiB bodies make short lines.
``add`` is a ``@sqsd.task`` (wire format ``[[args], {kwargs}]``) that records its body's key.
"""

import ctypes
import hashlib
import os
import time

import sqsd
from sqsd.message import encode_call
from tests.receivers.record import record

KEY_LIMIT = 200
_leaked: list[bytes] = []


def body_key(body: str) -> str:
    """The body itself when short, else its head, length and digest."""
    if len(body) <= KEY_LIMIT:
        return body
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    return f"{body[:80]}...[{len(body)} chars sha256 {digest}]"


def attributes_digest(message_attributes: dict) -> str:
    """Digest of user attributes as SQS returns them (binary values are bytes)."""
    h = hashlib.sha256()
    for name in sorted(message_attributes):
        attr = message_attributes[name]
        value = attr.get("BinaryValue")
        if value is None:
            value = attr.get("StringValue", "").encode()
        h.update(name.encode() + b"\0" + attr.get("DataType", "").encode() + b"\0" + value)
    return h.hexdigest()


def fields(message: sqsd.Message) -> dict:
    return {
        "queue": message.queue,
        "suffix": message.suffix,
        "message_id": message.id,
        "key": body_key(message.body),
        "receive_count": message.receive_count,
    }


def handle(message: sqsd.Message) -> None:
    started = time.time()
    info = fields(message)
    record("start", **info)
    name, _, argument = message.body.partition("|")[0].partition(":")
    outcome = "ok"
    extra: dict = {}
    try:
        if name == "sleep":
            time.sleep(float(argument))
        elif name == "fail":
            raise ValueError(f"chaos fail {info['key']}")
        elif name == "segv":
            ctypes.string_at(0)
        elif name == "exit":
            os._exit(int(argument or 3))
        elif name == "hang":
            time.sleep(3600)
        elif name == "leak":
            _leaked.append(b"\x01" * (int(argument) * 2**20))  # touched, so it counts in RSS
        elif name in ("attrs", "attrs-fail"):
            extra["attributes"] = attributes_digest(message.raw.get("MessageAttributes", {}))
            if name == "attrs-fail":
                raise ValueError(f"chaos attrs-fail {info['key']}")
    except ValueError:
        outcome = "raised"
        raise
    finally:
        record("end", started=started, ended=time.time(), outcome=outcome, **info, **extra)


@sqsd.task("chaos_task")
def add(tag, *args, **kwargs):
    """A task: records the key of the body that carried this call."""
    record("end", queue="task", key=body_key(encode_call([tag, *args], kwargs)), outcome="ok")
    return tag
