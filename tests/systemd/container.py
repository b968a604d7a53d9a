"""A Debian bookworm container booted with ``systemd-nspawn --boot``, for ``make systemd-test``.

The container's file system is an overlay of three layers:

- ``root-KEY``: ``debootstrap --variant=minbase bookworm`` with systemd, dbus, python3 and
  procps, from the Debian mirror apt is configured with (about 80 s);
- ``venv-KEY``: /opt/sqsd/venv, a venv of the container's python3 holding the checkout's
  dependencies from PyPI (about 60 s);
- this run's own layer: the checkout installed into that venv, the shipped units, the
  configuration, the users. Thrown away when the run ends.

The first two are cached in /var/cache/sqsd-systemd-test (``SQSD_SYSTEMD_CACHE``), outside
the checkout, each under a hash of what it installs: a changed dependency builds a new venv
layer, anything else reuses both. Without a systemd on the host, nspawn runs with
``--register=no --keep-unit``; commands run inside with ``nsenter`` into the container's
PID 1.

Also a script: ``container.py test [PYTEST ARGS]`` (``make systemd-test``) prints one line
and exits 0 when the suite cannot run here (not root, no systemd-nspawn, ...), else builds
or reuses the cached layers and runs the suite; ``why-not`` and ``prepare`` do one half.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Distributions this checkout builds itself (clients/python); never installed from PyPI.
OWN_DISTRIBUTIONS = ("sqsd-client",)
CACHE = Path(os.environ.get("SQSD_SYSTEMD_CACHE", "/var/cache/sqsd-systemd-test"))
SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "procps")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
VENV = "/opt/sqsd/venv"
# Bump when the way a layer is built changes, so that no stale layer is reused.
LAYER_FORMAT = 1
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap"),
         ("nsenter", "util-linux"))


def log(message: str) -> None:
    print(f"systemd-test: {message}", file=sys.stderr, flush=True)


def which(tool: str) -> str | None:
    return shutil.which(tool, path=f"{os.environ.get('PATH', '')}:{PATH}")


def why_not() -> str:
    """Why the suite cannot run on this machine, or "" when it can."""
    if sys.platform != "linux":
        return f"needs Linux (systemd-nspawn), this is {sys.platform}"
    if os.geteuid() != 0:
        return "needs root (debootstrap and systemd-nspawn)"
    for tool, package in TOOLS:
        if which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no cgroup file system at /sys/fs/cgroup (a systemd container needs one)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        subprocess.run(["modprobe", "overlay"], capture_output=True)
        if "overlay" not in Path("/proc/filesystems").read_text():
            return "the kernel has no overlay file system"
    return ""


def digest(what: object) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def debian_mirror() -> str:
    """The Debian mirror apt uses for the main archive (deb822 or one-line sources)."""
    if os.environ.get("SQSD_SYSTEMD_MIRROR"):
        return os.environ["SQSD_SYSTEMD_MIRROR"]
    sources = Path("/etc/apt/sources.list.d")
    texts = [p.read_text() for p in sorted(sources.glob("*.sources"))] if sources.is_dir() else []
    for text in texts:
        for stanza in text.split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            suites = fields.get("Suites", "").split()
            if "deb" in fields.get("Types", "").split() and any(
                s in suites for s in (SUITE, "stable")
            ):
                return fields["URIs"].split()[0]
    lists = [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]
    for path in lists:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = [w for w in line.split() if not w.startswith("[")]
                if len(words) >= 3 and words[0] == "deb" and words[2] in (SUITE, "stable"):
                    return words[1]
    return DEFAULT_MIRROR


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """One builder at a time (another checkout may run the suite at the same moment)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("check", True)
    return subprocess.run(cmd, **kwargs)


def nspawn_host_args() -> list[str]:
    """Without systemd on the host there is no machined to register with and no unit to
    create: keep the container in our own cgroup."""
    return [] if Path("/run/systemd/system").is_dir() else ["--register=no", "--keep-unit"]


def mounted(path: Path) -> bool:
    text = Path("/proc/self/mountinfo").read_text()
    return any(line.split()[4] == str(path) for line in text.splitlines())


class Overlay:
    """``lowers`` (top first) with a writable ``upper``, mounted at ``merged``."""

    def __init__(self, base: Path, lowers: list[Path]):
        self.base = base
        self.upper, self.work, self.merged = base / "upper", base / "work", base / "root"
        for path in (self.upper, self.work, self.merged):
            path.mkdir(parents=True, exist_ok=True)
        options = (f"lowerdir={':'.join(map(str, lowers))},upperdir={self.upper},"
                   f"workdir={self.work}")
        run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.merged)])

    def unmount(self) -> None:
        if mounted(self.merged):
            run(["umount", str(self.merged)], check=False)
            if mounted(self.merged):
                run(["umount", "-l", str(self.merged)], check=False)


