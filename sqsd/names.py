"""SQS's rule for queue names, checked at start for every name sqsd will use: each queue
with its prefix and every suffix, and each dead-letter queue.

A name has 1 to 80 characters of A-Z, a-z, 0-9, "_" and "-"; a FIFO queue's name ends in
".fifo", which counts towards the 80.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sqsd.config import QueueSettings, Settings
from sqsd.errors import ConfigError

MAX_LENGTH = 80
FIFO = ".fifo"
ALLOWED = "A-Z, a-z, 0-9, _ and -"
_BAD = re.compile(r"[^A-Za-z0-9_-]")


def bad_characters(part: str) -> str:
    """Why ``part`` (a name without ``.fifo``, a prefix or a suffix) is refused, or ""."""
    bad = sorted(set(_BAD.findall(part)))
    if not bad:
        return ""
    shown = " ".join(repr(c) for c in bad)
    hint = ' (".fifo" only at the end of a FIFO queue\'s name)' if "." in bad else ""
    return (
        f"{part!r} has characters SQS does not allow in queue names ({shown}); "
        f"use {ALLOWED}{hint}"
    )


def name_problem(name: str) -> str:
    """Why the full SQS name ``name`` is refused by SQS, or ""."""
    base = name.removesuffix(FIFO)
    if not base:
        return f"{name!r} is empty before {FIFO!r}" if name else "the name is empty"
    if len(name) > MAX_LENGTH:
        return (
            f"the SQS name {name!r} is {len(name)} characters long; SQS allows at most "
            f"{MAX_LENGTH}{' (.fifo included)' if name.endswith(FIFO) else ''}"
        )
    return bad_characters(base)


def check_queue_names(settings: Settings, queues: Mapping[str, QueueSettings]) -> None:
    """Raise ConfigError, one line naming the key, for the first name SQS would refuse."""
    problem = bad_characters(settings.queue_prefix)
    if problem:
        raise ConfigError(f"{settings.path}: [sqsd] queue_prefix: {problem}")
    for queue in queues.values():
        where = (
            f"[queues.{queue.name}]"
            if queue.name in settings.queues
            else f"queue {queue.name!r} (registered in code)"
        )
        problem = bad_characters(queue.name.removesuffix(FIFO)) or (
            "the name is empty" if not queue.name.removesuffix(FIFO) else ""
        )
        if problem:
            raise ConfigError(f"{settings.path}: {where}: {problem}")
        for suffix in queue.suffixes:
            problem = bad_characters(suffix)
            if problem:
                raise ConfigError(f"{settings.path}: {where} suffixes: {problem}")
            problem = name_problem(settings.queue_url_name(queue.name, suffix))
            if problem:
                key = " suffixes" if suffix else ""
                raise ConfigError(f"{settings.path}: {where}{key}: {problem}")
        if queue.dead_letter_queue:
            problem = name_problem(settings.queue_url_name(queue.dead_letter_queue))
            if problem:
                raise ConfigError(f"{settings.path}: {where} dead_letter_queue: {problem}")
