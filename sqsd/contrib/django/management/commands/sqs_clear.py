"""``manage.py sqs_clear``: delete the messages of queues, as ``sqsctl clear`` does."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import CommandError, CommandParser

from sqsd.contrib.django.management import ControlCommand
from sqsd.control.render import render_clear
from sqsd.errors import EXIT_FAILED, EXIT_USAGE


class Command(ControlCommand):
    help = "Delete the messages of the named queues (all queues when none is named)."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("queues", nargs="*", metavar="QUEUE")
        parser.add_argument(
            "--noinput",
            "--no-input",
            "--yes",
            action="store_false",
            dest="interactive",
            help="Do not ask for confirmation.",
        )
        parser.add_argument(
            "--purge", action="store_true", help="Use PurgeQueue (once per 60 s per queue)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        queues, purge = options["queues"], options["purge"]
        if options["interactive"]:
            self.confirm(queues)
        # Deleting takes as long as the queues are deep; a daemon that dies closes the socket.
        reply = self.call(options, "clear", socket_timeout=None, queues=queues, purge=purge)
        self.emit(options, reply, render_clear(reply, purge))
        failed = [name for name, result in reply["queues"].items() if "error" in result]
        if failed:
            raise CommandError(f"could not clear {', '.join(failed)}", returncode=EXIT_FAILED)

    def confirm(self, queues: list[str]) -> None:
        if not sys.stdin.isatty():
            raise CommandError(
                "refusing to clear without --noinput when not on a terminal", returncode=EXIT_USAGE
            )
        target = ", ".join(queues) or "ALL queues"
        if input(f"Delete every message in {target}? [y/N] ").strip().lower() not in ("y", "yes"):
            raise CommandError("aborted", returncode=EXIT_FAILED)

