"""The booted container the suite checks, and what is installed in it.

Installed as docs/operations.md tells an operator: the shipped units copied to
/etc/systemd/system, sqsd-sysusers.conf and sqsd-tmpfiles.conf to /etc/sysusers.d and
/etc/tmpfiles.d, `systemd-sysusers`, the checkout into a venv under /opt, the
configuration in /etc/sqsd, `systemctl enable sqsd.socket sqsd.service`. The test's only
changes to the units are drop-ins (ExecStart, a short WatchdogSec and RestartSec, the SQS
endpoint: moto's server as its own unit). Users: `producer` (in sqsd-clients) and
`outsider` (not).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .container import PATH, REPO, VENV, Overlay, nspawn_host_args, nspawn_run

HERE = Path(__file__).resolve().parent
SQSD = f"{VENV}/bin/sqsd"
SQSCTL = f"{VENV}/bin/sqsctl"
PYTHON = f"{VENV}/bin/python"
TEST_DIR = "/opt/sqsd-test"
RECORDS = "/var/log/sqsd/records.jsonl"
WATCHDOG_SEC = 3
RESTART_SEC = 1
GRACEFUL_TIMEOUT = 10

SERVICE_DROP_IN = f"""\
# The test's only changes to the shipped unit.
[Unit]
Wants=moto-sqs.service
After=moto-sqs.service

[Service]
ExecStart=
ExecStart={SQSD} run -c /etc/sqsd/%i.toml
Environment=PYTHONPATH={TEST_DIR} AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
WatchdogSec={WATCHDOG_SEC}
RestartSec={RESTART_SEC}
"""

MOTO_UNIT = f"""\
[Unit]
Description=moto's SQS server: the test's SQS endpoint

[Service]
ExecStart={PYTHON} -m moto.server -H 127.0.0.1 -p 4566
ExecStartPost={PYTHON} {TEST_DIR}/sqs_tool.py wait

