"""Command line: ``sqsd run|check`` (the daemon) and ``sqsctl`` (talks to its socket).

Each command parses, calls one library function and renders the result. Errors are one
line on stderr; exit codes: 0 ok, 1 failed or timed out, 2 usage or config error,
3 daemon not reachable.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import tomllib
from typing import Any, NoReturn

import click

import sqsd_client
from sqsd import __version__
from sqsd import config as config_module
from sqsd import units as units_module
from sqsd.control.render import render_clear, render_status
from sqsd.errors import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, ConfigError
from sqsd.redact import redact


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    with contextlib.suppress(OSError):  # a closed stderr must not turn exit 2 into a traceback
        click.echo(f"{click.get_current_context().find_root().info_name}: {redact(message)}",
                   err=True)
    sys.exit(code)


# -- sqsd -----------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


# -- sqsctl ---------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sqsctl", message="%(prog)s %(version)s")
@click.option(
    "--socket",
    "socket_path",
    default=None,
    help="Control socket (default: -c's socket, else $SQSD_SOCKET, else the socket of "
    "$SQSD_CONFIG or /etc/sqsd/sqsd.toml, else /run/sqsd/sqsd.sock).",
)
@click.option(
    "-c",
    "--config",
    "config_path",
    default=None,
    help="Take the control socket from this configuration file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def sqsctl_main(
    ctx: click.Context, socket_path: str | None, config_path: str | None, as_json: bool
) -> None:
    """Inspect and drive a running sqsd through its control socket."""
    ctx.obj = {"socket": control_socket(socket_path, config_path), "json": as_json}


def control_socket(socket_path: str | None, config_path: str | None) -> str:
    """The socket sqsctl talks to: the explicit choices first, then the environment's."""
    if socket_path:
        return socket_path
    if config_path:
        return configured_socket(config_path)
    if os.environ.get("SQSD_SOCKET"):
        return os.environ["SQSD_SOCKET"]
    if os.environ.get("SQSD_CONFIG"):
        return configured_socket(os.environ["SQSD_CONFIG"])
    # The daemon's default file, when it is there and this user may read it.
    default = configured_socket(config_module.DEFAULT_CONFIG_PATH, required=False)
    return default or sqsd_client.protocol.DEFAULT_SOCKET


def configured_socket(config_path: str, required: bool = True) -> str | None:
    """``[sqsd] socket`` of a configuration file; None if it cannot be read and not required.

    Only that key is read, not the whole file validated: after an edit the daemon refused,
    `sqsctl -c FILE reload` must still reach the daemon that runs the previous version.
    """
    try:
        with open(config_path, "rb") as f:
            section = tomllib.load(f).get("sqsd")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        if not required:
            return None
        reason = exc.strerror if isinstance(exc, OSError) else f"not valid TOML: {exc}"
        fail(f"{config_path}: {reason}", EXIT_USAGE)
    socket_path = (section if isinstance(section, dict) else {}).get(
        "socket", sqsd_client.protocol.DEFAULT_SOCKET
    )
    if not isinstance(socket_path, str) or not socket_path:
        if not required:
            return None
        fail(f"{config_path}: [sqsd] socket: expected a path", EXIT_USAGE)
    return socket_path


def call(
    ctx: click.Context, cmd: str, *, socket_timeout: float | None = 10.0, **args: Any
) -> dict[str, Any]:
    client = sqsd_client.Client(ctx.obj["socket"], timeout=socket_timeout)
    try:
        return client.call(cmd, **args)
    except sqsd_client.DaemonUnavailable as exc:
        fail(
            f"daemon not reachable: {exc} (is sqsd running? --socket PATH or -c CONFIG "
            "points sqsctl at another socket)",
            EXIT_UNREACHABLE,
        )
    except sqsd_client.CommandFailed as exc:
        if ctx.obj["json"]:
            click.echo(json.dumps(exc.reply))
            sys.exit(EXIT_FAILED)
        fail(str(exc.reply.get("error", exc)))


def emit(ctx: click.Context, reply: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(reply, indent=2) if ctx.obj["json"] else text)


