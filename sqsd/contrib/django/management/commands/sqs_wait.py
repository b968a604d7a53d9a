"""``manage.py sqs_wait``: block until queues are empty and their workers idle (exit 1 on
timeout), as ``sqsctl wait`` does."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from sqsd.contrib.django.management import ControlCommand


class Command(ControlCommand):
    help = "Wait until the named queues (all when none) are empty and their workers idle."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("queues", nargs="*", metavar="QUEUE")
        parser.add_argument(
            "--timeout", type=float, default=None, help="Give up after S seconds (exit 1)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        timeout = options["timeout"]
        # The daemon enforces the wait's timeout; the connection only has to outlast it.
        socket_timeout = None if timeout is None else timeout + 10
        queues = options["queues"]
        reply = self.call(
            options, "wait", socket_timeout=socket_timeout, queues=queues, timeout=timeout
        )
        self.emit(options, reply, "queues empty and workers idle")
