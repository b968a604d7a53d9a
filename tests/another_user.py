"""Running code as another local user (uid 65534, "nobody"), from any checkout.

The checkout may sit where that user cannot read it (a clone in a 0700 home directory), and
so may the venv's interpreter. So what such a process needs is copied into a fresh
directory it can read, and it runs with an interpreter it may execute; without one, or
without root to switch users, the test is skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534
SEARCH_PATH = "/usr/local/bin:/usr/bin:/bin"
IMPORTED_BY_SQSD = ("structlog",)  # third-party packages `import sqsd` loads (pure Python)


def python_for(uid: int) -> str | None:
    """An interpreter that user ``uid`` may run (the venv's may live under /root)."""
    candidates = [sys.executable, shutil.which("python3", path=SEARCH_PATH)]
    for candidate in dict.fromkeys(c for c in candidates if c):
        try:
            probe = subprocess.run([candidate, "-c", "import tomllib"], user=uid, group=uid,
                                   extra_groups=[], cwd="/", capture_output=True, timeout=30)
        except PermissionError:
            continue
        if probe.returncode == 0:
            return candidate
    return None


class OtherUser:
    """Runs Python as ``uid`` with a readable copy of sqsd and sqsd_client on its path."""

    def __init__(self, uid: int, python: str, tree: Path) -> None:
        self.uid = uid
        self.python = python
        self.tree = tree  # mode 0755: copies of what the user's processes import or read

    def copy(self, path: Path, name: str | None = None) -> Path:
        """A copy of ``path`` (a file) that this user can read; returns where it is."""
        target = self.tree / (name or path.name)
        shutil.copyfile(path, target)
        target.chmod(0o644)
        return target

    def env(self, **extra: str) -> dict[str, str]:
        return {"PYTHONPATH": str(self.tree), "PATH": SEARCH_PATH, "HOME": "/nonexistent",
                "LANG": "C.UTF-8", **extra}

    def run(self, code: str, *args: str, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([self.python, "-c", code, *args], **self._as_user(env),
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, code: str, *args: str, env: dict[str, str] | None = None,
              **kwargs: Any) -> subprocess.Popen:
        return subprocess.Popen([self.python, "-c", code, *args], **self._as_user(env), **kwargs)

    def _as_user(self, env: dict[str, str] | None) -> dict[str, Any]:
        return {"user": self.uid, "group": self.uid, "extra_groups": [], "cwd": "/",
                "env": self.env(**(env or {}))}


def readable_tree() -> Path:
    """A new directory, readable by everyone, holding copies of sqsd and sqsd_client, and of
    the pure-Python packages `import sqsd` needs (the interpreter may have none of them)."""
    tree = Path(tempfile.mkdtemp(prefix="sqsd-other-user-"))
    tree.chmod(0o755)
    sources = {package: REPO / package for package in ("sqsd", "sqsd_client")}
    for package in IMPORTED_BY_SQSD:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations, package
        sources[package] = Path(next(iter(spec.submodule_search_locations)))
    for package, source in sources.items():
        shutil.copytree(source, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    for path in tree.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return tree


def other_user(uid: int = NOBODY):
    """Fixture body: an OtherUser for ``uid``, or a skip that says why there is none."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root to run a process as uid {uid}")
    python = python_for(uid)
    if python is None:
        pytest.skip(f"no Python interpreter that uid {uid} may run (tried the venv's and "
                    f"python3 on {SEARCH_PATH})")
    tree = readable_tree()
    try:
        yield OtherUser(uid, python, tree)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
