"""boto3 clients and queue resolution shared by the daemon and producers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqsd.config import QueueSettings, Settings

READ_TIMEOUT_MARGIN = 10  # seconds beyond the long-poll wait before a read times out


def make_client(settings: Settings, *, wait_time_seconds: int = 20) -> Any:
    """A boto3 SQS client for ``settings`` (region, endpoint), with timeouts that suit
    long polling and botocore's standard retry mode for throttling and 5xx."""
    import boto3
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
    return boto3.session.Session().client("sqs", **kwargs)


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
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    return code in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")
