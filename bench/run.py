"""Run sqsd's benchmarks and print one table of figures beside their targets.

Without --endpoint-url, fauxqs is started on a free loopback port and stopped at the end.
With one (real SQS included), uniquely named queues are created and deleted on it.
Figures never pass or fail; the exit code is 1 only when a scenario could not run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `sqsd` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3  # noqa: E402
import psutil  # noqa: E402

from bench import autoscale, emulator, engine  # noqa: E402
from bench.events import EventSink  # noqa: E402
from bench.metrics import METHOD as METRICS_METHOD  # noqa: E402
from bench.metrics import metrics  # noqa: E402
from bench.peers import METHOD as PEERS_METHOD  # noqa: E402
from bench.peers import peers  # noqa: E402
from bench.queues import Queues, sqs_client  # noqa: E402
from bench.report import Row, render_table, write_json  # noqa: E402
from bench.scenarios import METHODS, SCENARIOS, Bench  # noqa: E402

SCENARIOS["peers"] = peers  # bench/peers.py: dramatiq and Celery beside sqsd
METHODS["peers"] = PEERS_METHOD
SCENARIOS["autoscale"] = autoscale.autoscale  # bench/autoscale.py
METHODS["autoscale"] = autoscale.METHOD
SCENARIOS["metrics"] = metrics  # bench/metrics.py: what observing costs
METHODS["metrics"] = METRICS_METHOD
SCENARIOS["engine"] = engine.engine  # bench/engine.py: issue 12's targets
METHODS["engine"] = engine.METHOD
NAMES = list(SCENARIOS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint-url", help="an SQS endpoint (default: start fauxqs)")
    parser.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    parser.add_argument(
        "--only",
        help="comma-separated scenarios, by name or number: "
        + ", ".join(f"{i} {n}" for i, n in enumerate(NAMES, 1)),
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=Path(__file__).parent / "results.json",
        help="where to write the results (default bench/results.json)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer messages and shorter windows (about half the time)",
    )
    args = parser.parse_args(argv)
    args.scenarios = select(args.only, parser)
    return args


def select(only: str | None, parser: argparse.ArgumentParser) -> list[str]:
    """Scenario names from --only (names or 1-based numbers), in the standard order."""
    if not only:
        return NAMES
    chosen = set()
    for item in (part.strip() for part in only.split(",") if part.strip()):
        if item.isdigit() and 1 <= int(item) <= len(NAMES):
            chosen.add(NAMES[int(item) - 1])
        elif item in SCENARIOS:
            chosen.add(item)
        else:
            parser.error(f"unknown scenario {item!r}; choose from {', '.join(NAMES)}")
    return [name for name in NAMES if name in chosen]


def is_loopback(url: str) -> bool:
    """Whether an endpoint URL points at this host."""
    return any(host in url for host in ("://127.", "://localhost", "://[::1]"))


def metadata(args: argparse.Namespace, endpoint: str | None, prefix: str) -> dict[str, Any]:
    """Where and how the figures were taken."""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "endpoint": endpoint if args.endpoint_url else f"fauxqs {emulator.installed_version()}",
        "region": args.region,
        "quick": args.quick,
        "queue_prefix": prefix,
        "python": platform.python_version(),
        "boto3": boto3.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "scenarios": args.scenarios,
    }


def run(args: argparse.Namespace) -> int:
    """Run the chosen scenarios and report; returns the exit code."""
    workdir = Path(tempfile.mkdtemp(prefix="sqsdbench-"))
    rows: list[Row] = []
    failed: list[str] = []
    with ExitStack() as stack:
        stack.callback(kill_leftovers)  # registered first, so it runs last
        endpoint = args.endpoint_url
        if endpoint is None:
            os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
            fauxqs = stack.enter_context(emulator.Fauxqs(workdir / "fauxqs.log"))
            endpoint = fauxqs.url
            print(f"fauxqs {emulator.installed_version()} on {endpoint}", file=sys.stderr)
        elif is_loopback(endpoint):
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        client = sqs_client(endpoint, args.region)
        queues = Queues(client)
        stack.callback(delete_queues, queues)
        events = EventSink(workdir / "events.sock")
        stack.callback(events.close)
        bench = Bench(endpoint, args.region, client, queues, workdir, events, args.quick)
        started = time.monotonic()
        load_before = os.getloadavg()
        print(
            f"load average {load_before[0]:.2f} (other work on this host shows in figures)",
            file=sys.stderr,
        )
        for name in args.scenarios:
            number = NAMES.index(name) + 1
            print(f"[{time.monotonic() - started:5.0f}s] {number} {name} ...", file=sys.stderr)
            try:
                rows += SCENARIOS[name](bench)
            except Exception as exc:
                failed.append(name)
                traceback.print_exc()
                rows.append(Row(f"{number} {name}", f"error: {exc}"[:100], None))
        print(f"[{time.monotonic() - started:5.0f}s] done", file=sys.stderr)
        meta = metadata(args, endpoint, queues.prefix) | {"load_average_at_start": load_before}
    print()
    print(render_table(rows))
    print()
    for name in args.scenarios:
        print(f"{NAMES.index(name) + 1} {name}: {METHODS[name]}\n")
    write_json(args.json, meta, rows, {n: METHODS[n] for n in args.scenarios})
    print(f"results written to {args.json}")
    if failed:
        print(
            f"scenarios that could not run: {', '.join(failed)}; logs in {workdir}", file=sys.stderr
        )
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def kill_leftovers() -> None:
    """Kill any process this run started that is still alive (there should be none)."""
    leftovers = psutil.Process().children(recursive=True)
    for process in leftovers:
        process.kill()
    if leftovers:
        print(f"warning: killed {len(leftovers)} leftover process(es)", file=sys.stderr)


def delete_queues(queues: Queues) -> None:
    """Delete the run's queues, saying which could not be deleted."""
    failed = queues.delete_all()
    if failed:
        print(f"warning: could not delete queues: {', '.join(failed)}", file=sys.stderr)


def main() -> None:
    """Entry point: SIGTERM is handled like Ctrl-C, so everything started is stopped."""

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    sys.exit(run(parse_args()))


if __name__ == "__main__":
    main()
