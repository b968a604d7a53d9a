"""Command line: ``sqsd run|check|install-units`` (the daemon); ``sqsctl``, which talks to
its socket, is sqsd.sqsctl.

Each command parses, calls one library function and renders the result. Errors are one
line on stderr; exit codes: 0 ok, 1 failed, 2 usage or config error.
"""

from __future__ import annotations

import os
import signal
import sys

import click

from sqsd import __version__
from sqsd import config as config_module
from sqsd import units as units_module
from sqsd.cli_conventions import fail
from sqsd.errors import EXIT_USAGE, ConfigError
from sqsd.redact import redact
from sqsd.sqsctl import sqsctl_main  # noqa: F401 - the `sqsctl` console script's entry point

SQSD_EXIT_CODES = """\b
Exit codes:
  0  ok (run: stopped when asked)
  1  failed (check: a queue not reachable; run: every queue given up, or start-up failed)
  2  usage or configuration error (nothing started)"""


# -- sqsd -----------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=SQSD_EXIT_CODES)
@click.version_option(__version__, prog_name="sqsd", message="%(prog)s %(version)s")
def sqsd_main() -> None:
    """sqsd runs Python handlers for Amazon SQS queues."""


config_option = click.option(
    "-c",
    "--config",
    "config_path",
    default=config_module.DEFAULT_CONFIG_PATH,
    envvar="SQSD_CONFIG",
    show_default=True,
    show_envvar=True,
    help="Configuration file (TOML).",
)


def load_settings(config_path: str) -> config_module.Settings:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `imports` name modules of the working directory
    try:
        return config_module.load(config_path)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


@sqsd_main.command()
@config_option
@click.argument("queues", nargs=-1)
@click.option("--suffix", default=None, help="Run only this suffix of each queue.")
@click.option(
    "--message-limit",
    type=click.IntRange(min=0),
    default=0,
    help="Exit after N messages per worker.",
)
@click.option("--local", is_flag=True, help="Run against an embedded local SQS endpoint (moto).")
def run(
    config_path: str, queues: tuple[str, ...], suffix: str | None, message_limit: int, local: bool
) -> None:
    """Run the master and its workers in the foreground."""
    # Until the master takes over its signals, a stop request ends start-up cleanly.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_during_startup)
    from sqsd import logs, plan, preflight
    from sqsd.control.server import SocketInUse, SocketPathError
    from sqsd.local import LocalEndpoint, environment_for_children
    from sqsd.local import resolve as resolve_local
    from sqsd.master import Master
    from sqsd.registry import import_receivers
    from sqsd.sqs import preload

    settings = load_settings(config_path)
    logs.configure(settings.log_format, settings.log_level)
    preload()
    try:
        import_receivers(settings)
        preflight.check_selection(settings, plan.queue_settings(settings, queues), queues, suffix)
        planned, _ = plan.prepare(settings, queues, suffix)  # every handler resolves now
        preflight.check(settings, planned)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    endpoint = None
    if local or settings.endpoint_url == "local":
        try:
            endpoint = LocalEndpoint.start()
        except RuntimeError as exc:
            fail(str(exc))
        environment_for_children(endpoint.url)
        settings = resolve_local(settings, endpoint.url, forced=local)
        logs.get("sqsd").info("local SQS endpoint started", url=endpoint.url)
    master = Master(settings, config_path, queues, suffix, message_limit)
    if endpoint is not None:  # every reload resolves the file again the same way
        master.local_endpoint, master.local_only = endpoint.url, local
    try:
        code = master.run()
    except SocketInUse as exc:
        fail(str(exc))
    except SocketPathError as exc:
        fail(preflight.socket_error(settings, exc), EXIT_USAGE)
    finally:
        if endpoint is not None:
            endpoint.stop()
    sys.exit(code)


def _exit_during_startup(signum: int, frame: object) -> None:
    from sqsd.preflight import StartupInterrupted

    raise StartupInterrupted(0)


@sqsd_main.command()
@config_option
def check(config_path: str) -> None:
    """Validate the configuration, import receivers and reach every queue."""
    from sqsd import plan, preflight
    from sqsd.sqs import describe_error, is_missing_queue, make_client

    settings = load_settings(config_path)
    try:
        queues, wanted = plan.prepare(settings)
        preflight.check(settings, queues)
        specs = wanted.values()
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    if settings.endpoint_url == "local":
        click.echo(f"{config_path}: configuration valid (local endpoint: queues not checked)")
        return
    client = make_client(settings, wait_time_seconds=0)
    names = sorted(
        {s.url_name for s in specs} | {s.dead_letter_name for s in specs if s.dead_letter_name}
    )
    problems = created = 0
    for name in names:
        try:
            client.get_queue_url(QueueName=name)
            click.echo(f"ok       {name}")
        except Exception as exc:
            if is_missing_queue(exc) and settings.create_queues:
                created += 1
                click.echo(f"create   {name}: does not exist yet; will be created at start")
                continue
            problems += 1
            reason = describe_error(exc)
            if is_missing_queue(exc):
                reason += " (create it, or set create_queues = true)"
            click.echo(redact(f"missing  {name}: {reason}"))
    if problems:
        fail(f"{problems} of {len(names)} queues not reachable")
    reachable = f"{len(names) - created} queues reachable"
    if created:
        reachable += f", {created} will be created"
    click.echo(f"{config_path}: configuration valid, {reachable}")


@sqsd_main.command(name="install-units")
@click.option(
    "--dest",
    default=None,
    help=f"Directory to copy the systemd units into (default {units_module.SYSTEMD_DIR}).",
)
@click.option("--force", is_flag=True, help="Replace unit files that differ from the shipped ones.")
@click.option(
    "--config",
    "config_path",
    default=config_module.DEFAULT_CONFIG_PATH,
    show_default=True,
    help="Configuration path for the suggested ExecStart drop-in.",
)
def install_units(dest: str | None, force: bool, config_path: str) -> None:
    """Copy the shipped systemd units (sqsd.socket, sqsd.service, sqsd@.*) into DEST."""
    dest = dest or units_module.SYSTEMD_DIR
    installed = units_module.install(dest, force)
    differing = [item for item in installed if item.action == "differs"]
    if differing:
        names = ", ".join(str(item.path) for item in differing)
        fail(f"{names}: differs from the shipped unit; nothing written (--force replaces it)")
    for item in installed:
        click.echo(f"{item.action:10} {item.path}")
    dropin = units_module.exec_start_dropin(config_path)
    click.echo(
        "\nNext: point ExecStart at this installation (the shipped one says\n"
        "/usr/local/bin/sqsd), then start both units:\n\n"
        f"  mkdir -p {dest}/sqsd.service.d\n"
        f"  cat > {dest}/sqsd.service.d/override.conf <<'EOF'\n"
        f"{dropin}EOF\n"
        "  systemctl daemon-reload\n"
        "  systemctl enable --now sqsd.socket sqsd.service"
    )
