"""Talk to a running sqsd over its control socket. Standard library only.

``wake()`` is for producers: after sending a message, tell the daemon so the
queue's idle worker polls at once. It never raises and gives up within
``timeout``. ``Client`` is for tools: every control command, with errors raised.
``autowake()`` hooks a boto3 SQS client so every successful send wakes its queue.
"""

import contextlib
import socket
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from sqsd_client import protocol

__all__ = ["Client", "CommandFailed", "DaemonUnavailable", "autowake", "wake"]
__version__ = "0.1.0"

# Replies such as status can outgrow the request limit; this only guards memory.
_MAX_REPLY = 16 * 1024 * 1024
AUTOWAKE_TIMEOUT = 0.05  # seconds one send's wake-up may take, in total


class DaemonUnavailable(Exception):
    """The daemon could not be reached, or it did not answer."""


class CommandFailed(Exception):
    """The daemon answered ``ok: false``; the full reply is in ``.reply``."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(reply.get("error") or "command failed")
        self.reply = reply


def wake(
    queue: str,
    suffix: str | None = None,
    socket_path: str | None = None,
    timeout: float = 0.05,
) -> bool:
    """Ask the daemon to wake the idle worker of ``queue`` (and ``suffix``).

    Returns True when the daemon accepted the wake-up. Returns False, never
    raises, when the daemon is down, slow, or refuses (e.g. an unknown queue).
    ``timeout`` bounds the whole call (connect, send and reply together).
    """
    reply = _send_wake(queue, suffix, socket_path, time.monotonic() + timeout)
    return reply is not None and reply["ok"] is True


def _send_wake(
    queue: str, suffix: str | None, socket_path: str | None, deadline: float
) -> dict[str, Any] | None:
    """The daemon's reply to a wake request, or None when there was none by ``deadline``."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        sock.settimeout(_left(deadline))
        sock.connect(protocol.socket_path(socket_path))
        sock.settimeout(_left(deadline))
        sock.sendall(protocol.encode({"cmd": "wake", "queue": queue, "suffix": suffix}))
        return _read_reply(sock, deadline)
    except Exception:
        return None
    finally:
        sock.close()


