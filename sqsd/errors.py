"""Exceptions that are part of sqsd's public API, and the exit codes the processes use."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_RECYCLE = 75  # EX_TEMPFAIL: the worker asks to be replaced (max_messages, max_memory_mb)
EXIT_CONFIG = 78  # EX_CONFIG: the worker cannot run with this configuration
EXIT_DONE = 79  # the worker reached `--message-limit`: done for good, not a crash


class RestartLater(Exception):  # noqa: N818 - the name users know from django-sqs
    """Leave the message in the queue without a traceback; it reappears after ``delay`` seconds.

    With ``delay=None`` the retry delay grows with the message's receive count.
    ``sqsd.TransientError`` is the same class (zc.sqs's name).
    """

    def __init__(self, message: str = "", *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


TransientError = RestartLater


class ConfigError(Exception):
    """The configuration is invalid; the message names the file, the key and the expectation."""


class SendError(Exception):
    """A message could not be sent to SQS; nothing was silently dropped."""


class QuickStop(SystemExit):
    """Raised from a worker's SIGQUIT handler: abandon the handler at once. The one
    SystemExit a handler's frame lets through; any other (``sys.exit()`` in user code) is a
    failure."""


class MissingQueue(Exception):  # noqa: N818
    """The worker's queue does not exist: a configuration problem, not a crash."""
