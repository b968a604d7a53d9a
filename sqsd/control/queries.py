"""SQS work done for control requests (queue depths, clear). It runs in a one-shot child
process forked by the master, so the master's loop never waits on SQS."""

from __future__ import annotations

from typing import Any

from sqsd.config import Settings
from sqsd.sqs import MAX_BATCH, batches, describe_error, make_client

DEPTH_ATTRIBUTES = {
    "ApproximateNumberOfMessages": "visible",
    "ApproximateNumberOfMessagesNotVisible": "in_flight",
    "ApproximateNumberOfMessagesDelayed": "delayed",
}


def queue_depths(
    settings: Settings, url_names: list[str], urls: dict[str, str] | None = None
) -> dict[str, Any]:
    """``{url_name: {"visible": n, "in_flight": n, "delayed": n, "url": URL}}`` or
    ``{"error": ...}``, each with the SQS ``requests`` it took by action (for the cost in
    metrics). Queues whose URL is in ``urls`` are not looked up again."""
    client = make_client(settings, wait_time_seconds=0)
    result: dict[str, Any] = {}
    for name in url_names:
        requests: dict[str, int] = {}
        try:
            url = (urls or {}).get(name)
            if not url:
                requests["GetQueueUrl"] = 1
                url = client.get_queue_url(QueueName=name)["QueueUrl"]
            requests["GetQueueAttributes"] = 1
            attributes = client.get_queue_attributes(
                QueueUrl=url, AttributeNames=list(DEPTH_ATTRIBUTES)
            )["Attributes"]
            result[name] = {
                field: int(attributes.get(attribute, 0))
                for attribute, field in DEPTH_ATTRIBUTES.items()
            }
            result[name]["url"] = url
        except Exception as exc:
            result[name] = {"error": describe_error(exc)}
        result[name]["requests"] = requests
    return result


def clear_queues(settings: Settings, url_names: list[str], purge: bool) -> dict[str, Any]:
    """Delete every visible message (receive + delete batches), or PurgeQueue with
    ``purge``. Reports what was deleted and what stayed in flight, per queue."""
    client = make_client(settings, wait_time_seconds=0)
    result: dict[str, Any] = {}
    for name in url_names:
        try:
            url = client.get_queue_url(QueueName=name)["QueueUrl"]
            if purge:
                result[name] = _purge(client, url)
            else:
                result[name] = {"deleted": _drain(client, url)}
            attributes = client.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
            )["Attributes"]
            result[name]["in_flight"] = int(
                attributes.get("ApproximateNumberOfMessagesNotVisible", 0)
            )
        except Exception as exc:
            result[name] = {"error": describe_error(exc)}
    return result


def _drain(client: Any, url: str) -> int:
    deleted = 0
    empty_in_a_row = 0
    while empty_in_a_row < 2:  # one empty short poll can miss messages on other hosts
        messages = client.receive_message(
            QueueUrl=url, MaxNumberOfMessages=MAX_BATCH, WaitTimeSeconds=0, VisibilityTimeout=60
        ).get("Messages", [])
        if not messages:
            empty_in_a_row += 1
            continue
        empty_in_a_row = 0
        for _, entries in batches(messages, lambda m: {"ReceiptHandle": m["ReceiptHandle"]}):
            response = client.delete_message_batch(QueueUrl=url, Entries=entries)
            deleted += len(response.get("Successful", []))
    return deleted


def _purge(client: Any, url: str) -> dict[str, Any]:
    before = client.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    try:
        client.purge_queue(QueueUrl=url)
    except client.exceptions.PurgeQueueInProgress:
        return {
            "error": "SQS allows one PurgeQueue per queue every 60 seconds; "
            "try again in a minute, or clear without --purge"
        }
    return {"purged": int(before.get("ApproximateNumberOfMessages", 0))}