def host_ca_bundle() -> str:
    """The CA certificates this host trusts for HTTPS (pip's, when configured): PyPI may
    be reached through a proxy that only they vouch for."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("REQUESTS_CA_BUNDLE"),
                      os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return candidate
    return ""


def nspawn_run(root: Path, script: str, *, network: bool) -> None:
    """Run a shell script in ``root`` (not booted): for building and provisioning. With
    ``network``, the host's network, CA certificates and proxy settings."""
    cmd = ["systemd-nspawn", "--quiet", *nspawn_host_args(), "--directory", str(root),
           "--pipe", "--setenv=PATH=" + PATH, "--setenv=LANG=C.UTF-8"]
    if network:
        bundle = host_ca_bundle()
        if bundle:
            cmd += [f"--bind-ro={bundle}:/run/host-ca-certificates.crt",
                    "--setenv=PIP_CERT=/run/host-ca-certificates.crt"]
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
                     "no_proxy", "PIP_INDEX_URL"):
            if os.environ.get(name):
                cmd.append(f"--setenv={name}={os.environ[name]}")
    else:
        cmd.append("--private-network")
    result = subprocess.run([*cmd, "/bin/sh", "-euc", script], stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    # nspawn's complaint when the host's /run is not a tmpfs: harmless, and not ours.
    for line in result.stderr.splitlines():
        if not line.startswith("Attempted to remove disk file system"):
            print(line, file=sys.stderr)
    result.check_returncode()


# --- the cached layers ------------------------------------------------------------------------


def root_layer() -> Path:
    key = digest({"suite": SUITE, "variant": "minbase", "packages": PACKAGES,
                  "format": LAYER_FORMAT})
    path = CACHE / f"root-{key}"
    with cache_lock():
        if not path.is_dir():
            building = CACHE / f"building-root-{key}"
            shutil.rmtree(building, ignore_errors=True)
            mirror = debian_mirror()
            started = time.monotonic()
            log(f"building the container root (debootstrap {SUITE} from {mirror}) ...")
            with open(CACHE / f"root-{key}.log", "wb") as out:
                result = run(["debootstrap", "--variant=minbase",
                              f"--include={','.join(PACKAGES)}", SUITE, str(building), mirror],
                             stdout=out, stderr=subprocess.STDOUT, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"debootstrap failed (exit {result.returncode}); "
                                   f"see {CACHE / f'root-{key}.log'}")
            shutil.rmtree(building / "var/cache/apt/archives", ignore_errors=True)
            (building / "var/cache/apt/archives/partial").mkdir(parents=True)
            building.rename(path)
            log(f"container root built in {time.monotonic() - started:.0f} s: {path}")
        else:
            log(f"reusing the container root {path}")
    os.utime(path)
    return path


def project_requirements() -> list[str]:
    """What the checkout needs installed: its dependencies, the `local` extra (moto's server
    serves as the container's SQS endpoint) and its build backend."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    requirements = list(project["project"]["dependencies"])
    requirements += project["project"]["optional-dependencies"]["local"]
    requirements += project["build-system"]["requires"]
    # sqsd-client is built from this checkout (clients/python) with sqsd itself, never
    # fetched: PyPI may hold no such release, or another one.
    return sorted(r for r in requirements if not r.startswith(OWN_DISTRIBUTIONS))


def venv_layer(root: Path) -> Path:
    requirements = project_requirements()
    key = digest({"root": root.name, "requirements": requirements, "venv": VENV,
                  "format": LAYER_FORMAT})
    path = CACHE / f"venv-{key}"
    with cache_lock():
        if not path.is_dir():
            building = CACHE / f"building-venv-{key}"
            if building.exists():
                run(["umount", str(building / "root")], check=False, capture_output=True)
                shutil.rmtree(building)
            started = time.monotonic()
            log(f"building the venv layer ({len(requirements)} requirements from PyPI) ...")
            overlay = Overlay(building, [root])
            try:
                nspawn_run(overlay.merged, f"""
                    python3 -m venv {VENV}
                    {VENV}/bin/pip install --quiet --no-cache-dir --disable-pip-version-check \
                        {' '.join(shlex.quote(r) for r in requirements)}
                    chmod -R a+rX {VENV}
                """, network=True)
            finally:
                overlay.unmount()
            overlay.upper.rename(path)
            shutil.rmtree(building)
            log(f"venv layer built in {time.monotonic() - started:.0f} s: {path}")
        else:
            log(f"reusing the venv layer {path}")
    os.utime(path)
    return path


def prune(keep: set[Path], older_than_days: float = 14) -> None:
    """Remove cached layers that no run has used for a while (each use touches its layer)."""
    limit = time.time() - older_than_days * 86400
    for path in CACHE.glob("*-*"):
        if path.is_dir() and path not in keep and path.name.startswith(("root-", "venv-")) \
                and path.stat().st_mtime < limit:
            log(f"removing the unused layer {path}")
            shutil.rmtree(path, ignore_errors=True)


def layers() -> list[Path]:
    """The cached lower layers, top first: venv, root."""
    root = root_layer()
    venv = venv_layer(root)
    prune({root, venv})
    return [venv, root]


def clean_stale_runs() -> None:
    """Runs whose test process died (killed, power cut): stop their container, drop them."""
    for run_dir in CACHE.glob("run-*"):
        owner = run_dir.name.removeprefix("run-")
        if owner.isdigit() and Path(f"/proc/{owner}").exists():
            continue
        with contextlib.suppress(OSError, ValueError):
            nspawn_pid = int((run_dir / "nspawn.pid").read_text())
            if str(run_dir) in Path(f"/proc/{nspawn_pid}/cmdline").read_text():
                os.kill(nspawn_pid, signal.SIGKILL)
                time.sleep(1)
        run(["umount", "-l", str(run_dir / "root")], check=False, capture_output=True)
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "why-not":
        reason = why_not()
        if reason:
            print(reason)
    elif command in ("prepare", "test"):
        if command == "test" and why_not():
            print(f"systemd-test: skipped: {why_not()}")
            sys.exit(0)
        clean_stale_runs()
        started = time.monotonic()
        layers()
        log(f"layers ready in {time.monotonic() - started:.1f} s")
        if command == "test":
            # The layers are built: the suite (and its per-test timeouts) only reuses them.
            os.chdir(REPO)
            os.execve(sys.executable, [
                sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                "tests/systemd", *sys.argv[2:],
            ], {**os.environ, "SQSD_SYSTEMD_TEST": "1"})
    else:
        sys.exit(f"usage: {sys.argv[0]} why-not | prepare | test [PYTEST ARGS]")