[Install]
WantedBy=multi-user.target
"""


def sqsd_config(queues: dict[str, dict[str, Any]], *, socket: str = "/run/sqsd/sqsd.sock",
                prefix: str = "", create_queues: bool = True,
                endpoint_url: str = "http://127.0.0.1:4566") -> str:
    """A configuration file; each queue is a table of keys with str or int values."""
    lines = [
        "[sqsd]",
        'imports = ["sqsd_systemd_receivers"]',
        f'socket = "{socket}"',
        f'queue_prefix = "{prefix}"',
        'region = "us-east-1"',
        f'endpoint_url = "{endpoint_url}"',
        f"create_queues = {'true' if create_queues else 'false'}",
        'log_format = "json"',
        "",
        "[defaults]",
        "visibility_timeout = 60",  # a message not given back stays in flight for a minute
        "wait_time_seconds = 1",
        "idle_sleep_max = 1",
        f"graceful_timeout = {GRACEFUL_TIMEOUT}",
    ]
    for name, options in queues.items():
        lines += ["", f"[queues.{name}]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
    return "\n".join(lines) + "\n"


BASE_QUEUES = {
    "basic": {"receiver": "sqsd_systemd_receivers:record"},
    "slow": {"receiver": "sqsd_systemd_receivers:slow"},
    "stray": {"receiver": "sqsd_systemd_receivers:stray"},
}
BASE_CONFIG = sqsd_config(BASE_QUEUES)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} "
                                 f"(last value: {value!r})")
        time.sleep(interval)


class Machine:
    """One container: its overlay, the nspawn process, and commands run inside."""

    def __init__(self, run_dir: Path, lowers: list[Path]):
        self.run_dir = run_dir
        self.name = f"sqsd-test-{os.getpid()}"
        self.overlay = Overlay(run_dir, lowers)
        self.root = self.overlay.merged
        self.nspawn: subprocess.Popen | None = None
        self.pid1 = 0
        self.boots = 0

    # --- host side ------------------------------------------------------------------------

    def install(self) -> None:
        """Everything an operator installs (docs/operations.md), plus the test's pieces."""
        src = self.root / "opt/sqsd/src"
        # sqsd and sqsd-client, as `pip install . ./clients/python` sees them (symbolic
        # links such as clients/python/sqsd_client are copied as what they point to).
        for name in ("pyproject.toml", "README.md", "LICENSE", "sqsd", "sqsd_client",
                     "clients"):
            path = REPO / name
            if path.is_dir():
                shutil.copytree(path, src / name, ignore=shutil.ignore_patterns(
                    "__pycache__", "*.pyc", "*.egg-info"))
            else:
                src.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, src / name)
        for name in ("sqsd.service", "sqsd.socket", "sqsd@.service", "sqsd@.socket"):
            self.write(f"/etc/systemd/system/{name}", (REPO / "systemd" / name).read_text())
        self.write("/etc/sysusers.d/sqsd.conf", (REPO / "systemd/sqsd-sysusers.conf").read_text())
        self.write("/etc/tmpfiles.d/sqsd.conf", (REPO / "systemd/sqsd-tmpfiles.conf").read_text())
        self.write("/etc/systemd/system/sqsd.service.d/test.conf",
                   SERVICE_DROP_IN.replace("%i.toml", "sqsd.toml"))
        self.write("/etc/systemd/system/sqsd@.service.d/test.conf", SERVICE_DROP_IN)
        self.write("/etc/systemd/system/moto-sqs.service", MOTO_UNIT)
        self.write(f"{TEST_DIR}/sqsd_systemd_receivers.py", (HERE / "receivers.py").read_text())
        self.write(f"{TEST_DIR}/sqs_tool.py", (HERE / "sqs_tool.py").read_text())
        self.write("/etc/sqsd/sqsd.toml", BASE_CONFIG)
        # Quieter, faster boots: nothing here needs a login prompt or daily apt runs.
        nspawn_run(self.root, f"""
            systemd-sysusers
            useradd --no-create-home --groups sqsd-clients producer
            useradd --no-create-home outsider
            {VENV}/bin/pip install --quiet --no-cache-dir --disable-pip-version-check \
                --no-deps --no-build-isolation --no-index /opt/sqsd/src/clients/python /opt/sqsd/src
            systemctl enable --quiet sqsd.socket sqsd.service moto-sqs.service
            systemctl mask --quiet console-getty.service apt-daily.timer \
                apt-daily-upgrade.timer e2scrub_all.timer
        """, network=False)

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        tmp.rename(target)

    def boot(self) -> float:
        """Boot the container; returns seconds until the boot finished, sqsd.service included."""
        self.boots += 1
        started = time.monotonic()
        log_path = self.run_dir / f"boot-{self.boots}.log"
        with open(log_path, "wb") as out:
            self.nspawn = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "--boot", *nspawn_host_args(), "--private-network",
                 "--directory", str(self.root), "--machine", self.name, "--console=read-only"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.run_dir / "nspawn.pid").write_text(str(self.nspawn.pid))
        self.pid1 = wait_for(self._find_pid1, 30, "the container's systemd to start")

        def booted():
            result = self.sh(["systemctl", "is-system-running", "--wait"], check=False,
                             timeout=90)
            # Too early, systemd has no bus yet, or has not yet marked the system as booted
            # by systemd (/run/systemd/system): systemctl then says "offline" at once.
            too_early = ("Failed to connect to bus" in result.stderr
                         or result.stdout.strip() == "offline")
            return None if too_early else result

        result = wait_for(booted, 30, "systemd's bus in the container")  # not there at once
        seconds = time.monotonic() - started
        if result.stdout.strip() not in ("running", "degraded"):
            raise AssertionError(f"boot did not finish: {result.stdout}{result.stderr}\n"
                                 + log_path.read_text(errors="replace")[-3000:])
        return seconds

    def _find_pid1(self) -> int:
        if self.nspawn is None or self.nspawn.poll() is not None:
            log_text = (self.run_dir / f"boot-{self.boots}.log").read_text(errors="replace")
            raise AssertionError(f"systemd-nspawn exited:\n{log_text[-3000:]}")
        for child in Path("/proc").iterdir():
            if not child.name.isdigit():
                continue
            try:
                stat = (child / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            if ppid == self.nspawn.pid and stat.split(" (", 1)[1].startswith("systemd)"):
                return int(child.name)
        return 0

    def poweroff(self) -> None:
        """Shut the container down cleanly (nspawn forwards SIGTERM as a poweroff request)."""
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        self.nspawn.send_signal(signal.SIGTERM)
        try:
            self.nspawn.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # Killing nspawn alone would leave the container's init running, orphaned: its
            # PID namespace ends only with its PID 1.
            if self.pid1:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid1, signal.SIGKILL)
            self.nspawn.kill()
            self.nspawn.wait()
        self.pid1 = 0

    def reboot(self) -> float:
        self.poweroff()
        return self.boot()

    def destroy(self) -> None:
        self.poweroff()
        self.overlay.unmount()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    # --- inside ---------------------------------------------------------------------------

    def sh(self, cmd: list[str] | str, *, user: str | None = None, check: bool = True,
           timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command inside (a string goes to sh -c), as root or as ``user``."""
        args = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if user is not None:
            args = ["runuser", "-u", user, "--", *args]
        full = ["nsenter", "--target", str(self.pid1), "--all", "--",
                "/usr/bin/env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", "HOME=/root", *args]
        result = subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def systemctl(self, *args: str, check: bool = True, timeout: float = 90):
        return self.sh(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, "--property=" + ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self, unit: str = "sqsd.service") -> int:
        return int(self.show(unit, "MainPID")["MainPID"])

    def alive(self, pid: int) -> bool:
        return self.sh(f"kill -0 {pid}", check=False).returncode == 0

    def sqsctl(self, *args: str, user: str | None = None, check: bool = True):
        return self.sh([SQSCTL, *args], user=user, check=check, timeout=30)

    def status(self, socket: str = "/run/sqsd/sqsd.sock") -> dict[str, Any]:
        return json.loads(self.sqsctl("--socket", socket, "--json", "status").stdout)

    def workers(self, socket: str = "/run/sqsd/sqsd.sock") -> dict[int, str]:
        """{pid: queue} of the workers that run (started, queue resolved)."""
        try:
            status = self.status(socket)
        except (AssertionError, ValueError):
            return {}
        return {w["pid"]: w["queue"] for w in status["workers"]
                if w.get("pid") and w.get("state") not in ("starting", None)}

    def wait_workers(self, count: int, socket: str = "/run/sqsd/sqsd.sock",
                     timeout: float = 30) -> dict[int, str]:
        return wait_for(lambda: (w := self.workers(socket)) and len(w) == count and w,
                        timeout, f"{count} running workers on {socket}", interval=0.3)

    def journal(self, unit: str = "sqsd.service", lines: int = 300) -> str:
        return self.sh(["journalctl", "--no-pager", "-o", "cat", "-n", str(lines),
                        "-u", unit]).stdout

    def records(self) -> list[dict[str, Any]]:
        text = self.sh(f"cat {RECORDS} 2>/dev/null || true").stdout
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def sqs(self, *args: str) -> str:
        return self.sh([PYTHON, f"{TEST_DIR}/sqs_tool.py", *args], timeout=30).stdout

    def counts(self, queue: str) -> dict[str, int]:
        return json.loads(self.sqs("counts", queue))

    def stat(self, path: str) -> str:
        """Owner, group, octal mode and type, e.g. "sqsd sqsd-clients 660 socket"."""
        return self.sh(["stat", "-c", "%U %G %a %F", path]).stdout.strip()

    def ensure_running(self, config: str = BASE_CONFIG) -> int:
        """sqsd.service up with ``config`` and all its workers running; returns MainPID."""
        if self.sh("cat /etc/sqsd/sqsd.toml").stdout != config:
            self.write("/etc/sqsd/sqsd.toml", config)
            if self.show("sqsd.service", "ActiveState")["ActiveState"] == "active":
                self.systemctl("restart", "sqsd.service")
        self.systemctl("reset-failed", "sqsd.service", check=False)
        self.systemctl("start", "sqsd.socket", "sqsd.service")
        self.wait_workers(config.count("[queues."))
        return self.main_pid()
