"""A handler driven by its message body, so a test chooses the outcome by what it sends.

Body: ``COMMAND[|TAG]``; the tag only makes bodies distinct. Commands:

``ok``            return (the message is deleted)
``fail``          raise ValueError("boom TAG")
``restart:N``     on the first receive raise RestartLater(delay=N), afterwards return
``sleep:N``       sleep N seconds, then return
``hang:N``        on the first receive sleep N seconds, afterwards return
``exit``          on the first receive end the worker with os._exit(1), afterwards return

Each call records a ``start`` line and, unless the process dies, an ``end`` line with
the outcome and the start and end times.
"""

import os
import time

import sqsd
from tests.receivers.record import message_fields, record


def handle(message: sqsd.Message) -> None:
    started = time.time()
    fields = message_fields(message)
    record("start", **fields)
    command = message.body.partition("|")[0]
    name, _, argument = command.partition(":")
    first = message.receive_count == 1
    outcome = "ok"
    try:
        if name == "fail":
            raise ValueError(f"boom {message.body}")
        if name == "restart" and first:
            outcome = "restart"
            raise sqsd.RestartLater(delay=int(argument))
        if name == "sleep" or (name == "hang" and first):
            time.sleep(float(argument))
        if name == "exit" and first:
            os._exit(1)
    except ValueError:
        outcome = "raised"
        raise
    finally:
        record("end", started=started, ended=time.time(), outcome=outcome, **fields)


def after_message(*args, **kwargs) -> None:
    """An ``after_message`` hook: records that it ran (it may be given the message or nothing)."""
    record("after")
