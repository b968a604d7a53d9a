"""sqsd under systemd: sd_notify, socket activation, reload by SIGHUP, and the unit files.

The tests play systemd's part themselves (a notify datagram socket, a listening socket
passed as fd 3), so they need no running systemd; only the unit checks call
``systemd-analyze``, and skip when it is missing.
"""

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
from conftest import REPO, Daemon, wait_for

from sqsd.config import QueueSettings

BASIC_RECEIVER = "tests.receivers.basic:handle"
UNITS = REPO / "systemd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS",
               "LISTEN_FDNAMES")

# Becomes the daemon: fd argv[1] moves to 3 and LISTEN_PID names this very process, which
# exec keeps, as systemd does for the service it activates.
ACTIVATE = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="sqsd.socket")
os.execv(sys.executable, [sys.executable, "-m", "sqsd", "run", "-c", sys.argv[2]])
"""


@pytest.fixture(autouse=True)
def not_under_systemd(monkeypatch):
    """Daemons inherit the test's environment: drop anything a real systemd may have set."""
    for name in SYSTEMD_ENV:
        monkeypatch.delenv(name, raising=False)


class NotifySocket:
    """systemd's end of sd_notify: a datagram socket that collects what the daemon says."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def received(self) -> list[str]:
        """Every message so far, one entry per line (READY=1, STATUS=..., ...)."""
        while True:
            try:
                datagram = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.extend(datagram.decode().splitlines())

    def count(self, message: str) -> int:
        return self.received().count(message)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(harness):
    listener = NotifySocket(harness.socket_dir / "notify")
    yield listener
    listener.close()


def systemd_env(notify: NotifySocket) -> dict[str, str]:
    # No WATCHDOG_PID: sqsd's pid is unknown until it starts, and unset means "you".
    return {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"}


# --- sd_notify ------------------------------------------------------------------------------


def test_notify_says_ready_then_status_and_watchdog_then_stopping(harness, notify):
    daemon = harness.start(env=systemd_env(notify))

    wait_for(lambda: notify.count("WATCHDOG=1") >= 2, timeout=5, what="two WATCHDOG=1")
    assert daemon.terminate() == 0

    messages = notify.received()
    assert messages[0] == "READY=1", messages
    assert messages.count("READY=1") == 1
    statuses = [m for m in messages if m.startswith("STATUS=")]
    assert statuses and re.match(r"STATUS=1 workers? running", statuses[0]), messages
    stopping = messages.index("STOPPING=1")
    assert messages[:stopping].count("WATCHDOG=1") >= 2, messages
    assert messages.index(statuses[0]) < stopping
    assert daemon.alive_processes() == []


def test_sighup_starts_an_added_queue_and_a_broken_config_keeps_the_workers(harness, notify):
    daemon = harness.start(env=systemd_env(notify))
    before = {w["pid"] for w in daemon.status()["workers"]}

    harness.write_config({"basic": {"receiver": BASIC_RECEIVER},
                          "other": {"receiver": BASIC_RECEIVER}})
    daemon.proc.send_signal(signal.SIGHUP)

    def running(queue):
        return [w["pid"] for w in daemon.status()["workers"] if w["queue"] == queue and w["pid"]]

    [other] = daemon.wait_for(lambda: running("other"), what="a worker for the added queue")
    assert set(running("basic")) == before

    harness.write_config({"basic": {"receiver": BASIC_RECEIVER},
                          "other": {"receiver": BASIC_RECEIVER, "batch_size": 11}})
    daemon.proc.send_signal(signal.SIGHUP)

    [error] = daemon.wait_for(lambda: log_lines(daemon, "batch_size"), what="the reload error")
    assert error["level"] == "error"
    assert error["event"].startswith("reload failed")
    assert error["error"] == (f"{harness.config_path}: [queues.other] batch_size: "
                              "expected an integer from 1 to 10, got 11")
    assert "Traceback" not in daemon.log_text()
    workers = {(w["queue"], w["pid"]) for w in daemon.status()["workers"]}
    assert workers == {("basic", pid) for pid in before} | {("other", other)}
    assert daemon.worker_pids() == before | {other}
    assert len(log_lines(daemon, "batch_size")) == 1
    # Each reload, good or bad, is RELOADING=1 (with the time, as systemd asks) then READY=1.
    wait_for(lambda: notify.count("READY=1") == 3, timeout=5, what="READY=1 after the reloads")
    states = [m.partition("=")[0] for m in notify.received()
              if not m.startswith(("STATUS=", "WATCHDOG="))]
    assert states == ["READY", *["RELOADING", "MONOTONIC_USEC", "READY"] * 2]


def log_lines(daemon: Daemon, text: str) -> list[dict]:
    """The daemon's JSON log records whose line mentions ``text``."""
    found = []
    for line in daemon.log_text().splitlines():
        if text in line:
            try:
                found.append(json.loads(line))
            except ValueError:
                found.append({"level": "?", "event": line, "error": line})
    return found


