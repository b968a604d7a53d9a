"""``sqsctl``: inspect and drive a running sqsd through its control socket, and send to or
redrive its queues (``send``, ``dlq``) with the daemon's configuration.

Each command parses, calls one library function and renders the result. The conventions
every command shares (``--json`` anywhere, exit codes, Ctrl-C, colour, ``QUEUE[:SUFFIX]``)
are in sqsd.cli_conventions.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import tomllib
from typing import Any

import click
from click.shell_completion import CompletionItem

import sqsd_client
from sqsd import __version__
from sqsd import config as config_module
from sqsd.cli_conventions import (
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    Group,
    Paint,
    fail,
    is_permission_error,
    painter,
    permission_hint,
    split_target,
    wants_color,
)
from sqsd.control.render import WIDTH, render_clear, render_status
from sqsd.errors import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, ConfigError


@click.group(
    cls=Group,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXIT_CODES_HELP,
)
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
    help="Configuration file: its control socket, and for send and dlq the queues' prefix, "
    "region and endpoint (default $SQSD_CONFIG, else /etc/sqsd/sqsd.toml).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON (also after COMMAND)."
)
@click.option(
    "--color/--no-color",
    default=None,
    help="Colour the output (default: on a terminal, unless $NO_COLOR is set).",
)
@click.pass_context
def sqsctl_main(
    ctx: click.Context,
    socket_path: str | None,
    config_path: str | None,
    as_json: bool,
    color: bool | None,
) -> None:
    """Inspect and drive a running sqsd through its control socket.

    QUEUE arguments take a suffix as QUEUE:SUFFIX. `send` and `dlq` talk to SQS with the
    configuration file's prefix, region and endpoint (-c, else $SQSD_CONFIG, else
    /etc/sqsd/sqsd.toml) and this user's AWS credentials.
    """
    ctx.obj = {
        "socket": control_socket(socket_path, config_path),
        "config": config_path,
        "json": as_json,
        "color": wants_color(color),
    }


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


def complete_queue(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shell completion of QUEUE[:SUFFIX]: names from the running daemon's status, else from
    the configuration file; nothing, and nothing printed, when neither answers."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            params = ctx.find_root().params
            config_path = params.get("config_path")
            socket_path = control_socket(params.get("socket_path"), config_path)
            labels = [t.label for t in known_targets(socket_path, config_path, timeout=0.5)]
    except BaseException:  # noqa: BLE001 - completion must never fail loudly
        return []
    queues = [label.partition(":")[0] for label in labels]
    return [CompletionItem(n) for n in dict.fromkeys(queues + labels) if n.startswith(incomplete)]


def known_targets(socket_path: str, config_path: str | None, *, timeout: float = 2.0) -> list[Any]:
    """The queues a running daemon reports (those registered in code included), else those
    of the configuration file."""
    from sqsd.tools import queues

    try:
        return queues.from_status(sqsd_client.Client(socket_path, timeout=timeout).status())
    except (sqsd_client.DaemonUnavailable, sqsd_client.CommandFailed):
        path = config_path or config_module.default_path()
        return queues.from_settings(config_module.load(path))


def call(
    ctx: click.Context,
    cmd: str,
    *,
    socket_timeout: float | None = 10.0,
    client: sqsd_client.Client | None = None,
    **args: Any,
) -> dict[str, Any]:
    client = client or sqsd_client.Client(ctx.obj["socket"], timeout=socket_timeout)
    try:
        return client.call(cmd, **args)
    except sqsd_client.DaemonUnavailable as exc:
        if is_permission_error(exc):
            fail(f"daemon not reachable: {permission_hint(client.socket_path)}", EXIT_UNREACHABLE)
        fail(
            f"daemon not reachable: {exc} (is sqsd running? --socket PATH or -c CONFIG "
            "points sqsctl at another socket)",
            EXIT_UNREACHABLE,
        )
    except sqsd_client.CommandFailed as exc:
        message = str(exc.reply.get("error", exc))
        code = EXIT_USAGE if f"{cmd}: unknown " in message else EXIT_FAILED  # a queue, a suffix
        if ctx.obj["json"]:
            click.echo(json.dumps(exc.reply))
            sys.exit(code)
        if f"{cmd}: permission denied for uid" in message:
            message += " (only root and the daemon's user may; try sudo)"
        fail(message, code)


def emit(ctx: click.Context, reply: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(reply, indent=2) if ctx.obj["json"] else text, color=ctx.obj["color"])


def paint(ctx: click.Context) -> Paint:
    return painter(ctx.obj["color"])


@sqsctl_main.command()
@click.pass_context
def ping(ctx: click.Context) -> None:
    """Check that the daemon answers."""
    reply = call(ctx, "ping")
    emit(ctx, reply, f"pong from sqsd pid {reply['pid']} (up {reply['uptime']:.0f}s)")


@sqsctl_main.command()
@click.option("--watch", is_flag=True, help="Refresh every 2 seconds until Ctrl-C.")
@click.option("--wide", is_flag=True, help="Full names, however wide the table gets.")
@click.pass_context
def status(ctx: click.Context, watch: bool, wide: bool) -> None:
    """Show workers, their states and counters, and queue depths (dead-letter queues
    included), in 100 columns."""
    while True:
        reply = call(ctx, "status", fresh=True)
        if watch and not ctx.obj["json"]:
            click.clear()
        emit(ctx, reply, render_status(reply, width=None if wide else WIDTH, paint=paint(ctx)))
        if not watch:
            return
        time.sleep(2)  # until Ctrl-C: one line, exit code 130, as every command


@sqsctl_main.command()
@click.argument("target", metavar="QUEUE[:SUFFIX]", shell_complete=complete_queue)
@click.option("--suffix", default=None, help="Same as QUEUE:SUFFIX (the older spelling).")
@click.pass_context
def wake(ctx: click.Context, target: str, suffix: str | None) -> None:
    """Wake the idle workers of QUEUE (every suffix), or of QUEUE:SUFFIX only."""
    queue, target_suffix = split_target(target)
    if suffix is not None and target_suffix is not None and suffix != target_suffix:
        raise click.UsageError(f"{target} and --suffix {suffix} name different suffixes")
    reply = call(ctx, "wake", queue=queue, suffix=suffix if suffix is not None else target_suffix)
    emit(ctx, reply, f"woke {reply['woken']} worker(s)")


@sqsctl_main.command()
@click.argument("queues", nargs=-1, metavar="[QUEUE[:SUFFIX]]...", shell_complete=complete_queue)
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
@click.argument("queues", nargs=-1, metavar="[QUEUE[:SUFFIX]]...", shell_complete=complete_queue)
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="Give up after S seconds (exit 1); default 3600, at most 86400.",
)
@click.pass_context
def wait(ctx: click.Context, queues: tuple[str, ...], timeout: float | None) -> None:
    """Wait until QUEUES are empty and their workers idle (Ctrl-C: exit code 130).

    On a terminal, a line on stderr shows the messages left, the rate and an estimate of
    the time left, every second."""
    socket_timeout = (timeout + 10) if timeout is not None else None
    client = None
    if sys.stderr.isatty() and not ctx.obj["json"]:
        from sqsd.tools.progress import ProgressClient

        client = ProgressClient(ctx.obj["socket"], socket_timeout, sys.stderr, list(queues))
    reply = call(ctx, "wait", queues=list(queues), timeout=timeout, client=client)
    emit(ctx, reply, "queues empty and workers idle")


@sqsctl_main.command()
@click.option("--prometheus", is_flag=True, help="Prometheus text 0.0.4, not OpenMetrics.")
@click.pass_context
def metrics(ctx: click.Context, prometheus: bool) -> None:
    """Print the daemon's metrics in the OpenMetrics text format (see docs/operations.md,
    "Monitoring")."""
    reply = call(ctx, "metrics", format="prometheus" if prometheus else "openmetrics")
    emit(ctx, reply, reply["text"].rstrip("\n"))


@sqsctl_main.command()
@click.option("--interval", type=click.FloatRange(0.2), default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--depths", "depth_interval", type=click.FloatRange(1), default=5.0,
              show_default=True, help="Seconds between queue-depth refreshes (2 SQS calls "
              "per queue each).")
@click.option("-n", "--iterations", type=click.IntRange(0), default=0,
              help="Stop after N refreshes (default: until q or Ctrl-C).")
@click.pass_context
def top(ctx: click.Context, interval: float, depth_interval: float, iterations: int) -> None:
    """A live view of queues and workers: state, current message and its age, msgs/s,
    failures, backlog, SQS calls and their cost per hour. q or Ctrl-C quits (exit 0).
    Not on a terminal: the same figures printed again every interval."""
    from sqsd.tools import top as top_tool

    client = sqsd_client.Client(ctx.obj["socket"], timeout=5.0)
    call(ctx, "ping", client=client)  # not reachable: one line and exit 3, before any screen
    fetch = lambda fresh: client.call("status", fresh=fresh)  # noqa: E731
    top_tool.run(fetch, interval, depth_interval, iterations, color=ctx.obj["color"])


@sqsctl_main.command()
@click.pass_context
def reload(ctx: click.Context) -> None:
    """Re-read the configuration (like SIGHUP)."""
    emit(ctx, call(ctx, "reload"), "configuration reloaded")


@sqsctl_main.command(name="config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the effective configuration (derived values filled in, e.g. on_error)."""
    reply = call(ctx, "config")
    click.echo(json.dumps({k: v for k, v in reply.items() if k != "ok"}, indent=2))


