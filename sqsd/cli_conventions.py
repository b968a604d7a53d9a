"""What every sqsctl command shares: ``--json`` before or after the command, the nearest
command for a mistyped one, exit codes in ``--help``, one line and exit code 130 on Ctrl-C,
colour (``NO_COLOR``, ``--color/--no-color``), ``QUEUE[:SUFFIX]`` arguments, and what to
say when this user may not open the control socket."""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TextIO

import click

from sqsd.errors import EXIT_FAILED
from sqsd.redact import redact
from sqsd.spelling import did_you_mean

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command ended by Ctrl-C
CLIENTS_GROUP = "sqsd-clients"  # the group systemd/sqsd-sysusers.conf gives the socket

EXIT_CODES_HELP = """\b
Exit codes:
  0    ok
  1    failed, or timed out (wait)
  2    usage or configuration error
  3    daemon not reachable (not running, or this user may not connect)
  130  interrupted (Ctrl-C)"""


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """One line on stderr, prefixed with the tool's name, redacted, then exit with ``code``."""
    with contextlib.suppress(OSError):  # a closed stderr must not turn exit 2 into a traceback
        name = click.get_current_context().find_root().info_name
        click.echo(f"{name}: {redact(message)}", err=True)
    sys.exit(code)


class Group(click.Group):
    """A group where ``--json`` may come anywhere (every command's help lists it), which
    names the nearest command for a mistyped one, and which ends on Ctrl-C with one line
    and exit code 130 instead of click's ``Aborted!``."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not any(param.name == "json_after_command" for param in cmd.params):
            cmd.params.append(
                click.Option(
                    ["--json", "json_after_command"],
                    is_flag=True,
                    expose_value=False,
                    callback=_set_json,
                    help="Print machine-readable JSON.",
                )
            )
        super().add_command(cmd, name)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if ctx.parent is None:  # the tool itself: --json anywhere counts (up to a "--")
            end = args.index("--") if "--" in args else len(args)
            if "--json" in args[:end]:
                args = ["--json"] + [a for a in args[:end] if a != "--json"] + args[end:]
        return super().parse_args(ctx, args)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if (
            name
            and not name.startswith("-")
            and not ctx.resilient_parsing
            and self.get_command(ctx, name) is None
        ):
            hint = did_you_mean(name, self.list_commands(ctx))
            raise click.UsageError(f"no such command {name!r}{hint}", ctx)
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            interrupted(ctx)
        except click.Abort as exc:
            # click.confirm turns Ctrl-C into Abort (the interrupt is its __context__);
            # an Abort of its own is a "no" to the question.
            if isinstance(exc.__context__, KeyboardInterrupt):
                interrupted(ctx)
            _echo_error(ctx, "not confirmed; nothing was done")
            ctx.exit(EXIT_FAILED)


def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and isinstance(ctx.obj, dict):
        ctx.obj["json"] = True  # the group's obj, shared by every subcommand's context


def interrupted(ctx: click.Context) -> NoReturn:
    """Ctrl-C: one line on stderr, exit code 130, no traceback and no ``Aborted!``."""
    if sys.stderr.isatty():
        sys.stderr.write("\n")  # end the line the terminal's ^C echo is on
    _echo_error(ctx, "interrupted")
    ctx.exit(EXIT_INTERRUPTED)


def _echo_error(ctx: click.Context, message: str) -> None:
    with contextlib.suppress(OSError):  # a closed stderr must not end in a traceback
        click.echo(f"{ctx.find_root().info_name}: {message}", err=True)


# -- colour ---------------------------------------------------------------------------


def wants_color(choice: bool | None, stream: TextIO | None = None) -> bool:
    """``--color``/``--no-color`` when given; else colour on a terminal unless ``NO_COLOR``
    is set to anything non-empty (https://no-color.org) or ``TERM=dumb``."""
    if choice is not None:
        return choice
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


Paint = Callable[[str, str | None], str]


def painter(color: bool) -> Paint:
    """``paint(text, colour_name)``: the text in that foreground colour, or as it is."""

    def paint(text: str, colour: str | None) -> str:
        return click.style(text, fg=colour) if color and colour else text

    return paint


# -- arguments ------------------------------------------------------------------------


def split_target(target: str) -> tuple[str, str | None]:
    """``QUEUE[:SUFFIX]`` → (queue, suffix): ``emails`` → ("emails", None), every suffix;
    ``emails:big`` → ("emails", "big"); ``emails:`` → ("emails", ""), the plain queue."""
    queue, colon, suffix = target.partition(":")
    if not queue:
        raise click.BadParameter(f"{target!r}: expected QUEUE or QUEUE:SUFFIX")
    return queue, (suffix if colon else None)


# -- the socket -----------------------------------------------------------------------


def permission_hint(socket_path: str) -> str:
    """Why this user may not connect, and how to get access."""
    group = CLIENTS_GROUP
    try:
        gid = os.stat(socket_path).st_gid
        group = grp.getgrgid(gid).gr_name
    except PermissionError:
        return (
            f"{socket_path}: permission denied: this user may not enter its directory; "
            f"the socket's directory must be searchable by the {group!r} group"
        )
    except (OSError, KeyError):
        pass
    return (
        f"{socket_path}: permission denied: only root, the daemon's user and members of the "
        f"{group!r} group may connect; join it with `sudo usermod -aG {group} $USER` and "
        "log in again (or run `sudo sqsctl ...`)"
    )


def is_permission_error(exc: BaseException) -> bool:
    cause = exc.__cause__
    return isinstance(cause, OSError) and cause.errno in (errno.EACCES, errno.EPERM)
