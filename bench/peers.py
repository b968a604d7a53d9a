"""The peers scenario: sqsd beside dramatiq (dramatiq-sqs) and Celery (its SQS transport).

Every system drains the same number of messages from its own queue on the same endpoint in
the same run, with the same handler work (bench/peer_workers/common.py): (a) a no-op handler,
one process at each system's best thread count; (b) ``time.sleep(0.005)`` with 32 threads.
The raw boto3 loop (bench/baseline.py) runs beside them, one message at a time.

The peers run from bench/.peers-venv, a venv of their own made from
bench/peers-requirements.txt (``python -m bench.peers --install``, which ``make bench`` runs);
they are never installed into the project's environment. Each queue is filled by the peer's
own producer API (``actor.send()``, ``task.apply_async()``), so it holds that peer's wire format.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.queues import DepthWatch, fill
from bench.report import Row
from bench.scenarios import (
    SCENARIOS,
    Bench,
    Drain,
    count_of,
    drain_figures,
    drain_raw,
    timed_drain,
    worker_cpu,
)
from tests.support.proxy import SQSProxy

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = BENCH / ".peers-venv"
REQUIREMENTS = BENCH / "peers-requirements.txt"
MIB = 1024 * 1024
PRODUCERS = 4  # producer processes filling a peer's queue together


def pinned() -> dict[str, str]:
    """The exact versions bench/peers-requirements.txt pins, by distribution name."""
    versions = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            versions[name.split("[", 1)[0].strip()] = version.strip()
    return versions


# --- the peers' venv ----------------------------------------------------------------------


def venv_python() -> Path:
    """The interpreter of bench/.peers-venv."""
    return VENV / "bin" / "python"


def ensure_venv() -> Path:
    """Create bench/.peers-venv from bench/peers-requirements.txt unless it is up to date.

    The stamp file holds the requirements it was made from, so a changed pin rebuilds it.
    Returns its interpreter.
    """
    stamp = VENV / ".installed"
    wanted = REQUIREMENTS.read_text()
    with contextlib.suppress(OSError):
        if stamp.read_text() == wanted and venv_python().exists():
            return venv_python()
    print(f"Setting up {VENV.relative_to(REPO)} for the peers' benchmark", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run(
        [str(venv_python()), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
        check=True,
    )
    stamp.write_text(wanted)
    return venv_python()


def installed_versions(python: Path) -> dict[str, str]:
    """Versions of the peers and what they run on, as installed in the venv."""
    names = ["dramatiq", "dramatiq-sqs", "celery", "kombu", "pycurl", "boto3", "botocore"]
    code = (
        "import importlib.metadata as m, json, platform; "
        f"print(json.dumps({{n: m.version(n) for n in {names!r}}} "
        "| {'python': platform.python_version()}))"
    )
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


# --- the systems --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One row group: the handler's work and each system's thread count."""

    label: str
    work: float  # seconds of time.sleep per message
    receiver: str  # sqsd's handler in bench/peer_workers/common.py
    concurrency: int  # sqsd's queue key
    threads: dict[str, int]  # peer name -> threads of its one worker process


CASES = [
    Case("(a) no-op, 1 process", 0.0, "noop", 1, {"dramatiq": 8, "celery": 8}),
    Case("(b) sleep 5 ms, 32 threads", 0.005, "sleep5", 32, {"dramatiq": 32, "celery": 32}),
]


@dataclass
class Result:
    """One drain of one system: its timing, its memory, its API calls (when counted)."""

    drain: Drain
    memory: dict[str, Any] = field(default_factory=dict)
    calls: Counter[str] | None = None


@dataclass(frozen=True)
class Peer:
    """A peer worker: how to start it with a given thread count, and its producer module."""

    name: str
    module: str  # bench.peer_workers.<module>: the producer (python -m) and the worker app
    worker: Callable[[int], list[str]]  # threads -> arguments after `python -m`

    def label(self, threads: int) -> str:
        """The peer and its configuration as the table shows it."""
        if self.name == "dramatiq":
            return f"dramatiq -p 1 -t {threads}"
        return f"Celery threads × {threads}"


PEERS = [
    Peer(
        "dramatiq",
        "bench.peer_workers.dramatiq_app",
        lambda threads: [
            "dramatiq",
            "bench.peer_workers.dramatiq_app",
            "-p",
            "1",
            "-t",
            str(threads),
        ],
    ),
    Peer(
        "celery",
        "bench.peer_workers.celery_app",
        lambda threads: [
            "celery",
            "-A",
            "bench.peer_workers.celery_app",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(threads),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "WARNING",
        ],
    ),
]