@sqsctl_main.command()
@click.option("--quick", is_flag=True, help="Do not let handlers finish.")
@click.pass_context
def shutdown(ctx: click.Context, quick: bool) -> None:
    """Stop the daemon (graceful unless --quick)."""
    emit(ctx, call(ctx, "shutdown", quick=quick), "shutting down")


@sqsctl_main.command()
@click.argument("target", metavar="QUEUE[:SUFFIX]", shell_complete=complete_queue)
@click.argument("processes", type=click.IntRange(0, 256))
@click.pass_context
def scale(ctx: click.Context, target: str, processes: int) -> None:
    """Pin QUEUE[:SUFFIX] to N processes, autoscaling aside, until the next reload."""
    queue, suffix = split_target(target)
    reply = call(ctx, "scale", queue=queue, suffix=suffix or None, processes=processes)
    emit(ctx, reply, f"{target}: {reply['processes']} processes")


# -- sqsctl send and dlq: SQS itself, with the configuration file and this user's credentials


def tool_context(ctx: click.Context) -> tuple[Any, list[Any]]:
    """The producer configured like the daemon (prefix, region, endpoint), and the queues."""
    from sqsd.producer import configure

    try:
        producer = configure(ctx.obj["config"])
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        return producer, known_targets(ctx.obj["socket"], producer.settings.path)
    except ConfigError as exc:
        fail(f"no daemon answered on {ctx.obj['socket']} to name its queues, and {exc}", EXIT_USAGE)


