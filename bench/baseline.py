"""The raw boto3 loop: the baseline every sqsd figure is compared with.

One process per loop: ReceiveMessage (MaxNumberOfMessages=10, WaitTimeSeconds=1), the
optional work per message, DeleteMessageBatch; it exits after its first empty receive and
prints one JSON line: first and last message times (wall clock), messages, calls by action,
CPU seconds from the first message on.
Like the sqsd handlers, it reports its first message on ``SQSD_BENCH_EVENTS``.

``python -m bench.baseline --queue-url URL [--endpoint-url URL] [--work SECONDS] [--listen]``
(``--listen``: long-poll and report every message's start time until killed.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.receivers import report

REPO = Path(__file__).resolve().parent.parent


def drain(client: Any, queue_url: str, work: float = 0.0) -> dict[str, object]:
    """Receive, work and delete until a receive comes back empty; returns the figures."""
    calls: Counter[str] = Counter()
    first = last = cpu_first = 0.0
    messages = 0
    while True:
        calls["ReceiveMessage"] += 1
        reply = client.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        batch = reply.get("Messages", [])
        if not batch:
            break
        if not first:
            first = time.time()
            cpu_first = time.process_time()
            report({"kind": "first", "queue": queue_url, "at": first, "cpu": cpu_first})
        for _message in batch:
            if work:
                time.sleep(work)
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)]
        calls["DeleteMessageBatch"] += 1
        client.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        messages += len(batch)
        last = time.time()
    cpu = time.process_time() - cpu_first if messages else 0.0
    return {"first": first, "last": last, "messages": messages, "calls": dict(calls), "cpu": cpu}


def listen(client: Any, queue_url: str) -> None:
    """Long-poll (WaitTimeSeconds=20) until killed, reporting each message's start time.

    The latency scenario's raw column: bodies carry ``seq`` and ``sent`` as for the
    ``latency`` handler, and the report is the same.
    """
    while True:
        reply = client.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=20
        )
        for message in reply.get("Messages", []):
            started = time.time()
            body = json.loads(message["Body"])
            report(
                {"kind": "latency", "seq": body["seq"], "sent": body["sent"], "started": started}
            )
            client.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


@dataclass
class RawResult:
    """The figures of several raw loops together."""

    first: float = 0.0  # wall time of the first message any loop received
    last: float = 0.0  # wall time of the last delete
    messages: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    cpu: float = 0.0  # CPU seconds of all loops from their first message to their exit


class RawLoops:
    """``processes`` raw loop processes per queue URL, started together."""

    def __init__(
        self,
        queue_urls: list[str],
        processes: int = 1,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        work: float = 0.0,
        events: str = "",
        listen: bool = False,
    ) -> None:
        self.events = events  # the harness's event socket: each loop reports its first message
        self.commands = []
        for url in queue_urls:
            command = [sys.executable, "-m", "bench.baseline", "--queue-url", url]
            command += ["--region", region, "--work", str(work)]
            command += ["--listen"] if listen else []
            if endpoint_url:
                command += ["--endpoint-url", endpoint_url]
            self.commands += [command] * processes
        self.processes: list[subprocess.Popen[str]] = []

    def start(self) -> None:
        """Start every loop process."""
        env = {**os.environ, "PYTHONPATH": str(REPO), "SQSD_BENCH_EVENTS": self.events}
        for command in self.commands:
            self.processes.append(
                subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
            )

    def finish(self, timeout: float = 300.0) -> RawResult:
        """Wait for every loop to exit and add up their figures."""
        result = RawResult()
        try:
            for process in self.processes:
                out, _ = process.communicate(timeout=timeout)
                if process.returncode != 0:
                    raise RuntimeError(f"raw loop exited with {process.returncode}")
                figures = json.loads(out.strip().splitlines()[-1])
                if figures["messages"]:
                    result.first = min(result.first or figures["first"], figures["first"])
                    result.last = max(result.last, figures["last"])
                result.messages += figures["messages"]
                result.cpu += figures["cpu"]
                result.calls.update(figures["calls"])
        finally:
            self.kill()
        return result

    def kill(self) -> None:
        """Stop any loop still running (after an error)."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def main() -> None:
    """Run one raw loop and print its figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue-url", required=True)
    parser.add_argument("--endpoint-url")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--work", type=float, default=0.0, help="seconds of sleep per message")
    parser.add_argument("--listen", action="store_true", help="report latencies until killed")
    args = parser.parse_args()

    from bench.queues import sqs_client

    client = sqs_client(args.endpoint_url, args.region)
    if args.listen:
        listen(client, args.queue_url)
    print(json.dumps(drain(client, args.queue_url, args.work)), flush=True)


if __name__ == "__main__":
    main()
