"""Handlers for the at-least-once regression tests (issue #10,
``tests/integration/test_at_least_once.py``): the body chooses what happens.

Body ``COMMAND[:ARGUMENT]|TAG``; the tag makes bodies distinct. A command misbehaves on
*every* delivery, so only ``max_retries`` ends a poison message. Commands:

``ok``           return (the message is deleted)
``sleep:S``      sleep S seconds, then return
``fail``         raise ValueError
``crash``        end the worker with ``os._exit(3)``
``sysexit``      ``sys.exit()``; ``sysexit:N`` is ``sys.exit(N)``
``fork``         ``os.fork()`` and return in both processes (the parent records the
                 child's pid in a ``forked`` line)

Each call records a ``start`` line before anything else (so a crash still leaves one),
and an ``end`` line with the outcome when the call returns or raises, with ``key`` (the
body; :func:`tests.receivers.chaos.body_key`) so :class:`tests.chaos.ledger.Ledger` can
account for every message. ``ahandle`` is the same as an ``async def`` receiver (``ok``
and ``fail`` only, after an ``await``), ``atask`` an ``async def`` ``@sqsd.task``.
"""

import asyncio
import os
import sys
import time

import sqsd
from sqsd.message import encode_call
from tests.receivers.chaos import body_key, fields
from tests.receivers.record import record


def handle(message: sqsd.Message) -> None:
    started = time.time()
    info = fields(message)
    record("start", **info)
    name, _, argument = message.body.partition("|")[0].partition(":")
    outcome = "ok"
    try:
        if name == "sleep":
            time.sleep(float(argument))
        elif name == "fail":
            raise ValueError(f"at-least-once fail {info['key']}")
        elif name == "crash":
            os._exit(3)
        elif name == "sysexit":
            outcome = "sysexit"
            if argument:
                sys.exit(int(argument))
            sys.exit()
        elif name == "fork":
            # The handler's work is done; then it forks and returns in both processes.
            record("end", started=started, ended=time.time(), outcome="ok", **info)
            child = os.fork()
            if child:
                record("forked", child=child, **info)
            return
    except ValueError:
        outcome = "raised"
        raise
    finally:
        if name != "fork":
            record("end", started=started, ended=time.time(), outcome=outcome, **info)


async def ahandle(message: sqsd.Message) -> None:
    """An ``async def`` receiver: the side effect comes only after an ``await``."""
    info = fields(message)
    record("start", **info)
    started = time.time()
    await asyncio.sleep(0.01)
    if message.body.startswith("fail"):
        record("end", started=started, ended=time.time(), outcome="raised", **info)
        raise ValueError(f"async fail {info['key']}")
    record("end", started=started, ended=time.time(), outcome="ok", **info)


@sqsd.task("alo_atask")
async def atask(tag: str) -> str:
    """An ``async def`` task; a tag starting with "fail" raises after an ``await``."""
    key = body_key(encode_call([tag], {}))
    record("start", queue="atask", key=key)
    started = time.time()
    await asyncio.sleep(0.01)
    if tag.startswith("fail"):
        record("end", queue="atask", key=key, started=started, ended=time.time(),
               outcome="raised")
        raise ValueError(f"async task fail {tag}")
    record("end", queue="atask", key=key, started=started, ended=time.time(), outcome="ok")
    return tag