def ctx_socket() -> str:
    return click.get_current_context().obj["socket"]


def find_target(targets: list[Any], target: str, *, plain: bool = True) -> Any:
    """One known queue for QUEUE[:SUFFIX] (QUEUE alone: its plain queue, when ``plain``)."""
    from sqsd.tools.queues import UnknownQueue, find

    queue, suffix = split_target(target)
    if not targets:
        fail(
            f"unknown queue {queue!r}: no daemon answered on {ctx_socket()} and the "
            "configuration file names no queues (-c CONFIG or $SQSD_CONFIG)",
            EXIT_USAGE,
        )
    try:
        found = find(targets, queue, "" if suffix is None and plain else suffix)
    except UnknownQueue as exc:
        suffixes = [t.label for t in targets if t.queue == queue]
        hint = f"; name a suffix: {', '.join(suffixes)}" if suffix is None and suffixes else ""
        fail(f"{exc}{hint}", EXIT_USAGE)
    return found[0]


@sqsctl_main.command()
@click.argument("target", metavar="QUEUE[:SUFFIX]", shell_complete=complete_queue)
@click.argument("body", metavar="BODY|-")
@click.option("--delay", type=click.FloatRange(min=0), default=0, help="Seconds until visible.")
@click.option(
    "--attr",
    "attrs",
    multiple=True,
    metavar="NAME[:Number]=VALUE",
    help="A message attribute (repeatable).",
)
@click.option("--group", default=None, help="FIFO queues: MessageGroupId (default 'default').")
@click.option("--dedup", default=None, help="FIFO queues: MessageDeduplicationId.")
@click.option("--no-wake", is_flag=True, help="Do not wake the queue's idle worker.")
@click.pass_context
def send(
    ctx: click.Context,
    target: str,
    body: str,
    delay: float,
    attrs: tuple[str, ...],
    group: str | None,
    dedup: str | None,
    no_wake: bool,
) -> None:
    """Send BODY (- reads it from stdin, as is) to QUEUE[:SUFFIX] and wake its worker."""
    from sqsd.errors import SendError
    from sqsd.tools import render
    from sqsd.tools import send as send_tool

    try:
        attributes = dict(send_tool.parse_attribute(a) for a in attrs)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--attr") from None
    if body == "-":
        body = click.get_text_stream("stdin").read()
    producer, targets = tool_context(ctx)
    destination = find_target(targets, target)
    try:
        reply = send_tool.send(
            producer,
            destination,
            body,
            delay=delay,
            attributes=attributes,
            group=group,
            dedup=dedup,
        )
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    except SendError as exc:
        fail(str(exc))
    if not (no_wake or delay):
        daemon = sqsd_client.Client(ctx.obj["socket"], timeout=0.5)
        with contextlib.suppress(sqsd_client.DaemonUnavailable, sqsd_client.CommandFailed):
            reply["woken"] = daemon.wake(destination.queue, destination.suffix)["woken"]
    emit(ctx, reply, render.render_sent(reply))