@sqsctl_main.command()
@click.pass_context
def ping(ctx: click.Context) -> None:
    """Check that the daemon answers."""
    reply = call(ctx, "ping")
    emit(ctx, reply, f"pong from sqsd pid {reply['pid']} (up {reply['uptime']:.0f}s)")


@sqsctl_main.command()
@click.option("--watch", is_flag=True, help="Refresh every 2 seconds until Ctrl-C.")
@click.pass_context
def status(ctx: click.Context, watch: bool) -> None:
    """Show workers, their states and counters, and queue depths."""
    while True:
        reply = call(ctx, "status", fresh=True)
        if watch and not ctx.obj["json"]:
            click.clear()
        emit(ctx, reply, render_status(reply))
        if not watch:
            return
        try:
            time.sleep(2)
        except KeyboardInterrupt:
            return


@sqsctl_main.command()
@click.argument("queue")
@click.option("--suffix", default=None)
@click.pass_context
def wake(ctx: click.Context, queue: str, suffix: str | None) -> None:
    """Wake the idle workers of QUEUE."""
    reply = call(ctx, "wake", queue=queue, suffix=suffix)
    emit(ctx, reply, f"woke {reply['woken']} worker(s)")


@sqsctl_main.command()
@click.argument("queues", nargs=-1)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--purge", is_flag=True, help="Use PurgeQueue (once per 60 s per queue).")
@click.pass_context
def clear(ctx: click.Context, queues: tuple[str, ...], yes: bool, purge: bool) -> None:
    """Delete the messages of QUEUES (all queues when none is named)."""
    if not yes:
        if not sys.stdin.isatty():
            fail("refusing to clear without --yes when not on a terminal", EXIT_USAGE)
        target = ", ".join(queues) or "ALL queues"
        click.confirm(f"Delete every message in {target}?", abort=True)
    reply = call(ctx, "clear", queues=list(queues), purge=purge, socket_timeout=600)
    emit(ctx, reply, render_clear(reply, purge))
    if any("error" in result for result in reply["queues"].values()):
        sys.exit(EXIT_FAILED)


@sqsctl_main.command()
@click.argument("queues", nargs=-1)
@click.option("--timeout", type=float, default=None,
              help="Give up after S seconds (exit 1); default 3600, at most 86400.")
@click.pass_context
def wait(ctx: click.Context, queues: tuple[str, ...], timeout: float | None) -> None:
    """Wait until QUEUES are empty and their workers idle."""
    if sys.stderr.isatty() and not ctx.obj["json"]:
        click.echo("waiting for queues to drain...", err=True)
    socket_timeout = (timeout + 10) if timeout is not None else None
    reply = call(ctx, "wait", queues=list(queues), timeout=timeout, socket_timeout=socket_timeout)
    emit(ctx, reply, "queues empty and workers idle")


@sqsctl_main.command()
@click.pass_context
def reload(ctx: click.Context) -> None:
    """Re-read the configuration (like SIGHUP)."""
    emit(ctx, call(ctx, "reload"), "configuration reloaded")


@sqsctl_main.command(name="config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the effective configuration."""
    reply = call(ctx, "config")
    click.echo(json.dumps({k: v for k, v in reply.items() if k != "ok"}, indent=2))


@sqsctl_main.command()
@click.option("--quick", is_flag=True, help="Do not let handlers finish.")
@click.pass_context
def shutdown(ctx: click.Context, quick: bool) -> None:
    """Stop the daemon (graceful unless --quick)."""
    emit(ctx, call(ctx, "shutdown", quick=quick), "shutting down")


@sqsctl_main.command()
@click.argument("target", metavar="QUEUE[:SUFFIX]")
@click.argument("processes", type=click.IntRange(0, 256))
@click.pass_context
def scale(ctx: click.Context, target: str, processes: int) -> None:
    """Run N processes for QUEUE[:SUFFIX] until the next reload."""
    queue, _, suffix = target.partition(":")
    reply = call(ctx, "scale", queue=queue, suffix=suffix or None, processes=processes)
    emit(ctx, reply, f"{target}: {reply['processes']} processes")
