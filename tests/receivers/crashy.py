"""A handler that ends its worker process, for supervision tests.

Body ``COMMAND[|TAG]``. ``exit:N`` ends the worker with ``os._exit(N)`` on every delivery
(``exit`` alone exits 1), so a queue holding such messages crashes each worker that takes
one; anything else returns. Each call records a ``start`` line first, and an ``end`` line
when the process survives it.
"""

import os

import sqsd
from tests.receivers.record import message_fields, record


def handle(message: sqsd.Message) -> None:
    fields = message_fields(message)
    record("start", **fields)
    name, _, argument = message.body.partition("|")[0].partition(":")
    if name == "exit":
        os._exit(int(argument or 1))
    record("end", outcome="ok", **fields)