@sqsctl_main.group(cls=Group, invoke_without_command=True)
@click.argument("queue", shell_complete=complete_queue)
@click.pass_context
def dlq(ctx: click.Context, queue: str) -> None:
    """The dead-letter queue of QUEUE: list its messages (the default), show one, or
    redrive them back to the queue and suffix each came from.

    Listing receives the messages and makes them visible again at once (SQS cannot peek).
    Redrive uses SQS's message-move task when every message goes to one standard queue and
    the endpoint has it, else receive, send, then delete: never a loss; a copy twice only
    if the process is killed between a send and its delete (see docs/operations.md).
    """
    ctx.obj["dlq"] = queue
    if ctx.invoked_subcommand is None:
        ctx.invoke(dlq_list)


def dead_letter_queue(ctx: click.Context) -> tuple[Any, list[Any], Any, str]:
    """(producer, targets, the queue's first target, its dead-letter queue's URL)."""
    from sqsd.sqs import describe_error

    producer, targets = tool_context(ctx)
    target = find_target(targets, ctx.obj["dlq"], plain=False)
    if not target.dead_letter:
        fail(f"queue {target.queue!r} has no dead_letter_queue", EXIT_USAGE)
    try:
        url = producer.client.get_queue_url(QueueName=target.dead_letter)["QueueUrl"]
    except Exception as exc:
        fail(f"{target.dead_letter}: {describe_error(exc)}")
    return producer, targets, target, url


