"""Shared fixtures: a real SQS API (moto's server) and real sqsd daemons.

``sqs_endpoint`` starts ``moto.server`` once per session as a subprocess. ``harness``
gives each test its own queue prefix, record file and socket, starts ``sqsd run`` as
a real process on request and, at teardown, stops every daemon it started and checks
that the master, every worker it ever saw and the socket file are gone.
"""

import contextlib
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent

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
STARTING = ("starting", None)  # worker states before its queue is resolved
WORKER_TITLE = re.compile(
    r"^sqsd: worker (?P<queue>[^\s:]+)(?::(?P<suffix>\S+))?(?: (?P<state>\S+))?"
)


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


def alive(proc) -> bool:
    """True while ``proc`` (a psutil.Process) runs; a zombie counts as gone."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def describe(proc) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline())!r}"
    except psutil.Error:
        return str(proc.pid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQSD_")}
    env.update(AWS_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def answers_http(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/moto-api/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


@pytest.fixture(scope="session")
def sqs_endpoint(tmp_path_factory) -> str:
    """URL of a moto server running as a subprocess for the whole session."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=child_env(),
        )

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}:\n"
                               f"{log_path.read_text()}")
        return answers_http(port)

    try:
        wait_for(ready, timeout=30, interval=0.1, what="moto server to answer HTTP")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def sqs(sqs_endpoint):
    """A boto3 SQS client for the test process."""
    return boto3.client("sqs", endpoint_url=sqs_endpoint, region_name="us-east-1")


_prefixes = itertools.count(1)


@pytest.fixture
def prefix() -> str:
    """A queue name prefix no other test uses."""
    return f"t{next(_prefixes)}_"


# --- config --------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_document(sections: dict[str, dict[str, Any]]) -> str:
    lines = []
    for header, table in sections.items():
        lines.append(f"[{header}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in table.items())
        lines.append("")
    return "\n".join(lines)


def expected_worker_count(queues: dict[str, dict[str, Any]]) -> int:
    return sum(len(q.get("suffixes") or [""]) * q.get("processes", 1) for q in queues.values())


# --- a running daemon ----------------------------------------------------------------------


@dataclass(frozen=True)
class Worker:
    pid: int
    queue: str
    suffix: str
    state: str


class Daemon:
    """One ``sqsd run`` process and everything it forks, observed from outside."""

    def __init__(self, config_path: Path, log_path: Path, socket_path: Path,
                 env: dict[str, str], expected_workers: int, graceful_timeout: float):
        self.config_path = config_path
        self.log_path = log_path
        self.socket_path = socket_path
        self.expected_workers = expected_workers
        self.graceful_timeout = graceful_timeout
        self.killed = False
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sqsd", "run", "-c", str(config_path)],
                cwd=REPO, env=env, stdout=log, stderr=log,
            )
        self.master = psutil.Process(self.proc.pid)
        self.seen: dict[int, psutil.Process] = {}
        self._sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    # observation

    def _sample(self) -> None:
        while not self._sampling.is_set():
            self.descendants()
            self._sampling.wait(0.05)

    def descendants(self) -> list:
        """All current descendants of the master; each one is remembered for teardown."""
        try:
            children = self.master.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for child in children:
            self.seen.setdefault(child.pid, child)
        return children

    def workers(self) -> list[Worker]:
        """Live workers, read from their process titles (`sqsd: worker QUEUE[:SUFFIX] STATE`)."""
        found = []
        for child in self.descendants():
            try:
                title = " ".join(child.cmdline()).strip()
            except psutil.Error:
                continue
            match = WORKER_TITLE.match(title)
            if match and alive(child):
                found.append(Worker(child.pid, match["queue"], match["suffix"] or "",
                                    match["state"] or ""))
        return found

    def query_children(self) -> set[int]:
        """The master's one-shot children doing SQS work for control requests (queue depths
        for status and wait, clear): forked from the master, they keep its title."""
        found = set()
        for child in self.descendants():
            with contextlib.suppress(psutil.Error):
                if " ".join(child.cmdline()).startswith("sqsd: master"):
                    found.add(child.pid)
        return found

    def worker_pids(self, queue: str | None = None, suffix: str | None = None) -> set[int]:
        return {w.pid for w in self.workers()
                if (queue is None or w.queue == queue) and (suffix is None or w.suffix == suffix)}

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # control socket

    def ctl(self, cmd: str, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
        """One request on the control socket (newline-delimited JSON), one reply."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(self.socket_path))
            conn.sendall((json.dumps({"cmd": cmd, **args}) + "\n").encode())
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                reply += chunk
        return json.loads(reply)

    def status(self) -> dict[str, Any]:
        return self.ctl("status")

    def pings(self) -> bool:
        try:
            return bool(self.ctl("ping", timeout=1.0).get("ok"))
        except (OSError, ValueError):
            return False

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0,
                 what: str = "") -> Any:
        def check():
            if self.proc.poll() is not None and not self.killed:
                raise AssertionError(f"sqsd exited with {self.proc.returncode} while waiting "
                                     f"for {what or predicate}")
            return predicate()

        return wait_for(check, timeout=timeout, what=what)

    def running_workers_in_status(self) -> int:
        """How many workers status lists with a pid and past start-up (queues resolved)."""
        try:
            workers = self.status()["workers"]
        except (OSError, ValueError, KeyError):
            return 0
        return sum(1 for w in workers if w.get("pid") and w.get("state") not in STARTING)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the socket answers ping and every expected worker runs: its process
        has a worker title and status shows it with a pid, past start-up."""
        self.wait_for(
            lambda: self.pings()
            and len(self.workers()) == self.expected_workers
            and self.running_workers_in_status() == self.expected_workers,
            timeout=timeout,
            what=f"ping and {self.expected_workers} running workers",
        )

    # stopping

    def terminate(self, timeout: float | None = None) -> int:
        """SIGTERM the master and wait for it; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout or self.graceful_timeout + 5)

    def kill_master(self) -> None:
        self.killed = True
        self.master.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=5)

    def alive_processes(self) -> list:
        procs = [self.master, *self.seen.values()]
        return [p for p in procs if alive(p)]

    def shut_down(self) -> list[str]:
        """Teardown: stop the daemon, then return what is wrong (empty when clean)."""
        problems = []
        if self.proc.poll() is None:
            try:
                code = self.terminate()
                if code != 0:
                    problems.append(f"sqsd exited with {code} after SIGTERM")
            except subprocess.TimeoutExpired:
                problems.append("sqsd did not stop within graceful_timeout + 5 s of SIGTERM")
        self._sampling.set()
        self._sampler.join()
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not self.alive_processes(), timeout=3)
        leftovers = self.alive_processes()
        if leftovers:
            problems.append("processes still alive after the master exited: "
                            + ", ".join(describe(p) for p in leftovers))
            for proc in leftovers:
                with contextlib.suppress(Exception):
                    proc.kill()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return problems


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
        sections: dict[str, dict[str, Any]] = {
            "sqsd": {
                "imports": imports if imports is not None else ["tests.receivers.basic"],
                "socket": str(self.socket_path),
                "queue_prefix": self.prefix,
                "region": "us-east-1",
                "endpoint_url": self.endpoint,
                "create_queues": True,
                "log_format": "json",
                "failed_log": str(self.failed_log),
                **(sqsd or {}),
            },
            "defaults": {**DEFAULTS, **(defaults or {})},
        }
        for name, options in queues.items():
            sections[f"queues.{json.dumps(name)}"] = options
        path.write_text(toml_document(sections))
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
