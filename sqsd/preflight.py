"""Checks made before anything starts (``sqsd run``, ``sqsd check``, and a reload): each
problem is one ConfigError line naming the file, the key and what a person must fix, so
the daemon exits 2 with it instead of a traceback, or a loop of SQS errors."""

from __future__ import annotations

import importlib
import os
import stat
import traceback
from collections.abc import Mapping, Sequence
from types import ModuleType

from sqsd.config import QueueSettings, Settings
from sqsd.control.server import SocketPathError, check_socket_path
from sqsd.errors import ConfigError
from sqsd.names import check_queue_names


class StartupInterrupted(SystemExit):
    """SIGTERM or SIGINT while starting (importing receivers, say): exit quietly, 0."""


def check(
    settings: Settings, queues: Mapping[str, QueueSettings], *, socket: bool = True
) -> None:
    """Every start-up check; ``socket=False`` on reload, where the socket stays."""
    check_queue_names(settings, queues)
    check_failed_log(settings)
    if socket:
        check_socket(settings)


def check_socket(settings: Settings) -> None:
    """The control socket can be made at ``[sqsd] socket`` (unless systemd passes one)."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS"):
        return
    try:
        check_socket_path(settings.socket, settings.socket_group or None)
    except SocketPathError as exc:
        raise ConfigError(f"{settings.path}: [sqsd] {exc.key}: {exc}") from None


def socket_error(settings: Settings, exc: SocketPathError) -> str:
    """The one line for a socket that could not be made after all (a race, a bind error)."""
    return f"{settings.path}: [sqsd] {exc.key}: {exc}"


def check_failed_log(settings: Settings) -> None:
    """``failed_log`` is never a symbolic link, a directory or a FIFO. A path that cannot be
    written (yet) is no error: the messages then stay in their queues, as when a disk
    fills up later."""
    path = settings.failed_log
    if not path:
        return
    where = f"{settings.path}: [sqsd] failed_log"
    try:
        st = os.lstat(path)
    except OSError:
        return  # created at the first failed message, or reported then
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(
            f"{where}: {path} is a symbolic link; sqsd never writes through one "
            "(point failed_log at the file itself)"
        )
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode)):
        raise ConfigError(f"{where}: {path} exists and is not a plain file")


def check_selection(
    settings: Settings,
    queues: Mapping[str, QueueSettings],
    names: Sequence[str],
    suffix: str | None,
) -> None:
    """``sqsd run QUEUE... --suffix S`` names only configured queues and suffixes."""
    for name in names:
        if name not in queues:
            hint = " (to run one suffix, use --suffix)" if ":" in name else ""
            raise ConfigError(
                f"{settings.path}: queue {name!r} is neither configured nor registered{hint}"
            )
    if suffix is None:
        return
    chosen = [queues[name] for name in names] if names else list(queues.values())
    for queue in chosen:
        if names and suffix not in queue.suffixes:
            raise ConfigError(
                f"{settings.path}: --suffix {suffix!r}: queue {queue.name!r} has no such "
                f"suffix (its suffixes: {_listed(queue.suffixes)})"
            )
    if not any(suffix in queue.suffixes for queue in chosen):
        known = sorted({s for queue in chosen for s in queue.suffixes})
        raise ConfigError(
            f"{settings.path}: --suffix {suffix!r}: no queue has this suffix "
            f"(suffixes: {_listed(known)})"
        )


def _listed(suffixes: Sequence[str]) -> str:
    return ", ".join(repr(s) for s in suffixes) or "none"


def import_module(name: str, where: str) -> ModuleType:
    """Import ``name``; anything it raises (SystemExit and KeyboardInterrupt too) becomes
    one ConfigError line saying ``where`` it was asked for, what was raised, and the file
    and line."""
    try:
        return importlib.import_module(name)
    except StartupInterrupted:
        raise
    except SystemExit as exc:
        raise ConfigError(
            f"{where}: cannot import {name!r}: it called sys.exit({exc.code!r}) while being "
            f"imported{_location(exc)}"
        ) from None
    except BaseException as exc:  # KeyboardInterrupt included: one line, never "Aborted!"
        raise ConfigError(
            f"{where}: cannot import {name!r}: {type(exc).__name__}: {exc}{_location(exc)}"
        ) from None


def _location(exc: BaseException) -> str:
    """`` (FILE, line N)`` where the import failed: the importing module's own line, and
    where the error was raised when that is elsewhere."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" ({_shown(exc.filename)}, line {exc.lineno})"
    skip = (os.path.dirname(importlib.__file__), __file__)
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith(("<frozen ", *skip))
    ]
    if not frames:
        return ""
    first, last = frames[0], frames[-1]
    where = f"{_shown(first.filename)}, line {first.lineno}"
    if last is not first:
        where += f"; raised in {_shown(last.filename)}, line {last.lineno}"
    return f" ({where})"


def _shown(path: str) -> str:
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