def _left(deadline: float) -> float:
    """Seconds until ``deadline``; TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("no reply in time")
    return left


class Client:
    """Control commands for a running daemon, one connection per call.

    Each method returns the daemon's reply dict, raises ``DaemonUnavailable``
    when the socket cannot be reached or goes silent for ``timeout`` seconds,
    and ``CommandFailed`` when the daemon answers with an error.
    """

    def __init__(self, socket_path: str | None = None, timeout: float = 5.0) -> None:
        self.socket_path = protocol.socket_path(socket_path)
        self.timeout = timeout

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send ``{"cmd": cmd, **args}`` and return the reply."""
        return self._request({"cmd": cmd, **args}, self.timeout)

    def ping(self) -> dict[str, Any]:
        """Check that the daemon answers."""
        return self.call("ping")

    def status(self) -> dict[str, Any]:
        """Workers, queues and counters."""
        return self.call("status")

    def metrics(self, fmt: str = "openmetrics") -> dict[str, Any]:
        """The daemon's metrics as text (``reply["text"]``): ``"openmetrics"`` or
        ``"prometheus"``."""
        return self.call("metrics", format=fmt)

    def wake(self, queue: str, suffix: str | None = None) -> dict[str, Any]:
        """Wake the idle worker of a queue; unknown queues raise CommandFailed."""
        return self.call("wake", queue=queue, suffix=suffix)

    def clear(self, queues: Iterable[str] = (), purge: bool = False) -> dict[str, Any]:
        """Delete the messages of ``queues`` (all when empty).

        Waits for the daemon however long deleting takes: its progress is bounded
        by the queues' depth, and a daemon that dies closes the connection.
        """
        request = {"cmd": "clear", "queues": list(queues), "purge": purge}
        return self._request(request, None)

    def wait(self, queues: Iterable[str] = (), timeout: float | None = None) -> dict[str, Any]:
        """Wait until ``queues`` (all when empty) are empty and their workers idle.

        The daemon answers ``ok: false`` when ``timeout`` passes first (None: the
        daemon's default, an hour; at most a day).
        """
        request = {
            "cmd": "wait",
            "queues": list(queues),
            "timeout": None if timeout is None else float(timeout),
        }
        # The daemon enforces the wait's timeout; ours only has to outlast it.
        sock_timeout = None if timeout is None else timeout + self.timeout
        return self._request(request, sock_timeout)

    def reload(self) -> dict[str, Any]:
        """Reload the configuration, as SIGHUP does."""
        return self.call("reload")

    def config(self) -> dict[str, Any]:
        """The configuration the daemon runs with."""
        return self.call("config")

    def shutdown(self, quick: bool = False) -> dict[str, Any]:
        """Stop the daemon: gracefully, or at once with ``quick``."""
        return self.call("shutdown", quick=quick)

    def scale(self, queue: str, suffix: str | None, processes: int) -> dict[str, Any]:
        """Run ``processes`` workers for a queue and suffix until the next reload."""
        return self.call("scale", queue=queue, suffix=suffix, processes=int(processes))

    def _request(self, request: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise DaemonUnavailable(f"{self.socket_path}: {reason}") from exc
            try:
                sock.sendall(protocol.encode(request))
                reply = _read_reply(sock)
            except TimeoutError as exc:
                raise DaemonUnavailable(f"{self.socket_path}: no reply in {timeout}s") from exc
            except (OSError, protocol.ProtocolError) as exc:
                raise DaemonUnavailable(f"{self.socket_path}: {exc}") from exc
        if not reply["ok"]:
            raise CommandFailed(reply)
        return reply


def autowake(sqs_client: Any, queue_prefix: str = "", socket_path: str | None = None) -> None:
    """Wake the daemon after every successful SendMessage and SendMessageBatch.

    ``sqs_client`` is a boto3/botocore SQS client. The queue name and suffix come
    from the QueueUrl: its last path segment without ``.fifo`` and ``queue_prefix``,
    with the suffix after the last ``__`` (or none, if the daemon refuses that
    split). Queues outside ``queue_prefix`` are left alone. The hooks never raise
    into the caller; calling this twice on one client registers them once.
    """
    events = sqs_client.meta.events

    # after-call does not see the request parameters, but both events share the
    # per-request context dict, so the URL is stashed there on the way out.
    def remember_queue(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        with contextlib.suppress(Exception):
            context["sqsd_queue_url"] = params.get("QueueUrl")

    def wake_queue(
        http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        with contextlib.suppress(Exception):
            url = context.get("sqsd_queue_url")
            if not url or not _sent(http_response, parsed):
                return
            target = queue_from_url(url, queue_prefix)
            if target is None:
                return
            queue, suffix = target
            deadline = time.monotonic() + AUTOWAKE_TIMEOUT  # both tries together
            reply = _send_wake(queue, suffix, socket_path, deadline)
            # Default queue names contain "__" too ("app.tasks.slow" → "app__tasks__slow"):
            # when the split guessed a suffix the daemon does not know, try the whole name.
            if suffix is not None and reply is not None and not reply["ok"]:
                _send_wake(f"{queue}__{suffix}", None, socket_path, deadline)

    for operation in ("SendMessage", "SendMessageBatch"):
        events.register(
            f"before-parameter-build.sqs.{operation}",
            remember_queue,
            unique_id=f"sqsd-autowake-url-{operation}",
        )
        events.register(
            f"after-call.sqs.{operation}", wake_queue, unique_id=f"sqsd-autowake-{operation}"
        )


def queue_from_url(url: str, queue_prefix: str = "") -> tuple[str, str | None] | None:
    """Map a queue URL to ``(queue, suffix)``, or None when it lacks ``queue_prefix``."""
    name = urlsplit(url).path.rstrip("/").rpartition("/")[2].removesuffix(".fifo")
    if not name.startswith(queue_prefix):
        return None
    name = name[len(queue_prefix) :]
    queue, sep, suffix = name.rpartition("__")
    return (queue, suffix) if sep and queue else (name, None)


def _sent(http_response: Any, parsed: dict[str, Any]) -> bool:
    status = getattr(http_response, "status_code", None)
    if status is None:
        status = parsed.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status != 200:
        return False
    # A batch whose every entry failed still answers 200.
    return "Successful" not in parsed or bool(parsed["Successful"])


def _read_reply(sock: socket.socket, deadline: float | None = None) -> dict[str, Any]:
    buf = b""
    while True:
        if deadline is not None:
            sock.settimeout(_left(deadline))
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before a reply")
        buf += chunk
        if b"\n" in chunk:
            return protocol.decode_reply(buf.partition(b"\n")[0])
        if len(buf) > _MAX_REPLY:
            raise protocol.ProtocolError("reply too long")
