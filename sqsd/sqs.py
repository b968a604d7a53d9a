"""What sqsd knows about SQS itself: its limits, boto3 clients, batch entries, message
attributes, queue resolution and how to read its errors. Shared by the daemon and producers."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

# SQS's limits.
MAX_BATCH = 10  # entries per *Batch call, messages per ReceiveMessage
MAX_VISIBILITY = 43200  # seconds (12 hours): VisibilityTimeout
MAX_DELAY = 900  # seconds (15 minutes): DelaySeconds
MAX_ATTRIBUTES = 10  # message attributes per message
MAX_WAIT = 20  # seconds: WaitTimeSeconds of a long poll

READ_TIMEOUT_MARGIN = 10  # seconds beyond the long-poll wait before a read times out
MISSING_QUEUE_CODES = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")
_DATA_NAMES = ("endpoints", "sdk-default-configuration", "partitions", "_retry")
_SERVICE_DATA = ("service-2", "endpoint-rule-set-1", "paginators-1")
_loader: Any = None

T = TypeVar("T")


class ClientSettings(Protocol):
    """What a client is made from (``sqsd.config.Settings`` has it)."""

    region: str
    endpoint_url: str


class QueueDefaults(Protocol):
    """What a created queue takes from its settings (``sqsd.config.QueueSettings``)."""

    visibility_timeout: int


def max_delay() -> int:
    """The longest DelaySeconds to ask for: MAX_DELAY, or ``$SQSD_MAX_SQS_DELAY`` when set
    lower (tests compress time)."""
    return int(os.environ.get("SQSD_MAX_SQS_DELAY", str(MAX_DELAY)))


def batches(
    items: Sequence[T], entry: Callable[[T], dict[str, Any]]
) -> Iterator[tuple[Sequence[T], list[dict[str, Any]]]]:
    """Split ``items`` into chunks a *Batch call takes, each with its entries: ``entry(item)``
    plus an ``Id`` that is the item's position in its chunk (``Failed[].Id`` maps back)."""
    for start in range(0, len(items), MAX_BATCH):
        chunk = items[start : start + MAX_BATCH]
        yield chunk, [{"Id": str(i), **entry(item)} for i, item in enumerate(chunk)]


def oldest_age(messages: Sequence[dict[str, Any]]) -> float:
    """Seconds the oldest of ``messages`` received for the first time had waited since it
    was sent (``SentTimestamp``); 0 when none says. Redeliveries are left out: their age is
    their retry history, not a backlog."""
    sent = []
    for message in messages:
        attributes = message.get("Attributes") or {}
        if attributes.get("ApproximateReceiveCount") == "1" and "SentTimestamp" in attributes:
            sent.append(int(attributes["SentTimestamp"]) / 1000)
    return max(0.0, time.time() - min(sent)) if sent else 0.0


def encode_attributes(attributes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Plain values to SQS MessageAttributes (str, int/float as Number, bytes as Binary)."""
    encoded: dict[str, dict[str, Any]] = {}
    for name, value in attributes.items():
        if isinstance(value, dict):
            encoded[name] = value
        elif isinstance(value, bytes):
            encoded[name] = {"DataType": "Binary", "BinaryValue": value}
        elif isinstance(value, int | float) and not isinstance(value, bool):
            encoded[name] = {"DataType": "Number", "StringValue": repr(value)}
        else:
            encoded[name] = {"DataType": "String", "StringValue": str(value)}
    return encoded


def preload() -> None:
    """Import boto3 and parse SQS's service data once, in the master before it forks.

    Only data is loaded: no session, client, socket or thread exists in the master. Every
    worker then builds its client from this shared, copy-on-write loader in milliseconds
    instead of re-reading the JSON models (faster respawn, less memory per worker).
    """
    global _loader

    import boto3  # noqa: F401 - imported here so that forks inherit the loaded modules
    from botocore.exceptions import DataNotFoundError
    from botocore.loaders import create_loader

    loader = create_loader(os.environ.get("AWS_DATA_PATH"))
    for name in _DATA_NAMES:
        with contextlib.suppress(DataNotFoundError):
            loader.load_data(name)
    for kind in _SERVICE_DATA:
        with contextlib.suppress(DataNotFoundError):
            loader.load_service_model("sqs", kind)
    _loader = loader


def make_client(settings: ClientSettings, *, wait_time_seconds: int = MAX_WAIT) -> Any:
    """A boto3 SQS client for ``settings`` (region, endpoint), with timeouts that suit
    long polling and botocore's standard retry mode for throttling and 5xx."""
    import boto3
    import botocore.session
    from botocore.config import Config

    config = Config(
        connect_timeout=5,
        read_timeout=wait_time_seconds + READ_TIMEOUT_MARGIN,
        retries={"mode": "standard", "max_attempts": 3},
        tcp_keepalive=True,
        max_pool_connections=4,
    )
    kwargs: dict[str, Any] = {"config": config}
    if settings.region:
        kwargs["region_name"] = settings.region
    if settings.endpoint_url:
        kwargs["endpoint_url"] = settings.endpoint_url
    core = botocore.session.Session()
    if _loader is not None:
        core.register_component("data_loader", _loader)
    return boto3.session.Session(botocore_session=core).client("sqs", **kwargs)


def ensure_queue(client: Any, url_name: str, queue: QueueDefaults, *, create: bool) -> str:
    """Return the URL of ``url_name``; create it (FIFO and visibility timeout included) when
    ``create`` is true and it is missing. Raises the client's QueueDoesNotExist otherwise."""
    try:
        return client.get_queue_url(QueueName=url_name)["QueueUrl"]
    except client.exceptions.QueueDoesNotExist:
        if not create:
            raise
    attributes = {"VisibilityTimeout": str(queue.visibility_timeout)}
    if url_name.endswith(".fifo"):
        attributes.update(FifoQueue="true", ContentBasedDeduplication="true")
    return client.create_queue(QueueName=url_name, Attributes=attributes)["QueueUrl"]


# -- errors ------------------------------------------------------------------------------


def error_code(exc: BaseException) -> str:
    """The service's error code ("" for errors without a response, such as lost
    connections)."""
    return (getattr(exc, "response", None) or {}).get("Error", {}).get("Code", "")


def is_missing_queue(exc: BaseException) -> bool:
    """True for SQS's 'queue does not exist' in either protocol's spelling."""
    return error_code(exc) in MISSING_QUEUE_CODES


def is_missing_credentials(exc: BaseException) -> bool:
    """True when botocore found no credentials to sign with."""
    return type(exc).__name__ == "NoCredentialsError"


def describe_error(exc: BaseException) -> str:
    """One line for people: what went wrong with an SQS call."""
    if is_missing_queue(exc):
        return "queue does not exist"
    if is_missing_credentials(exc):
        return "no AWS credentials found (environment, ~/.aws or instance role)"
    return f"{type(exc).__name__}: {exc}"
