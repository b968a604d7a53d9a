"""Handlers for the worker engine v2 tests (issue #12, ``tests/integration/test_engine.py``):
the body chooses what happens, as in :mod:`tests.receivers.atleastonce`.

Body ``COMMAND[:ARGUMENT]|TAG``; the tag makes bodies distinct. Commands:

``ok``          return (the message is deleted)
``sleep:S``     sleep S seconds (``await asyncio.sleep(S)`` in ``ahandle``), then return
``fail``        raise ValueError on every delivery
``failonce``    raise ValueError the first time a handler starts on it, else return (by a
                marker file beside the record file, not by the receive count: a message
                given back unstarted is received again without having failed)

Each call records a ``start`` line before anything else and an ``end`` line with the
outcome (``ok``, ``raised``, ``cancelled``) and its start and end times when the call
returns, raises or is cancelled, each with the pid, the thread (``threading.get_ident()``),
``key`` (the body, for :class:`tests.chaos.ledger.Ledger`), the receive count and the FIFO
message group. ``handle`` is a plain function (run on the worker's thread pool when
``concurrency > 1``), ``ahandle`` the same as an ``async def`` receiver.
"""

import asyncio
import hashlib
import os
import threading
import time

import sqsd
from tests.receivers.record import RECORD_ENV, record


def fields(message: sqsd.Message) -> dict:
    return {
        "queue": message.queue,
        "message_id": message.id,
        "key": message.body,  # short bodies: the Ledger's key is the body
        "receive_count": message.receive_count,
        "group": (message.attributes or {}).get("MessageGroupId"),
        "thread": threading.get_ident(),
    }


def first_start(body: str) -> bool:
    """True exactly once per body (across processes): creates a marker file."""
    record_path = os.environ.get(RECORD_ENV)
    if not record_path:
        return True
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    marker = os.path.join(os.path.dirname(record_path), f"failonce-{digest}")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


def fails(message: sqsd.Message, name: str) -> bool:
    return name == "fail" or (name == "failonce" and first_start(message.body))


def command(message: sqsd.Message) -> tuple[str, str]:
    name, _, argument = message.body.partition("|")[0].partition(":")
    return name, argument


def handle(message: sqsd.Message) -> None:
    started = time.time()
    info = fields(message)
    record("start", **info)
    name, argument = command(message)
    outcome = "ok"
    try:
        if name == "sleep":
            time.sleep(float(argument))
        elif fails(message, name):
            outcome = "raised"
            raise ValueError(f"engine fail {info['key']}")
    finally:
        record("end", started=started, ended=time.time(), outcome=outcome, **info)


async def ahandle(message: sqsd.Message) -> None:
    started = time.time()
    info = fields(message)
    record("start", **info)
    name, argument = command(message)
    outcome = "ok"
    try:
        if name == "sleep":
            await asyncio.sleep(float(argument))
        else:
            await asyncio.sleep(0)
            if fails(message, name):
                outcome = "raised"
                raise ValueError(f"engine async fail {info['key']}")
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        info["thread"] = threading.get_ident()
        record("end", started=started, ended=time.time(), outcome=outcome, **info)
