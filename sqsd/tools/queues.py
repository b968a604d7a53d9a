"""Which queues a tool may name: ``QUEUE[:SUFFIX]`` to SQS names, dead-letter queues included.

The running daemon's ``status`` knows every queue, those registered in code included;
without a daemon the configuration file's ``[queues.NAME]`` tables are all there is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqsd.config import Settings
from sqsd.spelling import did_you_mean


@dataclass(frozen=True)
class Target:
    """One queue URL name the daemon runs workers for, and the dead-letter queue it uses."""

    queue: str
    suffix: str
    url_name: str
    dead_letter: str = ""  # the dead-letter queue's SQS name ("" without one)

    @property
    def label(self) -> str:
        return f"{self.queue}:{self.suffix}" if self.suffix else self.queue

    @property
    def fifo(self) -> bool:
        return self.url_name.endswith(".fifo")


class UnknownQueue(LookupError):
    """A name that is neither configured nor known to the running daemon."""


def from_status(status: Mapping[str, Any]) -> list[Target]:
    """The targets a running daemon reports (``status``'s ``queues``)."""
    return [
        Target(q["queue"], q["suffix"], q["url_name"], q.get("dead_letter") or "")
        for q in status.get("queues", [])
    ]


def from_settings(settings: Settings) -> list[Target]:
    """The targets of the configuration file alone (queues registered in code are missing)."""
    targets = []
    for name in settings.queues:
        queue = settings.queue_settings(name)
        dead_letter = (
            settings.queue_url_name(queue.dead_letter_queue) if queue.dead_letter_queue else ""
        )
        for suffix in queue.suffixes:
            url_name = settings.queue_url_name(name, suffix)
            targets.append(Target(name, suffix, url_name, dead_letter))
    return targets


def find(targets: Iterable[Target], queue: str, suffix: str | None) -> list[Target]:
    """The targets of ``queue`` (every suffix when ``suffix`` is None); UnknownQueue, with the
    nearest name, when there is none."""
    targets = list(targets)
    of_queue = [t for t in targets if t.queue == queue]
    if not of_queue:
        queues = dict.fromkeys(t.queue for t in targets)
        raise UnknownQueue(f"unknown queue {queue!r}{did_you_mean(queue, queues)}")
    if suffix is None:
        return of_queue
    matches = [t for t in of_queue if t.suffix == suffix]
    if not matches:
        hint = did_you_mean(suffix, [t.suffix for t in of_queue if t.suffix])
        raise UnknownQueue(f"unknown suffix {suffix!r} of queue {queue!r}{hint}")
    return matches