# --- socket activation -----------------------------------------------------------------------


class ActivatedDaemon(Daemon):
    """``sqsd run`` started the way systemd starts it from sqsd.socket: the listening socket
    is fd 3 and LISTEN_PID/LISTEN_FDS name it. The socket file belongs to the test."""

    def __init__(self, harness, listener: socket.socket):
        self.config_path = harness.config_path
        self.log_path = harness.tmp_path / f"sqsd-activated-{len(harness.daemons) + 1}.log"
        self.socket_path = Path(listener.getsockname())
        self.expected_workers = 1
        self.graceful_timeout = 10
        self.killed = False
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", ACTIVATE, str(listener.fileno()), str(self.config_path)],
                cwd=REPO, env=harness.daemon_env(), stdout=log, stderr=log,
                pass_fds=[listener.fileno()],
            )
        self.master = psutil.Process(self.proc.pid)
        self.seen = {}
        self._sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def shut_down(self) -> list[str]:
        problems = super().shut_down()
        # The file is the test's (systemd's), so the harness must not find it left over.
        self.socket_path.unlink(missing_ok=True)
        return problems


@pytest.fixture
def activation_socket(harness):
    """What sqsd.socket holds: a listening Unix socket at the configured path."""
    path = harness.socket_dir / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    yield listener
    listener.close()
    path.unlink(missing_ok=True)


def start_activated(harness, listener: socket.socket) -> ActivatedDaemon:
    daemon = ActivatedDaemon(harness, listener)
    harness.daemons.append(daemon)
    daemon.wait_ready()
    return daemon


def test_socket_activation_serves_the_inherited_socket_and_never_unlinks_it(
    harness, activation_socket
):
    path = Path(activation_socket.getsockname())
    harness.write_config({"basic": {"receiver": BASIC_RECEIVER}}, sqsd={"socket": str(path)})
    inode = os.fstat(activation_socket.fileno()).st_ino

    daemon = start_activated(harness, activation_socket)

    assert daemon.ctl("ping")["pid"] == daemon.pid
    assert holds_socket(daemon.pid, inode)
    assert not any(holds_socket(pid, inode) for pid in daemon.worker_pids())
    assert daemon.terminate() == 0
    assert daemon.alive_processes() == []
    assert stat.S_ISSOCK(path.lstat().st_mode), "sqsd removed the socket file systemd owns"


def test_requests_sent_while_the_daemon_is_down_are_answered_by_the_next_one(
    harness, activation_socket
):
    path = Path(activation_socket.getsockname())
    harness.write_config({"basic": {"receiver": BASIC_RECEIVER}}, sqsd={"socket": str(path)})
    first = start_activated(harness, activation_socket)
    assert first.terminate() == 0

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(20)
        client.connect(str(path))  # queued in the kernel: nobody accepts yet
        client.sendall(b'{"cmd": "ping"}\n')
        second = start_activated(harness, activation_socket)
        reply = json.loads(client.makefile("rb").readline())

    assert reply["ok"] is True
    assert reply["pid"] == second.pid != first.pid


def holds_socket(pid: int, inode: int) -> bool:
    """True when process ``pid`` has the socket with ``inode`` among its descriptors."""
    fd_dir = Path(f"/proc/{pid}/fd")
    target = f"socket:[{inode}]"
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd) == target:
                return True
        except FileNotFoundError:
            continue
    return False


# --- the unit files ----------------------------------------------------------------------------


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}}."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_units_agree_with_the_daemon_defaults():
    from sqsd import config
    from sqsd_client import protocol

    service = read_unit(UNITS / "sqsd.service")["Service"]
    socket_unit = read_unit(UNITS / "sqsd.socket")["Socket"]
    [listen] = socket_unit["ListenStream"]
    assert listen == config.DEFAULT_SOCKET == protocol.DEFAULT_SOCKET
    [exec_start] = service["ExecStart"]
    assert exec_start.split()[1:] == ["run", "-c", config.DEFAULT_CONFIG_PATH]
    [stop_timeout] = service["TimeoutStopSec"]
    assert float(stop_timeout) > QueueSettings.graceful_timeout
    template = read_unit(UNITS / "sqsd@.service")["Service"]
    assert template["ExecStart"] == [exec_start.replace("sqsd.toml", "%i.toml")]
    assert read_unit(UNITS / "sqsd@.socket")["Socket"]["ListenStream"] == ["/run/sqsd/%i.sock"]


