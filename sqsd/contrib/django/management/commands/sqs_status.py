"""``manage.py sqs_status``: the daemon's workers and queues, as ``sqsctl status`` shows them."""

from __future__ import annotations

from typing import Any

from sqsd.contrib.django.management import ControlCommand
from sqsd.control.render import render_status


class Command(ControlCommand):
    help = "Show the sqsd daemon's workers, their states and counters, and queue depths."

    def handle(self, *args: Any, **options: Any) -> None:
        reply = self.call(options, "status", fresh=True)
        self.emit(options, reply, render_status(reply))
