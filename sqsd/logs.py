"""Logging set-up: structlog configured once, rendering json, logfmt or console lines on
stderr (journald picks them up), and the failed-messages log."""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import time
from typing import Any

import structlog

FAILED_LOGGER = "sqsd.failed"


def configure(log_format: str = "console", level: str = "info") -> None:
    """Render sqsd's own events (structlog, the fast native path) and stdlib records
    (botocore, handlers' ``logging`` calls) as the same lines on stderr."""
    level_name = os.environ.get("SQSD_LOG_LEVEL", level).upper()
    level_number = logging.getLevelName(level_name)
    console = log_format not in ("json", "logfmt")
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        # People at a console read local time to the second; machines get ISO UTC.
        structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False)
        if console
        else structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer_chain: list[Any]
    if console:  # it prints a traceback itself, once, below the line
        renderer_chain = [compact_for_console, console_renderer()]
    else:  # the traceback becomes the "exception" field
        renderer = (
            structlog.processors.JSONRenderer()
            if log_format == "json"
            else structlog.processors.LogfmtRenderer()
        )
        renderer_chain = [structlog.processors.format_exc_info, renderer]
    structlog.configure(
        processors=[*shared, *renderer_chain],
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *shared,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer_chain],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_number)
    for noisy in ("botocore", "boto3", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, level_number))


def console_renderer() -> Any:
    """People's lines: colour on a terminal (not with $NO_COLOR), a plain traceback (never
    rich's boxes, whatever the handlers' environment has installed), fields in the order
    ``compact_for_console`` puts them."""
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
    record on the ``sqsd.failed`` logger either way."""

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
        line = json.dumps({"time": time.time(), **record}, default=str) + "\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            get("sqsd.worker").error("failed_log not writable", path=self.path, error=str(exc))
            return False
        return True