# Directories systemd creates for a service and, on start, re-owns recursively whenever the
# top one's owner differs (so whatever a socket unit created inside changes owner).
EXEC_DIRECTORIES = {"RuntimeDirectory": "/run", "StateDirectory": "/var/lib",
                    "CacheDirectory": "/var/cache", "LogsDirectory": "/var/log",
                    "ConfigurationDirectory": "/etc"}


def config_lines(path: Path) -> list[list[str]]:
    """A tmpfiles.d or sysusers.d file as lists of fields (quoted fields kept whole)."""
    import shlex

    return [shlex.split(line) for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("service_name, socket_name", [("sqsd.service", "sqsd.socket"),
                                                        ("sqsd@.service", "sqsd@.socket")])
def test_the_socket_directory_belongs_to_the_daemon_and_is_never_re_owned(service_name,
                                                                          socket_name):
    """Issue 17, bug 1: with RuntimeDirectory=sqsd, the first start after a boot re-owned
    /run/sqsd recursively, socket included (sqsd:sqsd), locking sqsd-clients out. The
    directory comes from tmpfiles.d instead, owned by the daemon's user, who creates files
    next to the socket (the attempts table), and the service may write there."""
    service = read_unit(UNITS / service_name)["Service"]
    socket_unit = read_unit(UNITS / socket_name)["Socket"]
    [listen] = socket_unit["ListenStream"]
    directory = os.path.dirname(listen)
    for key, base in EXEC_DIRECTORIES.items():
        for value in service.get(key, []):
            for name in value.split():
                owned = f"{base}/{name.partition(':')[0]}"
                assert not f"{directory}/".startswith(f"{owned}/"), (
                    f"{service_name}: {key}={name} re-owns {owned}, which holds {listen}")
    assert directory in " ".join(service["ReadWritePaths"]).split()
    [user], [group] = service["User"], service["Group"]
    assert ["d", directory, "0755", user, group, "-"] in config_lines(
        UNITS / "sqsd-tmpfiles.conf")
    sysusers = {(line[0], line[1]) for line in config_lines(UNITS / "sqsd-sysusers.conf")}
    [clients] = socket_unit["SocketGroup"]
    assert {("u", user), ("g", clients)} <= sysusers
    assert socket_unit["SocketUser"] == [user]
    assert socket_unit["SocketMode"] == ["0660"]


@pytest.fixture
def unit_dir(tmp_path) -> Path:
    """The unit files with ExecStart pointing at this venv's sqsd (verify checks it exists)."""
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze is not installed")
    sqsd_script = Path(sys.executable).parent / "sqsd"
    executable = str(sqsd_script if sqsd_script.exists() else shutil.which("true"))
    for unit in UNITS.iterdir():
        text = unit.read_text()
        text = text.replace("ExecStart=/usr/local/bin/sqsd ", f"ExecStart={executable} ")
        (tmp_path / unit.name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("units", [("sqsd.service", "sqsd.socket"),
                                   ("sqsd@demo.service", "sqsd@demo.socket")])
def test_systemd_analyze_verify_accepts_the_units(unit_dir, units):
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *(f"./{u}" for u in units)],
        cwd=unit_dir, capture_output=True, text=True, timeout=60,
    )
    # Unknown keys and bad values are only warnings (exit 0): any output is a finding.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("unit", ["sqsd.service", "sqsd@demo.service"])
def test_systemd_analyze_security_rates_the_service_ok(unit_dir, unit):
    # Offline: judge the file alone, no running systemd needed (systemd 250 and later).
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--threshold=20", f"./{unit}"],
        cwd=unit_dir, capture_output=True, text=True, timeout=60,
    )
    if "--offline" in result.stderr:
        pytest.skip(f"systemd-analyze security has no --offline: {result.stderr.strip()}")
    # 20 is an exposure of 2.0 ("OK" in systemd's scale ends at 4.9).
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "Overall exposure level" in result.stdout
