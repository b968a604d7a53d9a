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
from dataclasses import replace
from typing import Any, NoReturn

import click

import sqsd_client
from sqsd import config as config_module
from sqsd.errors import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, ConfigError
from sqsd.redact import redact


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    with contextlib.suppress(OSError):  # a closed stderr must not turn exit 2 into a traceback
        click.echo(f"{click.get_current_context().find_root().info_name}: {redact(message)}",
                   err=True)
    sys.exit(code)


# -- sqsd -----------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def sqsd_main() -> None:
    """sqsd runs Python handlers for Amazon SQS queues."""


config_option = click.option(
    "-c",
    "--config",
    "config_path",
    default=config_module.DEFAULT_CONFIG_PATH,
    show_default=True,
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
    from sqsd import logs, preflight
    from sqsd.control.server import SocketInUse, SocketPathError
    from sqsd.local import LocalEndpoint, environment_for_children
    from sqsd.master import Master, import_receivers
    from sqsd.sqs import preload

    settings = load_settings(config_path)
    logs.configure(settings.log_format, settings.log_level)
    preload()
    try:
        import_receivers(settings)
        master = Master(settings, config_path, queues, None, message_limit)
        preflight.check_selection(settings, master.queues, queues, suffix)
        if suffix is not None:
            master.only_suffix = suffix
            master.queues = master.queue_settings(settings)
        master.wanted_programs(settings, master.queues)
        preflight.check(settings, master.queues)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    endpoint = None
    if local or settings.endpoint_url == "local":
        try:
            endpoint = LocalEndpoint.start()
        except RuntimeError as exc:
            fail(str(exc))
        environment_for_children(endpoint.url)
        master.settings = replace(settings, endpoint_url=endpoint.url, create_queues=True)
        logs.get("sqsd").info("local SQS endpoint started", url=endpoint.url)
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
    from sqsd import preflight
    from sqsd.master import Master, import_receivers
    from sqsd.sqs import is_missing_queue, make_client

    settings = load_settings(config_path)
    try:
        import_receivers(settings)
        master = Master(settings, config_path)
        programs = master.wanted_programs(settings, master.queues)
        preflight.check(settings, master.queues)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    if settings.endpoint_url == "local":
        click.echo(f"{config_path}: configuration valid (local endpoint: queues not checked)")
        return
    client = make_client(settings, wait_time_seconds=0)
    names = sorted(
        {p.spec.url_name for p in programs} | {p.spec.dead_letter_name for p in programs} - {""}
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
            if is_missing_queue(exc):
                reason = "queue does not exist (create it, or set create_queues = true)"
            elif type(exc).__name__ == "NoCredentialsError":
                reason = "no AWS credentials found (environment, ~/.aws or instance role)"
            else:
                reason = f"{type(exc).__name__}: {exc}"
            click.echo(redact(f"missing  {name}: {reason}"))
    if problems:
        fail(f"{problems} of {len(names)} queues not reachable")
    reachable = f"{len(names) - created} queues reachable"
    if created:
        reachable += f", {created} will be created"
    click.echo(f"{config_path}: configuration valid, {reachable}")


# -- sqsctl ---------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    "socket_path",
    default=None,
    help="Control socket (default $SQSD_SOCKET or /run/sqsd/sqsd.sock).",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def sqsctl_main(ctx: click.Context, socket_path: str | None, as_json: bool) -> None:
    """Inspect and drive a running sqsd through its control socket."""
    ctx.obj = {"socket": socket_path, "json": as_json}


def call(
    ctx: click.Context, cmd: str, *, socket_timeout: float | None = 10.0, **args: Any
) -> dict[str, Any]:
    client = sqsd_client.Client(ctx.obj["socket"], timeout=socket_timeout)
    try:
        return client.call(cmd, **args)
    except sqsd_client.DaemonUnavailable as exc:
        fail(f"daemon not reachable: {exc}", EXIT_UNREACHABLE)
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


def render_clear(reply: dict[str, Any], purge: bool) -> str:
    """One line per queue: what was deleted (or purged) and what stayed in flight."""
    lines = []
    verb = "purged" if purge else "deleted"
    for name, result in reply["queues"].items():
        if "error" in result:
            lines.append(f"{name}: {result['error']}")
        else:
            count = result.get("purged", result.get("deleted", 0))
            in_flight = result.get("in_flight", 0)
            lines.append(f"{name}: {count} {verb}, {in_flight} in flight (not touched)")
    return "\n".join(lines)


def render_status(status: dict[str, Any]) -> str:
    """The status reply as aligned tables for people."""
    header = (
        f"sqsd pid {status['pid']}  up {_duration(status['uptime'])}  config {status['config']}"
    )
    if status.get("stopping"):
        header += "  STOPPING"
    worker_rows = [
        (
            "QUEUE",
            "PID",
            "STATE",
            "FOR",
            "DONE",
            "FAILED",
            "RETRIED",
            "DLQ",
            "RESTARTS",
            "RSS",
            "LAST EXIT",
        )
    ]
    for w in status["workers"]:
        state = w["state"]
        if state == "busy":
            state = f"busy {w.get('message_id', '')[:8]}"
        elif state == "idle":
            state = f"idle {w.get('idle_seconds', 0):.0f}s left"
        elif state == "crashloop" and "retry_in" in w:
            state = f"crashloop retry {w['retry_in']:.0f}s"
        worker_rows.append(
            (
                _label(w),
                str(w.get("pid") or "-"),
                state,
                _duration(w.get("state_seconds", w.get("message_seconds"))),
                str(w.get("processed", "-")),
                str(w.get("failed", "-")),
                str(w.get("retried", "-")),
                str(w.get("dead_lettered", "-")),
                str(w["restarts"]),
                _mib(w.get("rss")),
                w.get("last_exit") or "-",
            )
        )
    queue_rows = [("QUEUE", "SQS NAME", "PROCS", "VISIBLE", "IN FLIGHT", "DELAYED", "AGE")]
    for q in status["queues"]:
        unknown = "?" if q.get("depth_error") is None else "error"
        queue_rows.append(
            (
                _label(q),
                q["url_name"],
                str(q["processes"]),
                _count(q.get("visible"), unknown),
                _count(q.get("in_flight"), unknown),
                _count(q.get("delayed"), unknown),
                _duration(q.get("depth_age")),
            )
        )
    return "\n".join([header, "", _table(worker_rows), "", _table(queue_rows)])


def _label(entry: dict[str, Any]) -> str:
    return f"{entry['queue']}:{entry['suffix']}" if entry.get("suffix") else entry["queue"]


def _count(value: int | None, unknown: str) -> str:
    return unknown if value is None else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}M"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