@dlq.command(name="list")
@click.option(
    "--max",
    "limit",
    type=click.IntRange(1, 10_000),
    default=50,
    show_default=True,
    help="List at most N messages.",
)
@click.option("--wide", is_flag=True, help="Full width: whole errors and bodies.")
@click.pass_context
def dlq_list(ctx: click.Context, limit: int = 50, wide: bool = False) -> None:
    """List dead-lettered messages: id, when, from where, the error, the body."""
    from sqsd.tools import dlq as dlq_tool
    from sqsd.tools import render

    producer, _, target, url = dead_letter_queue(ctx)
    messages = dlq_tool.peek(producer.client, url, limit)
    approximate = dlq_tool.depth(producer.client, url)
    reply = {
        "ok": True,
        "url_name": target.dead_letter,
        "approximate": approximate,
        "messages": [m.summary() for m in messages],
    }
    text = render.render_list(
        target.dead_letter, approximate, messages, paint(ctx), None if wide else WIDTH
    )
    emit(ctx, reply, text)


@dlq.command()
@click.argument("message_id")
@click.option(
    "--max",
    "limit",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Look through at most N messages.",
)
@click.pass_context
def show(ctx: click.Context, message_id: str, limit: int) -> None:
    """Show one dead-lettered message in full (MESSAGE_ID: its id, or the start of it)."""
    from sqsd.tools import dlq as dlq_tool
    from sqsd.tools import render

    producer, _, target, url = dead_letter_queue(ctx)
    found = dlq_tool.peek(producer.client, url, limit, until=lambda m: m.id.startswith(message_id))
    if not found:
        fail(f"{target.dead_letter}: no message {message_id!r} among the first {limit}")
    emit(ctx, {"ok": True, **found[0].summary()}, render.render_message(found[0]))


@dlq.command()
@click.option(
    "--to",
    "to",
    metavar="QUEUE[:SUFFIX]",
    shell_complete=complete_queue,
    help="Send every message here (default: where each came from).",
)
@click.option(
    "--max",
    "limit",
    type=click.IntRange(min=0),
    default=0,
    help="Move at most N messages (default: all).",
)
@click.option(
    "--method",
    type=click.Choice(["auto", "move-task", "receive"]),
    default="auto",
    show_default=True,
    help="SQS's message-move task, or receive, send, delete.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def redrive(ctx: click.Context, to: str | None, limit: int, method: str, yes: bool) -> None:
    """Move dead-lettered messages back to their queue (exit 1 if any stayed behind)."""
    from sqsd.tools import dlq as dlq_tool
    from sqsd.tools import render

    producer, targets, target, url = dead_letter_queue(ctx)
    destination = find_target(targets, to) if to else None
    if not yes:
        if not sys.stdin.isatty():
            fail("refusing to redrive without --yes when not on a terminal", EXIT_USAGE)
        approximate = dlq_tool.depth(producer.client, url)
        click.confirm(
            f"Move about {approximate} message(s) from {target.dead_letter} back?", abort=True
        )
    client = producer.client
    single = dlq_tool.single_destination(targets, target.queue, destination)
    note = ""
    result = None
    if method != "receive" and single is not None and not single.fifo:
        to_url = client.get_queue_url(QueueName=single.url_name)["QueueUrl"]
        try:
            result = dlq_tool.move_task(client, url, dlq_tool.Destination(single.url_name, to_url))
        except dlq_tool.MoveTaskUnavailable as exc:
            if method == "move-task":
                fail(f"message-move task not available: {exc}")
            note = f"message-move task not available: {exc}"
    elif method == "move-task":
        fail(
            "a message-move task has one standard destination queue: name it with --to", EXIT_USAGE
        )
    if result is None:
        url_of = lambda name: client.get_queue_url(QueueName=name)["QueueUrl"]  # noqa: E731
        route = dlq_tool.router(targets, target.queue, destination, url_of)
        result = dlq_tool.redrive(client, url, route, limit=limit)
        result.note = note
    reply = result.reply()
    emit(ctx, reply, render.render_redrive(target.dead_letter, reply))
    if result.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if not reply["ok"]:
        sys.exit(EXIT_FAILED)
