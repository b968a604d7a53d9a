"""Celery on its SQS transport (kombu): the app a ``celery worker`` runs, and the producer.

Worker (bench/.peers-venv)::

    celery -A bench.peer_workers.celery_app worker --pool threads --concurrency 32 \
        --without-gossip --without-mingle --without-heartbeat

Producer: ``python -m bench.peer_workers.celery_app COUNT`` sends COUNT messages with
``task.apply_async()``, so the queue holds Celery's own wire format (base64 of kombu's JSON
envelope).

Configuration, as Celery's SQS documentation recommends for a production worker: the queue
is given in ``predefined_queues`` (the harness creates it; no ListQueues or CreateQueue from
the worker); remote control, events, gossip, mingle and heartbeats are off (they need a
fanout exchange, which the SQS transport lacks); results are ignored (no backend).
``task_acks_late`` deletes a message after its task returns, the same at-least-once
contract as sqsd and dramatiq (Celery's default deletes it before the task runs). The
visibility timeout is 30 s, as sqsd's in the bench. Prefetch stays Celery's default
(4 × concurrency; each ReceiveMessage asks for at most 10).
"""

from __future__ import annotations

import sys
from urllib.parse import urlsplit

from celery import Celery

from bench.peer_workers.common import setting, work, work_seconds

QUEUE = setting("PEER_QUEUE")
WORK = work_seconds()
_endpoint = urlsplit(setting("PEER_ENDPOINT"))

# No credentials in the URL: kombu then leaves them to boto3's chain (environment, profile),
# as the harness does for sqsd. The URL's host and port are the endpoint.
app = Celery("sqsdbench", broker=f"sqs://@{_endpoint.netloc}")
app.conf.update(
    broker_transport_options={
        "region": setting("PEER_REGION", "us-east-1"),
        "is_secure": _endpoint.scheme == "https",
        "predefined_queues": {QUEUE: {"url": setting("PEER_QUEUE_URL")}},
        "visibility_timeout": 30,
        "wait_time_seconds": 1,
    },
    broker_connection_retry_on_startup=True,
    task_default_queue=QUEUE,
    task_acks_late=True,
    task_ignore_result=True,
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
)


@app.task(name="sqsdbench.work")
def bench_task() -> None:
    """The benchmark's handler: the same work as sqsd's and the raw loop's."""
    work(WORK, QUEUE)


def main() -> None:
    """Send ``argv[1]`` messages to the queue, one ``apply_async()`` each."""
    for _ in range(int(sys.argv[1])):
        bench_task.apply_async()


if __name__ == "__main__":
    main()
