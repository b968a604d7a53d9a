"""SQS helpers for the benchmark: uniquely named queues, bulk pre-fill, depth polling."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config


def sqs_client(endpoint_url: str | None, region: str, pool: int = 16) -> Any:
    """A boto3 SQS client; ``endpoint_url`` None means AWS itself."""
    config = Config(max_pool_connections=pool, retries={"max_attempts": 5, "mode": "standard"})
    return boto3.client("sqs", endpoint_url=endpoint_url, region_name=region, config=config)


class Queues:
    """The run's queues: every name gets a unique prefix; ``delete_all()`` removes them."""

    def __init__(self, client: Any, prefix: str | None = None) -> None:
        self.client = client
        self.prefix = prefix or f"sqsdbench_{secrets.token_hex(3)}_"
        self.urls: dict[str, str] = {}

    def create(self, name: str) -> str:
        """Create ``{prefix}{name}`` (idempotent) and return its URL."""
        if name not in self.urls:
            reply = self.client.create_queue(QueueName=self.prefix + name)
            self.urls[name] = reply["QueueUrl"]
        return self.urls[name]

    def delete_all(self) -> list[str]:
        """Delete every queue this run created; returns the names that could not be deleted."""
        failed = []
        for name, url in list(self.urls.items()):
            try:
                self.client.delete_queue(QueueUrl=url)
                del self.urls[name]
            except Exception:
                failed.append(self.prefix + name)
        return failed


def fill(client: Any, url: str, count: int, body: str = "x", threads: int = 8) -> float:
    """Send ``count`` messages with SendMessageBatch from a thread pool; returns seconds."""
    batches = [min(10, count - start) for start in range(0, count, 10)]

    def send(size: int) -> None:
        entries = [{"Id": str(i), "MessageBody": body} for i in range(size)]
        reply = client.send_message_batch(QueueUrl=url, Entries=entries)
        if reply.get("Failed"):
            raise RuntimeError(f"SendMessageBatch failed: {reply['Failed'][:1]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, batches))
    return time.perf_counter() - started


def depth(client: Any, url: str) -> int:
    """Messages in the queue: visible, in flight and delayed (approximate on AWS)."""
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return sum(int(attributes.get(name, 0)) for name in names)


class DepthWatch:
    """Polls the depth of draining queues, one queue per tick in turn, until all are empty.

    A queue seen empty is not polled again (nothing is sent while draining), so the last
    queue to empty is polled every tick. The samples give the messages left at any moment.
    """

    def __init__(self, client: Any, initial: dict[str, int]) -> None:
        self.client = client
        now = time.time()
        self.samples: dict[str, list[tuple[float, int]]] = {
            url: [(now, count)] for url, count in initial.items()
        }

    def wait_empty(self, interval: float = 0.025, timeout: float = 300.0) -> float:
        """Poll until every queue is empty; returns the wall time the last was seen empty."""
        pending = list(self.samples)
        deadline = time.monotonic() + timeout
        turn = 0
        seen_empty = time.time()
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"queues not empty after {timeout:g}s")
            url = pending[turn % len(pending)]
            count = depth(self.client, url)
            seen_empty = time.time()
            self.samples[url].append((seen_empty, count))
            if count == 0:
                pending.remove(url)
            else:
                turn += 1
            time.sleep(interval)
        return seen_empty

    def remaining_at(self, moment: float) -> float:
        """Messages left in all queues at wall time ``moment``, interpolated linearly."""
        total = 0.0
        for samples in self.samples.values():
            if moment <= samples[0][0]:
                total += samples[0][1]
                continue
            for (t1, n1), (t2, n2) in zip(samples, samples[1:], strict=False):
                if t1 <= moment <= t2:
                    total += n1 + (n2 - n1) * (moment - t1) / (t2 - t1 or 1)
                    break
        return total


def wait_empty(
    client: Any, urls: Iterable[str], interval: float = 0.025, timeout: float = 300.0
) -> float:
    """Poll GetQueueAttributes until every queue is empty; returns the wall time seen empty."""
    urls = list(urls)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(depth(client, url) == 0 for url in urls):
            return time.time()
        time.sleep(interval)
    raise TimeoutError(f"queues not empty after {timeout:g}s")
