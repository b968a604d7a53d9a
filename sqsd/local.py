"""The embedded local SQS endpoint (``--local`` / ``endpoint_url = "local"``): moto's server
as a child process on a free loopback port, for demos and development without AWS."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from sqsd.config import Settings
from sqsd.errors import ConfigError
from sqsd.notify import set_parent_death_signal


class LocalEndpoint:
    """A running moto server; ``url`` is its endpoint."""

    def __init__(self, process: subprocess.Popen[bytes], url: str):
        self.process = process
        self.url = url

    @classmethod
    def start(
        cls, timeout: float = 30.0, log_path: str | os.PathLike[str] | None = None
    ) -> LocalEndpoint:
        """Start moto's server and return once it answers; its output goes to ``log_path``
        (default: nowhere) and shows in the error when it fails to start."""
        try:
            import moto.server  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "the local endpoint needs moto's server: pip install 'sqsd[local]'"
            ) from None
        port = free_port()
        with contextlib.ExitStack() as files:
            log = files.enter_context(open(log_path, "wb")) if log_path else subprocess.DEVNULL
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C must stop the workers first, then us
                preexec_fn=lambda: set_parent_death_signal(signal.SIGTERM),
            )
        url = f"http://127.0.0.1:{port}"
        endpoint = cls(process, url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                output = Path(log_path).read_text(errors="replace")[-2000:] if log_path else ""
                raise RuntimeError(f"moto server exited with {process.returncode}: {output}")
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                return endpoint
            except OSError:
                time.sleep(0.05)
        endpoint.stop()
        raise RuntimeError(f"moto server did not answer on {url} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process.returncode is not None:
            return
        try:
            self.process.terminate()
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        except ChildProcessError:
            pass  # already reaped by the master's waitpid loop


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment_for_children(url: str) -> None:
    """Workers and their handlers' producers find the endpoint through the environment."""
    os.environ["SQSD_LOCAL_ENDPOINT"] = url
    use_local_credentials()


def use_local_credentials() -> None:
    """The emulator accepts any credentials and region; set some when none are."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "local")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def resolve(settings: Settings, endpoint_url: str, *, forced: bool = False) -> Settings:
    """The settings to run with: ``endpoint_url = "local"`` (any endpoint with ``--local``,
    ``forced``) becomes the running embedded endpoint's URL, ``endpoint_url`` ("" when none
    runs), and missing queues are created. ``sqsd run`` calls it at start and the master on
    every reload, so re-reading an unchanged file changes nothing."""
    if not (forced or settings.endpoint_url == "local"):
        return settings
    if not endpoint_url:
        raise ConfigError(
            f'{settings.path}: [sqsd] endpoint_url: "local" needs a restart '
            "(the daemon started without its local endpoint)"
        )
    return replace(settings, endpoint_url=endpoint_url, create_queues=True)
