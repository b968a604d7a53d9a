"""boto3 clients and queue resolution shared by the daemon and producers."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqsd.config import QueueSettings, Settings

READ_TIMEOUT_MARGIN = 10  # seconds beyond the long-poll wait before a read times out
_DATA_NAMES = ("endpoints", "sdk-default-configuration", "partitions", "_retry")
_SERVICE_DATA = ("service-2", "endpoint-rule-set-1", "paginators-1")
_loader: Any = None


def preload() -> None:
    """Import boto3 and parse SQS's service data once, in the master before it forks.

    Only data is loaded: no session, client, socket or thread exists in the master. Every
    worker then builds its client from this shared, copy-on-write loader in milliseconds
    instead of re-reading the JSON models (faster respawn, less memory per worker).
    """
    global _loader
    import os

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


def make_client(settings: Settings, *, wait_time_seconds: int = 20) -> Any:
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


def ensure_queue(client: Any, url_name: str, queue: QueueSettings, *, create: bool) -> str:
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


def is_missing_queue(exc: BaseException) -> bool:
    """True for SQS's 'queue does not exist' in either protocol's spelling."""
    # Connection errors carry no response (None), only service errors do.
    code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code", "")
    return code in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")
