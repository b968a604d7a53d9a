"""Fixtures of the reliability suite: the profile (short by default, ``SQSD_CHAOS=long`` for
the issue's full numbers), the message ledger, the fault proxy, and the per-scenario report
written to ``tests/chaos/last-run.json`` and printed at the end of the run.

The daemons themselves come from ``harness`` (tests/conftest.py), which also proves at
teardown that no process a daemon started is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, child_env, log_events  # noqa: F401 - re-exported for scenarios

from chaos.ledger import Ledger
from tests.support.proxy import SQSProxy

REPORT_PATH = Path(__file__).with_name("last-run.json")
SQSCTL = Path(sys.executable).parent / "sqsctl"
CHAOS_RECEIVER = "tests.receivers.chaos:handle"


@dataclass(frozen=True)
class Profile:
    name: str
    # 1. SIGKILL storm
    storm_messages: int
    storm_seconds: float
    # 2. SQS outage: seconds of each fault, then of all of them mixed
    outage_messages: int
    outage_phases: tuple[tuple[str, float], ...]
    stall_seconds: float
    # 3. poison messages: innocent bodies beside each kind of poison, poisons per kind
    poison_innocents: int
    poison_each: int
    # 4. master faults
    master_messages: int
    hup_seconds: float
    # 5. control socket abuse
    fuzz_seconds: float
    slow_clients: int
    connection_burst: int
    wake_rate: int
    wake_seconds: float
    flow_messages: int
    wait_flood_seconds: float  # another user's wait flood (issue #11)
    wait_flood_connections: int
    # 6. resource limits
    leak_messages: int
    # per test: the longest wait for messages to settle, and pytest-timeout's limit
    settle: float
    timeout: float


SHORT = Profile(
    name="short",
    storm_messages=300, storm_seconds=4.0,
    outage_messages=200,
    outage_phases=(("503", 1.0), ("reset", 1.0), ("throttle", 1.0), ("stall", 2.0)),
    stall_seconds=2.0,
    poison_innocents=60, poison_each=1,
    master_messages=150, hup_seconds=3.0,
    fuzz_seconds=5.0, slow_clients=20, connection_burst=500, wake_rate=10_000,
    wake_seconds=1.5, flow_messages=100, wait_flood_seconds=3.0, wait_flood_connections=300,
    leak_messages=12,
    settle=45, timeout=110,
)
LONG = Profile(
    name="long",
    storm_messages=2400, storm_seconds=10.0,
    outage_messages=1000,
    outage_phases=(("503", 3.0), ("reset", 3.0), ("throttle", 3.0), ("stall", 5.0),
                   ("mixed", 4.0)),
    stall_seconds=5.0,
    poison_innocents=400, poison_each=3,
    master_messages=1000, hup_seconds=10.0,
    fuzz_seconds=60.0, slow_clients=100, connection_burst=1000, wake_rate=10_000,
    wake_seconds=5.0, flow_messages=500, wait_flood_seconds=10.0, wait_flood_connections=300,
    leak_messages=40,
    settle=180, timeout=400,
)
PROFILE = LONG if os.environ.get("SQSD_CHAOS", "").lower() == "long" else SHORT


@pytest.fixture(scope="session")
def profile() -> Profile:
    return PROFILE


# --- the report ----------------------------------------------------------------------------

_figures: dict[str, dict[str, Any]] = {}
_session = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "t0": time.monotonic()}


def _write_report() -> None:
    document = {
        "profile": PROFILE.name,
        "started": _session["started"],
        "seconds": round(time.monotonic() - _session["t0"], 1),
        "parameters": asdict(PROFILE),
        "scenarios": _figures,
    }
    tmp = REPORT_PATH.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    os.replace(tmp, REPORT_PATH)


@pytest.fixture
def report(request):
    """``report(**figures)`` records this scenario's figures (merged over several calls);
    they are printed, written to last-run.json and shown in pytest's terminal summary."""
    name = request.node.name
    started = time.monotonic()
    figures: dict[str, Any] = {}

    def add(**values: Any) -> dict[str, Any]:
        figures.update(values)
        figures["seconds"] = round(time.monotonic() - started, 1)
        _figures[name] = dict(figures)
        print(f"\nchaos {name}: {json.dumps(figures, default=str)}")
        _write_report()
        return figures

    yield add
    if figures:
        figures["seconds"] = round(time.monotonic() - started, 1)
        figures["passed"] = not getattr(request.node, "chaos_failed", False)
        _figures[name] = dict(figures)
        _write_report()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        item.chaos_failed = True
    return report


def pytest_terminal_summary(terminalreporter):
    if not _figures:
        return
    terminalreporter.section(f"chaos figures ({PROFILE.name}; {REPORT_PATH.name})")
    for name, figures in _figures.items():
        shown = {k: v for k, v in figures.items() if not isinstance(v, list | dict) or v}
        terminalreporter.write_line(f"{name}: {json.dumps(shown, default=str)}")


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def ledger(request, harness, report):
    """The scenario's message ledger; a scenario that fails before its own report still
    reports the ledger's figures."""
    book = Ledger(harness)
    yield book
    if request.node.name not in _figures and book.sent:
        report(**book.summary(), incomplete="the scenario failed before its own report")


@pytest.fixture
def fault_proxy(sqs_endpoint):
    """``fault_proxy(**options)`` starts an SQSProxy in front of the emulator."""
    proxies: list[SQSProxy] = []

    def start(**options: Any) -> SQSProxy:
        proxy = SQSProxy(sqs_endpoint, **options)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def helpers():
    """Subprocesses started by a scenario (pinger, flooder), ended at teardown."""
    started: list[subprocess.Popen] = []

    def spawn(script: str, *args: str, **kwargs: Any) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name(script)), *args],
                                cwd=REPO, env=child_env(), **kwargs)
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


# --- helpers for the scenarios -------------------------------------------------------------


def sqsctl(daemon, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    command = [str(SQSCTL)] if SQSCTL.exists() else [
        sys.executable, "-c", "from sqsd.cli import sqsctl_main; sqsctl_main()"]
    return subprocess.run([*command, "--socket", str(daemon.socket_path), *args], cwd=REPO,
                          env=child_env(), capture_output=True, text=True, timeout=timeout)


def assert_answers_sqsctl_ping(daemon) -> None:
    result = sqsctl(daemon, "ping")
    assert result.returncode == 0, f"sqsctl ping failed ({result.returncode}): {result.stderr}"
    assert "pong" in result.stdout


def all_workers_running(daemon) -> bool:
    """Every program has a live worker past start-up, none in crash backoff or fatal."""
    try:
        workers = daemon.status()["workers"]
    except (OSError, ValueError, KeyError):
        return False
    return len(workers) == daemon.expected_workers and all(
        w.get("pid") and w["state"] not in ("starting", "crashloop", "fatal", "exited")
        for w in workers)
