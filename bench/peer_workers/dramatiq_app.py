"""dramatiq with dramatiq-sqs: the broker and actor a ``dramatiq`` worker runs, and the producer.

Worker (bench/.peers-venv): ``dramatiq bench.peer_workers.dramatiq_app -p 1 -t 32``.
Producer: ``python -m bench.peer_workers.dramatiq_app COUNT`` sends COUNT messages with
``actor.send()``, so the queue holds dramatiq's own wire format (base64 of its JSON message).

The queue is created by the harness beforehand; ``PEER_QUEUE`` is its full SQS name, used as
the actor's queue name with no broker namespace (dramatiq-sqs would otherwise prefix
``NAMESPACE_``). The broker's visibility timeout is 30 s, as sqsd's in the bench (dramatiq-sqs
defaults to 12 hours, sent with every ReceiveMessage), and boto3's connection pool is as large
as the worker's threads, which delete their messages themselves. Everything else is
dramatiq's default: its middleware, a one-second consumer poll, prefetch min(threads × 2, 10).
"""

from __future__ import annotations

import sys

import dramatiq
from botocore.config import Config
from dramatiq_sqs import SQSBroker

from bench.peer_workers.common import setting, work, work_seconds

QUEUE = setting("PEER_QUEUE")
WORK = work_seconds()

broker = SQSBroker(
    endpoint_url=setting("PEER_ENDPOINT"),
    region_name=setting("PEER_REGION", "us-east-1"),
    visibility_timeout=30,
    # Worker threads delete their own messages: one HTTP connection per thread (boto3's
    # default pool of 10 otherwise logs "Connection pool is full" and reconnects).
    config=Config(max_pool_connections=int(setting("PEER_THREADS", "32")) + 1),
)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def bench_task() -> None:
    """The benchmark's handler: the same work as sqsd's and the raw loop's."""
    work(WORK, QUEUE)


def main() -> None:
    """Send ``argv[1]`` messages to the queue, one ``send()`` each (dramatiq has no batch)."""
    for _ in range(int(sys.argv[1])):
        bench_task.send()


if __name__ == "__main__":
    main()
