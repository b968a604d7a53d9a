"""The files shipped inside the package: the systemd units and the example configuration.

They live in ``sqsd/share/`` (``importlib.resources.files("sqsd") / "share"``): ``systemd/``
holds the units of the repository's ``systemd/`` directory, ``etc/`` the example
configuration and receivers of ``etc/``. ``install()`` copies the units where systemd reads
them (``sqsd install-units``).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

SYSTEMD_DIR = "/etc/systemd/system"
UNITS = ("sqsd.socket", "sqsd.service", "sqsd@.socket", "sqsd@.service")


def shared(*parts: str) -> Traversable:
    """A file shipped in ``sqsd/share``, e.g. ``shared("systemd", "sqsd.service")``."""
    path = files("sqsd") / "share"
    for part in parts:
        path = path / part
    return path


@dataclass(frozen=True)
class Installed:
    path: Path
    action: str  # "written", "unchanged", "replaced" or "differs" (kept, not forced)


def install(dest: str = SYSTEMD_DIR, force: bool = False) -> list[Installed]:
    """Copy the units into ``dest``; a file there with other content is kept unless ``force``.

    Nothing is written when any file differs and ``force`` is false, so a refused install
    leaves no mix of old and new units.
    """
    target = Path(dest)
    plan = []
    for name in UNITS:
        text = shared("systemd", name).read_text()
        path = target / name
        current = path.read_text() if path.exists() else None
        if current is None:
            action = "written"
        elif current == text:
            action = "unchanged"
        else:
            action = "replaced" if force else "differs"
        plan.append((Installed(path, action), text))
    if any(item.action == "differs" for item, _ in plan):
        return [item for item, _ in plan]
    target.mkdir(parents=True, exist_ok=True)
    for item, text in plan:
        if item.action in ("written", "replaced"):
            tmp = item.path.with_name(f".{item.path.name}.tmp")
            tmp.write_text(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, item.path)
    return [item for item, _ in plan]


def sqsd_executable() -> str:
    """The ``sqsd`` script of this installation, for the unit's ``ExecStart``."""
    beside = Path(sys.executable).parent / "sqsd"  # the venv's bin/, not the resolved python
    if beside.is_file():
        return str(beside)
    return shutil.which("sqsd") or str(beside)


def exec_start_dropin(config_path: str) -> str:
    """The drop-in that points ``sqsd.service`` at this installation."""
    return f"[Service]\nExecStart=\nExecStart={sqsd_executable()} run -c {config_path}\n"
