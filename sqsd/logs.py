"""Logging set-up: structlog configured once, rendering json, logfmt or console lines on
stderr (journald picks them up), and the failed-messages log.

Every line goes through ``sqsd.redact`` and then ``LogStream``, which never lets a broken,
closed or full stderr stop the process: a daemon whose log pipe breaks (``| head``, a
``tee`` killed by Ctrl-C, a journald restart) keeps working and drops what it cannot write.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import logging
import os
import socket
import stat
import sys
import syslog
import time
import traceback
from collections.abc import Callable
from typing import Any

import structlog

from sqsd.redact import redact

FAILED_LOGGER = "sqsd.failed"
# Errors after which a stream never takes a line again: its reader is gone.
_GONE = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF, errno.ECONNREFUSED}


class LogStream:
    """A file-like object writing to a descriptor (stderr) without ever raising or blocking.

    A pipe is re-opened non-blocking through /proc (a description of our own, so the flag
    touches no other writer of the pipe); a socket (journald's stream) is written with
    MSG_DONTWAIT. A full stream drops lines and, once it takes lines again, says how many
    were dropped. A stream whose reader is gone is given up, and that is noted once in
    syslog (the journal under systemd) since stderr cannot say it.
    """

    def __init__(self, fd: int = 2) -> None:
        self.fd = fd
        self.dropped = 0
        self.gone = ""  # why the stream was given up; "" while it works
        self.note: Callable[[int, str], str] = _plain_note
        self._sock: socket.socket | None = None
        self._last_error = ""
        self._cut_line = False  # a line went out in part: end it before the next one
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            self._give_up(exc)
            return
        if stat.S_ISSOCK(mode):
            try:
                self._sock = socket.socket(fileno=os.dup(fd))
            except OSError:
                self._sock = None
        elif stat.S_ISFIFO(mode):
            # Without /proc, or with no reader left, the descriptor is written as it is.
            with contextlib.suppress(OSError):
                self.fd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)

    def write(self, text: str) -> int:
        if self.gone:
            self.dropped += 1
            return len(text)
        data = text.encode("utf-8", "backslashreplace")
        if self._cut_line:
            data = b"\n" + data
        if self.dropped:
            data = self.note(self.dropped, self._last_error).encode() + data
        try:
            sent = self._write(data)
        except OSError as exc:
            self.dropped += 1
            self._last_error = exc.strerror or type(exc).__name__
            if exc.errno in _GONE:
                self._give_up(exc)
            return len(text)
        self.dropped = 0
        self._cut_line = sent < len(data) and not data.endswith(b"\n")
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        try:
            return os.isatty(self.fd)
        except OSError:
            return False

    def _write(self, data: bytes) -> int:
        if self._sock is not None:
            return self._sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        return os.write(self.fd, data)

    def _give_up(self, exc: OSError) -> None:
        self.gone = exc.strerror or type(exc).__name__
        try:
            syslog.openlog("sqsd", syslog.LOG_PID, syslog.LOG_DAEMON)
            syslog.syslog(
                syslog.LOG_WARNING,
                f"stderr is gone ({self.gone}): log lines of this process are dropped",
            )
        except Exception:  # noqa: S110 - nowhere left to report it
            pass


def _plain_note(count: int, reason: str) -> str:
    return f"sqsd: {count} log lines dropped ({reason or 'stderr full'})\n"


_stream: LogStream | None = None


def stream() -> LogStream:
    """This process's log stream (created once; forked workers share it)."""
    global _stream
    if _stream is None:
        _stream = LogStream(2)
    return _stream


def configure(log_format: str = "console", level: str = "info") -> None:
    """Render sqsd's own events (structlog, the fast native path) and stdlib records
    (botocore, handlers' ``logging`` calls) as the same redacted lines on stderr."""
    level_name = os.environ.get("SQSD_LOG_LEVEL", level).upper()
    level_number = logging.getLevelName(level_name)
    out = stream()
    console = log_format not in ("json", "logfmt")
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        # People at a console read local time to the second; machines get ISO UTC.
        structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False)
        if console
        else structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    before_render: list[Any]
    if console:  # it prints a traceback itself, once, below the line
        before_render = [compact_for_console]
        renderer: Any = console_renderer(colors=out.isatty() and not os.environ.get("NO_COLOR"))
    else:  # the traceback becomes the "exception" field
        before_render = [structlog.processors.format_exc_info]
        renderer = (
            structlog.processors.JSONRenderer()
            if log_format == "json"
            else structlog.processors.LogfmtRenderer()
        )

    def render(logger: Any, method: str, event: Any) -> str:
        return redact(renderer(logger, method, event))

    def note(count: int, reason: str) -> str:
        event = {"event": "log lines dropped", "count": count, "reason": reason or "stderr full"}
        return render(None, "warning", {"level": "warning", **event}) + "\n"

    out.note = note
    structlog.configure(
        processors=[*shared, *before_render, render],
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *shared,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *before_render,
            render,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_number)
    for noisy in ("botocore", "boto3", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, level_number))


