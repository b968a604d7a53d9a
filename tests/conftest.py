"""Shared fixtures: a real SQS API (moto's server) and real sqsd daemons.

``sqs_endpoint`` starts ``moto.server`` once per session as a subprocess. ``harness``
gives each test its own queue prefix, record file and socket, starts ``sqsd run`` as
a real process on request and, at teardown, stops every daemon it started and checks
that the master, every worker it ever saw and the socket file are gone.
"""

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from sqsd.local import LocalEndpoint, free_port  # noqa: F401 - for tests that need a port
from sqsd.testing_daemon import alive, config_text, describe  # noqa: F401 - for tests
from tests.support.daemon import REPO, STARTING, WORKER_TITLE, Daemon, Worker  # noqa: F401

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
os.environ.update(AWS_ENV)

# Small timings keep the suite fast: a message left in a queue reappears after 5 s (the
# smallest visibility timeout sqsd accepts).
DEFAULTS = {
    "visibility_timeout": 5,
    "wait_time_seconds": 1,
    "idle_sleep_max": 1,
    "batch_size": 10,
    "graceful_timeout": 10,
}
BASIC_RECEIVER = "tests.receivers.basic:handle"


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
             what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}"
                                 f" (last value: {value!r})")
        time.sleep(interval)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQSD_")}
    env.update(AWS_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def sqs_endpoint(tmp_path_factory) -> str:
    """URL of a moto server running as a subprocess for the whole session."""
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    endpoint = LocalEndpoint.start(log_path=log_path)
    try:
        yield endpoint.url
    finally:
        endpoint.stop()


@pytest.fixture(scope="session")
def sqsd_endpoint(sqs_endpoint) -> str:
    """The pytest plugin's endpoint for users' daemons: here, the suite's own."""
    return sqs_endpoint


@pytest.fixture(scope="session")
def sqs(sqs_endpoint):
    """A boto3 SQS client for the test process."""
    return boto3.client("sqs", endpoint_url=sqs_endpoint, region_name="us-east-1")


_prefixes = itertools.count(1)


@pytest.fixture
def prefix() -> str:
    """A queue name prefix no other test uses."""
    return f"t{next(_prefixes)}_"


def expected_worker_count(queues: dict[str, dict[str, Any]]) -> int:
    return sum(len(q.get("suffixes") or [""]) * q.get("processes", 1) for q in queues.values())


def log_events(daemon: Daemon, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
    """The daemon's JSON log lines, filtered by event and field values."""
    found = []
    for line in daemon.log_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        if event is not None and entry.get("event") != event:
            continue
        if all(entry.get(k) == v for k, v in match.items()):
            found.append(entry)
    return found


def queue_counts(harness: "Harness", queue: str) -> tuple[int, int]:
    """(visible, not visible) messages of a queue, straight from SQS."""
    attributes = harness.sqs.get_queue_attributes(
        QueueUrl=harness.queue_url(queue),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (int(attributes["ApproximateNumberOfMessages"]),
            int(attributes["ApproximateNumberOfMessagesNotVisible"]))


# --- per-test harness ----------------------------------------------------------------------


class Harness:
    """Per-test world: queue prefix, files, the SQS client and the daemons this test started."""

    wait_for = staticmethod(wait_for)

    def __init__(self, tmp_path: Path, prefix: str, sqs, endpoint: str):
        self.tmp_path = tmp_path
        self.prefix = prefix
        self.sqs = sqs
        self.endpoint = endpoint
        self.socket_dir = Path(tempfile.mkdtemp(prefix="sqsd-", dir="/tmp"))  # short: AF_UNIX
        self.socket_path = self.socket_dir / "sqsd.sock"
        self.record_path = tmp_path / "record.jsonl"
        self.failed_log = tmp_path / "failed.log"
        self.config_path = tmp_path / "sqsd.toml"
        self.daemons: list[Daemon] = []
        self._logs = itertools.count(1)

    # config and processes

    def write_config(self, queues: dict[str, dict[str, Any]], *, defaults=None, imports=None,
                     sqsd=None, path: Path | None = None) -> Path:
        """Write a config with this test's prefix, socket and files."""
        path = path or self.config_path
        daemon = {
            "imports": imports if imports is not None else ["tests.receivers.basic"],
            "socket": str(self.socket_path),
            "queue_prefix": self.prefix,
            "region": "us-east-1",
            "endpoint_url": self.endpoint,
            "create_queues": True,
            "log_format": "json",
            "failed_log": str(self.failed_log),
            **(sqsd or {}),
        }
        path.write_text(config_text(daemon, {**DEFAULTS, **(defaults or {})}, queues))
        return path

    def start(self, queues: dict[str, dict[str, Any]] | None = None, *, defaults=None,
              imports=None, env: dict[str, str] | None = None, ready: bool = True,
              **sqsd_options: Any) -> Daemon:
        """Write a config and start `python -m sqsd run -c CONFIG`, by default until ready."""
        if queues is None:
            queues = {"basic": {"receiver": BASIC_RECEIVER}}
        config = self.write_config(queues, defaults=defaults, imports=imports, sqsd=sqsd_options)
        merged_defaults = {**DEFAULTS, **(defaults or {})}
        daemon = Daemon(
            config, self.tmp_path / f"sqsd-{next(self._logs)}.log", self.socket_path,
            self.daemon_env(env), expected_worker_count(queues),
            merged_defaults["graceful_timeout"],
        )
        self.daemons.append(daemon)
        if ready:
            daemon.wait_ready()
        return daemon

    def daemon_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return child_env(SQSD_TEST_RECORD=str(self.record_path), **(extra or {}))

    def run_sqsd(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run `python -m sqsd ARGS` to completion (for commands that exit by themselves)."""
        return subprocess.run(
            [sys.executable, "-m", "sqsd", *args], cwd=REPO, env=self.daemon_env(),
            capture_output=True, text=True, timeout=timeout,
        )

    def produce(self, code: str, env: dict[str, str] | None = None) -> str:
        """Run producer code in a separate Python process with SQSD_CONFIG; return stdout."""
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=REPO, env=child_env(SQSD_CONFIG=str(self.config_path), **(env or {})),
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, f"producer failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    # queues

    def queue_name(self, name: str, suffix: str = "") -> str:
        fifo = name.endswith(".fifo")
        base = name.removesuffix(".fifo")
        return f"{self.prefix}{base}{f'__{suffix}' if suffix else ''}{'.fifo' if fifo else ''}"

    def queue_url(self, name: str, suffix: str = "", timeout: float = 10.0) -> str:
        """URL of a queue, waiting until the daemon has created it."""
        queue_name = self.queue_name(name, suffix)

        def lookup():
            try:
                return self.sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
            except self.sqs.exceptions.QueueDoesNotExist:
                return None

        return wait_for(lookup, timeout=timeout, what=f"queue {queue_name} to exist")

    def send(self, name: str, body: str, suffix: str = "", **params: Any) -> str:
        """SendMessage with boto3 (no producer API, no wake-up); returns the message id."""
        url = self.queue_url(name, suffix)
        return self.sqs.send_message(QueueUrl=url, MessageBody=body, **params)["MessageId"]

    def depth(self, name: str, suffix: str = "") -> int:
        """Visible + in flight + delayed messages in a queue."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url(name, suffix),
            AttributeNames=["ApproximateNumberOfMessages",
                            "ApproximateNumberOfMessagesNotVisible",
                            "ApproximateNumberOfMessagesDelayed"],
        )["Attributes"]
        return sum(int(v) for v in attributes.values())

    def receive(self, name: str, suffix: str = "") -> list[dict[str, Any]]:
        """Take a peek (visibility 0) at up to 10 messages, with all attributes."""
        return self.sqs.receive_message(
            QueueUrl=self.queue_url(name, suffix), MaxNumberOfMessages=10,
            VisibilityTimeout=0, WaitTimeSeconds=0,
            AttributeNames=["All"], MessageAttributeNames=["All"],
        ).get("Messages", [])

    # what the handlers recorded

    def records(self, event: str | None = "end", **match: Any) -> list[dict[str, Any]]:
        """Recorded handler calls in the order they were written, filtered by field values."""
        try:
            text = self.record_path.read_text()
        except FileNotFoundError:
            return []
        found = []
        for line in text.split("\n")[:-1]:  # the last piece is "" or a line still being written
            entry = json.loads(line)
            if event is not None and entry["event"] != event:
                continue
            if all(entry.get(k) == v for k, v in match.items()):
                found.append(entry)
        return found

    def wait_for_records(self, count: int, event: str | None = "end", timeout: float = 15.0,
                         **match: Any) -> list[dict[str, Any]]:
        """Wait until at least ``count`` matching records exist; return them all."""
        return wait_for(
            lambda: (found := self.records(event, **match)) and len(found) >= count and found,
            timeout=timeout, what=f"{count} {event} records matching {match}",
        )

    def failed_lines(self) -> list[dict[str, Any]]:
        try:
            text = self.failed_log.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    # teardown

    def close(self) -> list[str]:
        problems = []
        for daemon in reversed(self.daemons):
            problems.extend(daemon.shut_down())
        last = self.daemons[-1] if self.daemons else None
        if last is not None and not last.killed and last.socket_path.exists():
            problems.append(f"socket file {last.socket_path} left behind")
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        return problems


@pytest.fixture
def harness(request, tmp_path, prefix, sqs, sqs_endpoint):
    h = Harness(tmp_path, prefix, sqs, sqs_endpoint)
    request.node.sqsd_harness = h
    yield h
    problems = h.close()
    assert not problems, "\n".join(problems)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the daemons' logs (last 200 lines each) to the report."""
    report = yield
    h = getattr(item, "sqsd_harness", None)
    if h is not None and report.failed:
        for daemon in h.daemons:
            tail = "\n".join(daemon.log_text().splitlines()[-200:])
            report.sections.append((f"sqsd log {daemon.log_path}", tail))
    return report


@pytest.fixture
def nobody():
    """Run code as uid 65534 (tests/another_user.py): a real second user, whatever the
    checkout's location; skipped, with the reason, where that is not possible."""
    from another_user import other_user

    yield from other_user()


_SESSION_STARTED = time.time()
WORKER_MODEL_FIGURES = Path(__file__).parent / "unit" / "worker-model-last-run.json"


def pytest_terminal_summary(terminalreporter):
    """The worker model's figures (tests/unit/test_worker_model.py), when it ran in this
    session (in an xdist worker too: it leaves them in a file)."""
    path = WORKER_MODEL_FIGURES
    if path.exists() and path.stat().st_mtime >= _SESSION_STARTED:
        terminalreporter.section("worker model (issue #10)")
        terminalreporter.write_line(json.dumps(json.loads(path.read_text())))
