"""A newcomer's path, run as written: docs/getting-started.md and the README's `make demo` on
a fresh `git clone` of this repository, with nothing from PyPI but sqsd's dependencies.

Slow (two fresh venvs, about 3 minutes), so `make test` skips it and `make fresh-clone-test`
(called by .ci/run) runs it: ``SQSD_FRESH_CLONE=1``. pip's own cache keeps the downloads
local after the first run. It clones the committed HEAD, so commit before running it.

The ```sh blocks of getting-started.md run verbatim, in order, each in `bash -e`. What a
person's terminal carries from one block to the next (the `quickstart` directory and the
activated venv) is set up again before each block; the one `git clone` URL is replaced by
this repository's path, the network being off limits. The daemon's block (`sqsd run`)
runs in the background, as in the guide's first terminal, and stops with Ctrl-C (SIGINT
to its process group). The files the guide says to save are saved from its blocks.

The README's `make test` is what CI itself runs on a fresh clone; its other command
blocks are production examples (/etc, AWS) and are covered by docs/operations.md's test.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, wait_for

pytestmark = pytest.mark.skipif(
    not os.environ.get("SQSD_FRESH_CLONE"),
    reason="slow: run by `make fresh-clone-test` (SQSD_FRESH_CLONE=1)",
)

GUIDE = REPO / "docs" / "getting-started.md"
CLONE_URL = "https://github.com/sqsd/sqsd.git"
FILE_COMMENT = re.compile(r"#\s*([\w-]+\.(?:py|toml))\b")


def fenced_blocks(path: Path) -> list[tuple[str, str]]:
    """``(info, text)`` of every fenced block, in order."""
    found, info, lines = [], None, []
    for line in path.read_text().splitlines():
        if info is None and line.startswith("```"):
            info, lines = line[3:].strip(), []
        elif info is not None and line.strip() == "```":
            found.append((info, "\n".join(lines) + "\n"))
            info = None
        elif info is not None:
            lines.append(line)
    return found


def newcomer_env(home: Path) -> dict[str, str]:
    """A login shell's environment: no dev venv, no sqsd or AWS settings, no PYTHONPATH."""
    dev_bin = str(Path(sys.executable).parent)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SQSD_", "AWS_", "PYTEST_", "VIRTUAL_ENV", "PYTHON"))
    }
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != dev_bin)
    env["HOME"] = os.environ.get("HOME", str(home))  # keeps pip's cache
    return env


