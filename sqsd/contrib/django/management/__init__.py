"""What the control commands share: the socket, the client call, exit codes as sqsctl's."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

import sqsd_client
from sqsd import producer as producer_module
from sqsd.errors import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, ConfigError


class ControlCommand(BaseCommand):
    """A command that sends one request to the daemon's control socket and renders the
    reply. Exit codes as sqsctl's: 0 ok, 1 failed or timed out, 2 usage or configuration
    error, 3 daemon not reachable."""

    requires_system_checks: list[str] = []  # reading the daemon's state needs no checks

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--socket",
            dest="socket_path",
            default=None,
            help="Control socket (default $SQSD_SOCKET, else the configured socket).",
        )
        parser.add_argument("--json", action="store_true", help="Print the reply as JSON.")

    def call(
        self,
        options: dict[str, Any],
        cmd: str,
        *,
        socket_timeout: float | None = 10.0,
        **args: Any,
    ) -> dict[str, Any]:
        """The daemon's reply to ``cmd``; CommandError with sqsctl's exit code otherwise."""
        client = sqsd_client.Client(self.socket_path(options), timeout=socket_timeout)
        try:
            return client.call(cmd, **args)
        except sqsd_client.DaemonUnavailable as exc:
            message = f"daemon not reachable: {exc}"
            raise CommandError(message, returncode=EXIT_UNREACHABLE) from None
        except sqsd_client.CommandFailed as exc:
            if options["json"]:
                self.stdout.write(json.dumps(exc.reply, indent=2))
            raise CommandError(str(exc), returncode=EXIT_FAILED) from None

    def socket_path(self, options: dict[str, Any]) -> str:
        """``--socket``, else the producer's (``$SQSD_SOCKET`` or the configured one)."""
        if options["socket_path"]:
            return options["socket_path"]
        try:
            return producer_module.producer().socket_path
        except ConfigError as exc:
            raise CommandError(str(exc), returncode=EXIT_USAGE) from None

    def emit(self, options: dict[str, Any], reply: dict[str, Any], text: str) -> None:
        self.stdout.write(json.dumps(reply, indent=2) if options["json"] else text)
