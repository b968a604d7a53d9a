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
    """Route structlog and stdlib logging (botocore included) to stderr in one format."""
    level = os.environ.get("SQSD_LOG_LEVEL", level).upper()
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ]
    if log_format == "json":
        renderer: Any = structlog.processors.JSONRenderer()
    elif log_format == "logfmt":
        renderer = structlog.processors.LogfmtRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def get(name: str = "sqsd", **context: Any) -> Any:
    """A structlog logger bound to ``context``."""
    return structlog.get_logger(name).bind(**context)


class FailedLog:
    """Bodies of failed messages: one JSON line per message in ``path`` (if set), and a
    record on the ``sqsd.failed`` logger either way."""

    def __init__(self, path: str = ""):
        self.path = path
        self.logger = structlog.get_logger(FAILED_LOGGER)

    def write(self, **record: Any) -> bool:
        """Record a failed message; False when the file could not be written (the caller
        then keeps the message in the queue rather than lose its only copy)."""
        self.logger.error("failed message", **record)
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
            structlog.get_logger("sqsd").error(
                "failed_log not writable", path=self.path, error=str(exc)
            )
            return False
        return True
