"""Sending messages: the producer side of sqsd, used by web apps, scripts and handlers.

Producers read the same configuration as the daemon (``sqsd.configure(path)`` or
``$SQSD_CONFIG``) for the queue prefix, region, endpoint and the socket to wake.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from typing import Any

import sqsd_client
from sqsd import config as config_module
from sqsd import logs
from sqsd.errors import ConfigError, SendError
from sqsd.message import NOT_BEFORE_ATTRIBUTE, Message
from sqsd.registry import REGISTRY
from sqsd.sqs import encode_attributes, make_client, max_delay

log = logs.library("sqsd.producer")


class Producer:
    """Sends to the queues of one configuration, with a boto3 client per process."""

    def __init__(self, settings: config_module.Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._client: Any = None
        self._client_pid = 0
        self._urls: dict[str, str] = {}
        # $SQSD_SOCKET points clients at another daemon, as it does for sqsctl.
        self.socket_path = os.environ.get("SQSD_SOCKET") or settings.socket

    @property
    def client(self) -> Any:
        if self._client is None or self._client_pid != os.getpid():
            with self._lock:
                if self._client is None or self._client_pid != os.getpid():
                    self._client = make_client(self.settings)
                    self._client_pid = os.getpid()
                    self._urls = {}
        return self._client

    def queue_url(self, url_name: str) -> str:
        url = self._urls.get(url_name)
        if url is None:
            try:
                url = self.client.get_queue_url(QueueName=url_name)["QueueUrl"]
            except Exception as exc:
                raise SendError(f"cannot find SQS queue {url_name!r}: {exc}") from exc
            self._urls[url_name] = url
        return url

    def send(
        self,
        queue_name: str,
        message: Any = None,
        *,
        suffix: str | None = None,
        delay_seconds: float = 0,
        group_id: str | None = None,
        dedup_id: str | None = None,
        wake: bool = True,
        message_class: type[Message] | None = None,
        message_attributes: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> str:
        """Send one message; return its SQS message id. Raise SendError on failure."""
        registration = REGISTRY.get(queue_name)
        if message_class is None:
            message_class = registration.message_class if registration else Message
        body = message_class.encode(message, **kwargs)
        suffix = suffix or ""
        self._warn_unknown_suffix(queue_name, suffix)
        url_name = self.settings.queue_url_name(queue_name, suffix)
        params: dict[str, Any] = {"QueueUrl": self.queue_url(url_name), "MessageBody": body}
        attributes = dict(message_attributes or {})
        if delay_seconds:
            limit = max_delay()
            if delay_seconds > limit:
                attributes[NOT_BEFORE_ATTRIBUTE] = repr(time.time() + delay_seconds)
            params["DelaySeconds"] = int(min(delay_seconds, limit))
        if attributes:
            params["MessageAttributes"] = encode_attributes(attributes)
        if url_name.endswith(".fifo"):
            params["MessageGroupId"] = group_id or "default"
            if dedup_id:
                params["MessageDeduplicationId"] = dedup_id
        try:
            response = self.client.send_message(**params)
        except Exception as exc:
            raise SendError(f"could not send to SQS queue {url_name!r}: {exc}") from exc
        if wake and not params.get("DelaySeconds"):
            sqsd_client.wake(queue_name, suffix, socket_path=self.socket_path)
        return response["MessageId"]

    def _warn_unknown_suffix(self, queue_name: str, suffix: str) -> None:
        known = self.settings.queues.get(queue_name, {}).get("suffixes")
        registration = REGISTRY.get(queue_name)
        if known is None and registration is not None:
            known = registration.options.get("suffixes")
        if known is not None and suffix not in known:
            log.warning(
                "sending to an unknown suffix", queue=queue_name, suffix=suffix, known=known
            )


_producer: Producer | None = None


def configure(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Producer:
    """Load the configuration producers use (default ``$SQSD_CONFIG`` or /etc/sqsd/sqsd.toml).

    Keyword overrides replace daemon keys (``queue_prefix``, ``endpoint_url``, ``region``,
    ``socket``). Without a file at the default path, built-in defaults apply.
    """
    global _producer
    explicit = path is not None or "SQSD_CONFIG" in os.environ
    path = os.fspath(path) if path is not None else config_module.default_path()
    try:
        settings = config_module.load(path)
    except ConfigError:
        if explicit or os.path.exists(path):
            raise
        settings = config_module.Settings(path=path)
    if overrides:
        settings = replace(settings, **overrides)
    if settings.endpoint_url == "local":
        settings = _with_local_endpoint(settings)
    _producer = Producer(settings)
    return _producer


def _with_local_endpoint(settings: config_module.Settings) -> config_module.Settings:
    """``endpoint_url = "local"``: the running daemon tells its emulator's URL (inherited
    environment in its workers, the reply to ``ping`` for other processes: any user who
    may wake the daemon may ask)."""
    from sqsd.local import use_local_credentials

    use_local_credentials()
    url = os.environ.get("SQSD_LOCAL_ENDPOINT", "")
    if not url:
        socket_path = os.environ.get("SQSD_SOCKET") or settings.socket
        try:
            url = sqsd_client.Client(socket_path).ping().get("local_endpoint", "")
        except (sqsd_client.DaemonUnavailable, sqsd_client.CommandFailed) as exc:
            raise ConfigError(
                f'{settings.path}: [sqsd] endpoint_url: "local" needs a running '
                f"`sqsd run --local` to reach ({exc})"
            ) from None
        if not url:
            raise ConfigError(
                f'{settings.path}: [sqsd] endpoint_url: "local", but the daemon at '
                f"{socket_path} runs without the local endpoint"
            )
    return replace(settings, endpoint_url=url)


def producer() -> Producer:
    """The process-wide producer, configured on first use."""
    return _producer or configure()


def send(queue_name: str, message: Any = None, **options: Any) -> str:
    """Send ``message`` to the queue ``queue_name`` and wake its idle worker.

    Options: ``suffix``, ``delay_seconds`` (above 900 s honoured by re-delaying),
    ``group_id`` and ``dedup_id`` (FIFO), ``wake`` (default True), ``message_attributes``,
    or ``body=``/other keyword arguments for the queue's message class.
    """
    return producer().send(queue_name, message, **options)
