"""Logging set-up: structlog configured once, rendering json, logfmt or console lines on
stderr (journald picks them up), and the failed-messages log."""

from __future__ import annotations

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
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if log_format == "json":
        renderer: Any = structlog.processors.JSONRenderer()
    elif log_format == "logfmt":
        renderer = structlog.processors.LogfmtRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
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
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_number)
    for noisy in ("botocore", "boto3", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, level_number))


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

    def write(self, **record: Any) -> bool:
        """Record a failed message; False when the file could not be written (the caller
        then keeps the message in the queue rather than lose its only copy)."""
        self.logger.error("failed message", extra=record)
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
