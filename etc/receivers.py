"""Example receivers for the demo (`make demo`) and a starting point for your own."""

from __future__ import annotations

import logging

import sqsd

log = logging.getLogger("demo")


@sqsd.receiver("greetings", suffixes=["loud"])
def greet(message: sqsd.Message) -> None:
    """A plain receiver: one message in, one log line out."""
    text = message.body.upper() if message.suffix == "loud" else message.body
    log.warning("greeting received: %s", text)


@sqsd.task("thumbnails", max_retries=2, dead_letter_queue="thumbnails_failed")
def make_thumbnail(image_id: int, width: int = 128) -> None:
    """A task: called with the arguments given to make_thumbnail.delay()."""
    if image_id < 0:
        raise ValueError(f"no image {image_id}")
    log.warning("thumbnail %d made at width %d", image_id, width)


@sqsd.receiver("orders.fifo")
def take_order(message: sqsd.Message) -> None:
    """A FIFO queue: messages of one group are handled in order."""
    log.warning("order %s (group %s)", message.body, message.group_id)