class Terminal:
    """Runs blocks as a person would type them, in ``cwd`` with the venv activated."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root = root
        self.env = env
        self.cwd = root
        self.venv: Path | None = None

    def script(self, block: str) -> str:
        setup = f"cd {shlex.quote(str(self.cwd))}\n"
        if self.venv is not None:
            setup += f". {shlex.quote(str(self.venv / 'bin' / 'activate'))}\n"
        return setup + block

    def run(self, block: str, timeout: float = 600) -> str:
        result = subprocess.run(
            ["bash", "-e", "-c", self.script(block)],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )
        assert result.returncode == 0, f"{block}\nexit {result.returncode}\n{result.stderr}"
        return result.stdout

    def start(self, block: str, log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            return subprocess.Popen(
                ["bash", "-e", "-c", self.script(block)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )


def ctrl_c(process: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """What Ctrl-C does: SIGINT to the whole foreground process group, then wait."""
    os.killpg(process.pid, signal.SIGINT)
    return process.wait(timeout=timeout)


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started in the background; whatever a test leaves running is killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("newcomer")


def test_getting_started_runs_as_written(workspace, background):
    env = newcomer_env(workspace)
    terminal = Terminal(workspace, env)
    blocks = fenced_blocks(GUIDE)
    install, *rest = [text for info, text in blocks if info == "sh"]
    assert CLONE_URL in install, "getting-started's install block no longer clones"
    started = time.monotonic()
    # git would name the directory after the URL's last part: sqsd
    terminal.run(install.replace(CLONE_URL, f"{shlex.quote(str(REPO))} sqsd"))
    install_seconds = time.monotonic() - started
    quickstart = workspace / "quickstart"
    terminal.cwd, terminal.venv = quickstart, quickstart / ".venv"
    installed = terminal.run("pip list --format=freeze").split()
    print(f"getting-started install: {install_seconds:.0f}s, {len(installed)} packages")

    # The files of steps 2, 3, 5 and 7, saved under the names their first line gives.
    for info, text in blocks:
        if info.split()[:1] in (["python"], ["toml"]):
            match = FILE_COMMENT.match(text.lstrip())
            if match:
                (quickstart / match.group(1)).write_text(text)
    for name in ("receivers.py", "sqsd.toml", "send.py", "test_receivers.py"):
        assert (quickstart / name).exists(), f"getting-started no longer saves {name}"

    [run_block] = [b for b in rest if b.lstrip().startswith("sqsd run")]
    log = workspace / "daemon.log"
    daemon = terminal.start(run_block, log)
    background.append(daemon)
    # A relative socket (the guide's "sqsd.sock") is relative to the daemon's directory.
    guide_config = tomllib.loads((quickstart / "sqsd.toml").read_text())
    socket_path = quickstart / guide_config["sqsd"]["socket"]
    wait_for(lambda: "worker started" in log.read_text() and os.path.exists(socket_path)
             or daemon.poll() is not None, timeout=60, what="the daemon to start")
    assert daemon.poll() is None, log.read_text()

    outputs = {}
    for block in rest[rest.index(run_block) + 1:]:
        outputs[block] = terminal.run(block)
    status = next(out for block, out in outputs.items() if " status" in block)
    assert re.search(r"^greetings\s+\d+\s+\w+", status, re.M), status
    assert any("1 passed" in out for out in outputs.values()), outputs
    for line in ("hello, world", "2 + 3 = 5", "hello, from sqsd.send"):
        wait_for(lambda line=line: line in log.read_text(), timeout=30, what=line)

    assert ctrl_c(daemon) == 0, log.read_text()[-2000:]
    assert "master stopped" in log.read_text()
    assert not os.path.exists(socket_path)


def test_readme_make_demo_runs_and_its_next_steps_work(workspace, background):
    clone = workspace / "sqsd"
    if not (clone / ".git").exists():  # run alone: clone as the guide would have
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    readme = (clone / "README.md").read_text()
    assert re.search(r"^make demo\b", readme, re.M)
    env = newcomer_env(workspace)
    terminal = Terminal(clone, env)
    log = workspace / "demo.log"
    started = time.monotonic()
    demo = terminal.start("make demo", log)
    background.append(demo)
    wait_for(lambda: "try:" in log.read_text() or demo.poll() is not None,
             timeout=540, interval=0.5, what="make demo to print its next steps")
    ready_seconds = time.monotonic() - started
    text = log.read_text()
    assert demo.poll() is None, text[-3000:]
    head = text[: text.index("demo: starting sqsd")]
    assert "Setting up .venv" in head, head  # the silent minute now says what it does
    print(f"make demo on a fresh clone: next steps printed after {ready_seconds:.0f}s")

    after = text[text.index("try:"):].splitlines()[1:4]
    commands = [line.split("  #")[0].strip() for line in after]
    assert "status" in commands[0] and "send" in commands[1] and " wait" in commands[2]
    status = terminal.run(commands[0], timeout=60)
    assert "greetings" in status
    terminal.run(commands[1], timeout=60)
    wait_for(lambda: "greeting received: hello again" in log.read_text(), timeout=30,
             what="the demo to handle the sent greeting")
    terminal.run(commands[2], timeout=90)

    ctrl_c(demo)  # make itself dies of the SIGINT; the demo stops sqsd gracefully
    text = log.read_text()
    assert "master stopped" in text and "code=0" in text.split("master stopped")[-1], text[-2000:]