def drain_timeout(count: int) -> float:
    """How long a drain may take before it counts as stuck: at least 50 msg/s."""
    return 60.0 + count / 50


def measure_memory(bench: Bench, supervisor: int | None = None) -> dict[str, Any]:
    """RSS of the processes that handled messages (those that reported a first message).

    ``supervisor``: a process that handled none but supervises them (sqsd's master,
    dramatiq's main process), reported apart.
    """
    pids = sorted({e["pid"] for e in bench.events.drain() if e.get("kind") == "first"})
    figures: dict[str, Any] = {"rss_mib": 0.0, "peak_rss_mib": 0.0, "threads": 0}
    for pid in pids:
        process = psutil.Process(pid)
        figures["rss_mib"] += process.memory_info().rss / MIB
        figures["peak_rss_mib"] += peak_rss(pid) / MIB
        figures["threads"] += process.num_threads()
    figures["processes"] = len(pids)
    if supervisor:
        with contextlib.suppress(psutil.Error):
            figures["supervisor_rss_mib"] = psutil.Process(supervisor).memory_info().rss / MIB
    return figures


def peak_rss(pid: int) -> int:
    """A process's peak RSS in bytes (VmHWM), 0 when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def run_sqsd(
    bench: Bench, name: str, case: Case, count: int, proxy: SQSProxy | None
) -> Result:
    """Fill, start `sqsd run` with one worker process, time the drain, stop it."""
    url = bench.queues.create(name)
    fill(bench.client, url, count)
    watch = DepthWatch(bench.client, {url: count})
    options = {
        "receiver": f"bench.peer_workers.common:{case.receiver}",
        "processes": 1,
        "concurrency": case.concurrency,
    }
    daemon = bench.daemon({name: options}, endpoint_url=proxy.url if proxy else None)
    bench.events.clear()
    since = time.monotonic()
    try:
        daemon.launch()
        empty_at = watch.wait_empty(timeout=drain_timeout(count))
        ended = time.monotonic()
        cpu = worker_cpu(bench)
        memory = measure_memory(bench, supervisor=daemon.pid)
        processed = sum(count_of(w, "processed") for w in daemon.workers())
    finally:
        daemon.stop()
    drain = timed_drain(bench, watch, empty_at, processed=processed, cpu=cpu, ended=ended)
    calls = proxy.counts(since, ended) if proxy else None
    return Result(drain, memory, calls)


def run_raw(bench: Bench, name: str, case: Case, count: int, proxy: SQSProxy | None) -> Result:
    """The same drain with one raw boto3 loop process (one message at a time)."""
    since = time.monotonic()
    drain, _ = drain_raw(bench, [name], 1, count, case.work, proxy.url if proxy else None)
    calls = proxy.counts(since, drain.ended) if proxy else None
    return Result(drain, {}, calls)


def peer_env(bench: Bench, url: str, name: str, work: float, threads: int, endpoint: str) -> dict:
    """The environment a peer's producer or worker reads its settings from (common.py)."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SQSD_BENCH_EVENTS": str(bench.events.path),
        "PEER_QUEUE": bench.queues.prefix + name,
        "PEER_QUEUE_URL": url,
        "PEER_ENDPOINT": endpoint,
        "PEER_REGION": bench.region,
        "PEER_WORK": repr(work),
        "PEER_THREADS": str(threads),
    }