def print_exception() -> None:
    """The exception being handled, redacted, on the log stream (never raises)."""
    stream().write(redact(traceback.format_exc()))


def console_renderer(*, colors: bool | None = None) -> Any:
    """People's lines: colour when asked (a terminal, not $NO_COLOR), a plain traceback (never
    rich's boxes, whatever the handlers' environment has installed), fields in the order
    ``compact_for_console`` puts them. ``colors=None``: when stderr is a terminal."""
    if colors is None:
        colors = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
    options: dict[str, Any] = {
        "colors": colors,
        "exception_formatter": structlog.dev.plain_traceback,
        "sort_keys": False,
    }
    parameters = inspect.signature(structlog.dev.ConsoleRenderer).parameters
    options["pad_event_to" if "pad_event_to" in parameters else "pad_event"] = 16
    if "pad_level" in parameters:
        options["pad_level"] = False
    return structlog.dev.ConsoleRenderer(**options)


CONSOLE_BODY = 120  # characters of a failed message's body on a console line
FIRST = ("timestamp", "level", "event", "logger", "queue", "id")


def compact_for_console(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Shorten a record for people at a console; json and logfmt keep every field in full.

    ``queue:suffix`` in one field, ``id``: the message id's 8 characters status shows, durations
    in ms, a receive count of 1 left out, the body of a failed message cut short, its
    error left to the traceback printed below, and the logger without its ``sqsd.``."""
    suffix = event.pop("suffix", None)
    if suffix and "queue" in event:
        event["queue"] = f"{event['queue']}:{suffix}"
    if isinstance(event.get("message_id"), str):
        event["id"] = event.pop("message_id")[:8]
    if isinstance(event.get("duration"), int | float):
        event["duration"] = _milliseconds(event["duration"])
    for key in ("receive_count", "starts"):
        if event.get(key) == 1:
            del event[key]
    if isinstance(event.get("body"), str) and len(event["body"]) > CONSOLE_BODY:
        event["body"] = event["body"][:CONSOLE_BODY] + "…"
    if event.get("exc_info"):
        event.pop("error", None)  # the traceback's last line says it
    event.pop("trace", None)
    name = event.get("logger")
    if isinstance(name, str) and name.startswith("sqsd."):
        event["logger"] = name[len("sqsd.") :]
    return {**{k: event.pop(k) for k in FIRST if k in event}, **event}


def _milliseconds(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:.1f}s"
    return f"{seconds * 1000:.3g}ms" if seconds < 1 else f"{seconds * 1000:.0f}ms"


def get(name: str = "sqsd", **context: Any) -> Any:
    """A structlog logger for component ``name``, bound to ``context``."""
    return structlog.get_logger().bind(logger=name, **context)


def library(name: str) -> Any:
    """A logger for code that runs in other people's processes (producers in a web app):
    the same keyword events as ``get``, handed to the stdlib logger ``name`` (fields as
    ``extra``), so the host application's logging configuration decides where they go. In
    the daemon they render like every other line."""
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[structlog.stdlib.render_to_log_kwargs],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


class FailedLog:
    """Bodies of failed messages: one JSON line per message in ``path`` (if set), and a
    record on the ``sqsd.failed`` logger either way.

    The file is opened for each line with O_NOFOLLOW and created 0640 (less with a tighter
    umask): a symbolic link, a FIFO or a second name of another file planted at the path is
    refused, and the message stays in its queue. The body is written as it is;
    the other fields are redacted.
    """

    def __init__(self, path: str = ""):
        self.path = path
        self.logger = logging.getLogger(FAILED_LOGGER)

    def write(self, event: str = "failed message", exc_info: Any = None, **record: Any) -> bool:
        """Record a failed message: one ``event`` record (with the traceback when
        ``exc_info`` is given: the one record of a failed handler) and a line in the file.
        False when the file could not be written (the caller then keeps the message in the
        queue rather than lose its only copy)."""
        self.logger.error(event, extra=record, exc_info=exc_info)
        if not self.path:
            return True
        fields = {k: redact(v) if isinstance(v, str) and k != "body" else v
                  for k, v in record.items()}
        line = json.dumps({"time": time.time(), **fields}, default=str) + "\n"
        try:
            fd = open_for_append(self.path)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            get("sqsd.worker").error("failed_log not writable", path=self.path, error=str(exc))
            return False
        return True


def open_for_append(path: str, mode: int = 0o640) -> int:
    """Open ``path`` to append, creating it with ``mode``; never through a symbolic link
    (ELOOP), never a FIFO (which could block) or a hard link to another file (OSError).
    A character device such as /dev/null is allowed: only root can make one."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode)):
            raise OSError(errno.EINVAL, "not a plain file", path)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            raise OSError(errno.EMLINK, "a hard link to another file", path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd
