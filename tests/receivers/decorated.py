"""A queue registered by ``@sqsd.receiver``, without a ``receiver =`` key in the config."""

import sqsd
from tests.receivers.record import message_fields, record


@sqsd.receiver("decorated")
def echo(message: sqsd.Message) -> None:
    record("start", **message_fields(message))
    record("end", outcome="ok", **message_fields(message))