def fill_peer(python: Path, peer: Peer, env: dict[str, str], count: int) -> None:
    """Fill a peer's queue through its own producer API, from PRODUCERS processes at once."""
    shares = [count // PRODUCERS + (1 if i < count % PRODUCERS else 0) for i in range(PRODUCERS)]
    producers = [
        subprocess.Popen(
            [str(python), "-m", peer.module, str(share)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for share in shares
        if share
    ]
    errors = [p.communicate()[1] for p in producers]
    for process, error in zip(producers, errors, strict=True):
        if process.returncode != 0:
            raise RuntimeError(
                f"{peer.name} producer exited with {process.returncode}: {error[-2000:]}"
            )


class PeerProcess:
    """A peer's worker command in its own session; ``stop()`` always leaves no process."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.command = command
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        """Start it; returns its pid."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        return self.process.pid

    def check(self) -> None:
        """Raise when the worker has exited already (with the end of its log)."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"{self.command[2]} exited with {self.process.returncode}: {self.log_tail()}"
            )

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (each peer's warm shutdown), then SIGKILL anything left after ``timeout``."""
        if self.process is None:
            return
        process, self.process = self.process, None
        try:
            main = psutil.Process(process.pid)
            family = [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(family, timeout=timeout)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if alive:
            raise RuntimeError(
                f"{self.command[2]} left {len(alive)} process(es) {timeout:g}s after SIGTERM; "
                "killed them"
            )

    def log_tail(self, size: int = 3000) -> str:
        """The end of the worker's log."""
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""


def run_peer(
    bench: Bench,
    python: Path,
    peer: Peer,
    name: str,
    case: Case,
    count: int,
    proxy: SQSProxy | None,
) -> Result:
    """Fill with the peer's producer, start its worker (1 process), time the drain, stop it."""
    url = bench.queues.create(name)
    threads = case.threads[peer.name]
    endpoint = bench.endpoint_url or ""
    fill_peer(python, peer, peer_env(bench, url, name, case.work, threads, endpoint), count)
    watch = DepthWatch(bench.client, {url: count})
    env = peer_env(bench, url, name, case.work, threads, proxy.url if proxy else endpoint)
    worker = PeerProcess(
        [str(python), "-m", *peer.worker(threads)], env, bench.workdir / f"{name}.log"
    )
    bench.events.clear()
    since = time.monotonic()
    try:
        pid = worker.start()
        try:
            empty_at = watch.wait_empty(timeout=drain_timeout(count))
        except TimeoutError as exc:
            worker.check()
            raise RuntimeError(f"{peer.name}: {exc}; log: {worker.log_tail()}") from exc
        ended = time.monotonic()
        cpu = worker_cpu(bench)
        memory = measure_memory(bench, supervisor=None if peer.name == "celery" else pid)
    finally:
        worker.stop()
    drain = timed_drain(bench, watch, empty_at, processed=count, cpu=cpu, ended=ended)
    calls = proxy.counts(since, ended) if proxy else None
    return Result(drain, memory, calls)


# --- the scenario -------------------------------------------------------------------------


def peers(bench: Bench) -> list[Row]:
    """The peers scenario: sqsd, the raw loop, dramatiq and Celery on the same cases, one run."""
    setup_error = ""
    try:
        python = ensure_venv()
        versions = installed_versions(python)
    except (OSError, subprocess.CalledProcessError) as exc:  # sqsd and raw still run
        traceback.print_exc()
        python, versions, setup_error = venv_python(), {}, f"error: peers' venv: {exc}"[:100]
    n = bench.messages
    repeats = 1 if bench.quick else 3
    drain_raw(bench, ["peers_warmup"], 2, n)  # the emulator gets faster as its JIT warms up
    rows: list[Row] = []
    for number, case in enumerate(CASES):
        runners: dict[str, Callable[[str, SQSProxy | None], Result]] = {
            "sqsd": lambda name, proxy, case=case: run_sqsd(bench, name, case, n, proxy),
            "raw": lambda name, proxy, case=case: run_raw(bench, name, case, n, proxy),
        }
        for peer in PEERS:
            runners[peer.name] = lambda name, proxy, case=case, peer=peer: run_peer(
                bench, python, peer, name, case, n, proxy
            )
        timed: dict[str, list[Result]] = {system: [] for system in runners}
        counted: dict[str, Result] = {}
        errors = {peer.name: setup_error for peer in PEERS if setup_error}
        systems = list(runners)
        for r in range(repeats):
            for system in systems[r:] + systems[:r]:  # each goes first in turn
                if system in errors:
                    continue
                try:
                    timed[system].append(runners[system](f"peer{number}_{system}_{r}", None))
                except Exception as exc:
                    traceback.print_exc()
                    errors[system] = f"error: {exc}"[:100]
        if bench.can_proxy:
            with SQSProxy(bench.endpoint_url or "") as proxy:
                for system in systems:
                    if system in errors:
                        continue
                    try:
                        counted[system] = runners[system](f"peer{number}_{system}_api", proxy)
                    except Exception as exc:
                        traceback.print_exc()
                        errors[system] = f"error: {exc}"[:100]
        rows += case_rows(case, n, timed, counted, errors, versions)
    return rows


def scenario_label() -> str:
    """``N peers``: N is its place in the run's list (run.py registers it after 1 to 8)."""
    names = list(SCENARIOS)
    return f"{names.index('peers') + 1} peers" if "peers" in names else "peers"


def case_rows(
    case: Case,
    n: int,
    timed: dict[str, list[Result]],
    counted: dict[str, Result],
    errors: dict[str, str],
    versions: dict[str, str],
) -> list[Row]:
    """The rows of one case: each figure of sqsd against the raw loop, then each peer."""

    def median(system: str, figure: Callable[[Result], float | None]) -> float | None:
        values = [v for v in (figure(r) for r in timed.get(system, [])) if v is not None]
        return statistics.median(values) if values else None

    def calls(system: str) -> float | None:
        result = counted.get(system)
        if result is None or result.calls is None:
            return None
        return sum(result.calls.values()) / n

    figures: list[tuple[str, str, Callable[[str], float | None]]] = [
        ("msg/s", "msg/s", lambda s: median(s, lambda r: r.drain.rate)),
        ("consumer CPU/msg", "µs", lambda s: median(s, lambda r: r.drain.cpu_per_message)),
        ("API calls/msg", "", calls),
        ("worker RSS", "MiB", lambda s: median(s, lambda r: r.memory.get("rss_mib"))),
    ]
    others = [("raw", "")] + [
        (peer.name, f" vs {peer.label(case.threads[peer.name])}") for peer in PEERS
    ]
    details: dict[str, Any] = {
        "messages": n,
        "work_s": case.work,
        "sqsd_concurrency": case.concurrency,
        "threads": case.threads,
        "versions": versions,
        "errors": errors,
    }
    for system, results in timed.items():
        details[system] = [drain_figures(r.drain) | {"memory": r.memory} for r in results]
    for system, result in counted.items():
        details[f"{system}_calls"] = dict(result.calls or {})
    rows = []
    scenario = scenario_label()
    if "sqsd" in errors:
        rows.append(Row(scenario, f"{case.label}: sqsd {errors['sqsd']}", None))
    first = True
    for other, suffix in others:
        if other in errors:
            rows.append(Row(scenario, f"{case.label}{suffix}: {errors[other]}", None))
            continue
        for metric, unit, value in figures:
            if other == "raw" and metric == "worker RSS":
                continue  # the raw loop exits when the queue is empty: no RSS taken
            rows.append(
                Row(
                    scenario,
                    f"{case.label}: {metric}{suffix}",
                    value("sqsd"),
                    value(other),
                    unit,
                    "",
                    details if first else {},
                )
            )
            first = False
    return rows


METHOD = (
    "sqsd beside two peers that run on SQS without a broker of their own, installed into "
    "bench/.peers-venv only (never into sqsd's environment) at the versions pinned in "
    "bench/peers-requirements.txt: "
    + ", ".join(f"{name} {version}" for name, version in pinned().items())
    + ". Each system drains N messages from its own queue on the same endpoint, in the same "
    "run, one worker process each, the same handler work (bench/peer_workers/common.py): "
    "(a) a no-op, at each one's best thread count (sqsd: concurrency 1; dramatiq and Celery: "
    "8 threads; 8 and 32 were within noise of each other on the 2-CPU development host, 1 "
    "far slower); (b) time.sleep(0.005) with 32 threads "
    "(sqsd: concurrency = 32). The raw boto3 loop runs one message at a time. dramatiq: "
    "`dramatiq -p 1 -t T` with dramatiq-sqs's SQSBroker (a supervisor process plus one worker "
    "process; a boto3 pool of T+1 connections, because its worker threads delete their own "
    "messages). Celery: `celery worker --pool threads --concurrency T --without-gossip "
    "--without-mingle --without-heartbeat`, kombu's SQS transport (pycurl for receives, boto3 "
    "for deletes), predefined_queues, task_acks_late (deleted after the task, like sqsd), "
    "remote control and events off, results ignored. Each peer's queue is filled by its own "
    "producer API (actor.send(), task.apply_async()), so it holds that peer's wire format; "
    "sqsd's and the raw loop's hold the body 'x'. Timing as in throughput: from the consumer's "
    "first message to the queue seen empty, messages left at that moment from depth polls "
    "(median of 3 runs, each system first in turn; --quick: 1). API calls/msg: one more drain "
    "each through the counting proxy, from start until the queue is seen empty. Worker RSS: "
    "the process that ran the handlers, once the queue is empty (the JSON has its peak and "
    "the supervisor's). In rows ending `vs PEER` the second column is that peer, not the raw "
    "loop, and the ratio is sqsd / peer."
)


def main() -> None:
    """``python -m bench.peers --install``: create or update bench/.peers-venv."""
    parser = argparse.ArgumentParser(description="the peers' venv for the benchmark")
    parser.add_argument("--install", action="store_true", help="create or update the venv")
    args = parser.parse_args()
    if args.install:
        print(json.dumps(installed_versions(ensure_venv())))
        (VENV / ".installed").touch()  # up to date: tell make so


if __name__ == "__main__":
    main()
