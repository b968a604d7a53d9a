"""The producer logs like the daemon (keyword events) through the host's stdlib logging."""

import logging

from sqsd import config
from sqsd.producer import Producer


def test_unknown_suffix_is_a_keyword_event_on_the_stdlib_logger(caplog):
    settings = config.parse({"queues": {"emails": {"suffixes": ["", "big"]}}}, "test.toml")
    with caplog.at_level(logging.WARNING, logger="sqsd.producer"):
        Producer(settings)._warn_unknown_suffix("emails", "huge")
        Producer(settings)._warn_unknown_suffix("emails", "big")
    [record] = caplog.records
    assert (record.name, record.getMessage()) == ("sqsd.producer", "sending to an unknown suffix")
    assert (record.queue, record.suffix, record.known) == ("emails", "huge", ("", "big"))
