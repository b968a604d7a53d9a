"""The distributions as users get them: wheels built from this tree, installed into fresh
venvs, and docs/operations.md's host layout run step by step.

- sqsd-client's wheel installs alone, from nothing but itself (no dependencies), and
  `sqsd_client.wake("x")` answers False when no daemon is there.
- sqsd's wheel, in a venv made from the system interpreter as operations.md says: the
  commands, the shipped units and example configuration, `sqsd install-units`, the ExecStart
  drop-in that `systemd-analyze verify` needs, and an application package imported by the
  `sqsd check` of an unprivileged user (`nobody` standing in for `sqsd`).

operations.md's blocks run as written, inside a scratch root: /opt, /srv, /etc, /var and
/run are prefixed with it, `runuser -u sqsd` becomes `runuser -u nobody`, `systemctl` is not
called and `install-units` gets `--dest` (its default is /etc/systemd/system). Step 1's
directories come from the shipped sqsd-tmpfiles.conf, owned by `nobody`.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import pytest
from conftest import REPO

import sqsd
import sqsd_client

OPERATIONS = REPO / "docs" / "operations.md"
SYSTEM_PYTHON = Path("/usr/bin/python3")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
UNITS = ("sqsd.socket", "sqsd.service", "sqsd@.socket", "sqsd@.service")
COPY_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
    ".ruff_cache", "node_modules", "results*.json",
)


def run(*args: str | Path, cwd: Path | None = None, env: dict | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    if check:
        assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stderr}"
    return result


def clean_env() -> dict[str, str]:
    """No dev venv, no PYTHONPATH pointing at this checkout, no SQSD_ settings."""
    dev_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SQSD_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != dev_bin)
    return env


def fenced_blocks(path: Path) -> list[tuple[str, str]]:
    """``(info, text)`` of every fenced block, also those indented inside list items."""
    found, info, lines, indent = [], None, [], 0
    for line in path.read_text().splitlines():
        stripped = line.lstrip()
        if info is None and stripped.startswith("```"):
            info, lines, indent = stripped[3:].strip(), [], len(line) - len(stripped)
        elif info is not None and stripped == "```":
            found.append((info, textwrap.dedent("\n".join(lines)) + "\n"))
            info = None
        elif info is not None:
            lines.append(line[indent:] if line[:indent].strip() == "" else line)
    return found


def block_with(marker: str, language: str = "sh") -> str:
    for info, text in fenced_blocks(OPERATIONS):
        if info.split()[:1] == [language] and marker in text:
            return text
    raise AssertionError(f"docs/operations.md has no {language} block with {marker!r}")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """Both wheels, built as `make dist` builds them, from a copy of this tree (pip builds
    in place and would leave build/ directories in the checkout)."""
    source = tmp_path_factory.mktemp("source") / "sqsd"
    shutil.copytree(REPO, source, symlinks=True, ignore=COPY_IGNORE)
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", out,
        source, source / "clients" / "python")
    return out


def wheel(wheels: Path, name: str) -> Path:
    [found] = wheels.glob(f"{name}-*.whl")
    return found


def test_versions_agree():
    import tomllib

    main = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((REPO / "clients" / "python" / "pyproject.toml").read_text())
    client = client["project"]
    assert main["version"] == client["version"] == sqsd.__version__ == sqsd_client.__version__
    assert f"sqsd-client=={client['version']}" in main["dependencies"]
    assert client["dependencies"] == []
    assert f"sqsd_client-{sqsd.__version__}-py3-none-any.whl" in OPERATIONS.read_text()


def test_sqsd_client_wheel_installs_alone_and_wakes_nothing_without_a_daemon(wheels, tmp_path):
    venv = tmp_path / "producer"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    # --no-index: nothing but the wheel itself is available, so it needs nothing else.
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-index",
        wheel(wheels, "sqsd_client"))
    listed = run(sys.executable, "-m", "pip", "--python", python, "list", "--format=json").stdout
    assert json.loads(listed) == [{"name": "sqsd-client", "version": sqsd.__version__}]
    env = clean_env()
    env["SQSD_SOCKET"] = str(tmp_path / "no-daemon.sock")
    script = textwrap.dedent("""\
        import importlib.util, pathlib, sqsd_client
        print(sqsd_client.wake("x"))
        print(pathlib.Path(sqsd_client.__file__).with_name("py.typed").exists())
        print(importlib.util.find_spec("sqsd") is None)
        print(sqsd_client.__file__)
    """)
    woke, typed, no_sqsd, location = run(python, "-c", script, cwd=tmp_path,
                                         env=env).stdout.split()
    assert (woke, typed, no_sqsd) == ("False", "True", "True")
    assert location.startswith(str(venv))
    del env["SQSD_SOCKET"]  # the default /run/sqsd/sqsd.sock: no daemon knows a queue "x"
    assert run(python, "-c", script, cwd=tmp_path, env=env).stdout.split()[0] == "False"


@pytest.fixture
def scratch_root() -> Iterator[Path]:
    """A root the `nobody` user can traverse (pytest's tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="sqsd-layout-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def rooted(block: str, root: Path) -> str:
    """A block of operations.md moved under ``root``, for an unprivileged `nobody`."""
    for top in ("/opt/", "/srv/", "/etc/", "/var/", "/run/"):
        block = re.sub(rf"(?<![\w./]){top}", f"{root}{top}", block)
    block = block.replace("runuser -u sqsd ", "runuser -u nobody ")
    block = block.replace(
        "sqsd install-units", f"sqsd install-units --dest {root}/etc/systemd/system"
    )
    return re.sub(r"^systemctl .*$", r": \g<0>", block, flags=re.M)


def create_tmpfiles_directories(root: Path, owner: str) -> list[Path]:
    """Step 1's `systemd-tmpfiles --create` under ``root``: the `d` lines of the shipped
    sqsd-tmpfiles.conf, owned by ``owner`` (standing in for sqsd)."""
    user = pwd.getpwnam(owner)
    made = []
    for line in (REPO / "systemd" / "sqsd-tmpfiles.conf").read_text().splitlines():
        fields = line.split()
        if fields[:1] != ["d"]:
            continue
        directory = root / fields[1].lstrip("/")
        directory.mkdir(parents=True)
        directory.chmod(int(fields[2], 8))
        os.chown(directory, user.pw_uid, user.pw_gid)
        made.append(directory)
    return made


def test_operations_layout_installs_the_wheels_and_the_app_for_an_unprivileged_user(
    wheels, scratch_root
):
    if os.geteuid() != 0:
        pytest.skip("needs root: runuser and a system-wide layout")
    if not SYSTEM_PYTHON.exists() or run(SYSTEM_PYTHON, "-c", "import sys, venv; "
                                         "assert sys.version_info >= (3, 11)",
                                         check=False).returncode:
        pytest.skip(f"{SYSTEM_PYTHON} is not a Python 3.11+ with venv")
    root = scratch_root
    work = root / "build"  # where `make dist` left dist/
    shutil.copytree(wheels, work / "dist")
    env = clean_env()

    # Step 2: the application package (its receivers are the README's first handler).
    app = root / "srv" / "myapp"
    (app / "myapp").mkdir(parents=True)
    pyproject = block_with("# /srv/myapp/pyproject.toml", "toml")
    (app / "pyproject.toml").write_text(pyproject)
    (app / "myapp" / "__init__.py").write_text("")
    receivers = next(text for info, text in fenced_blocks(REPO / "README.md")
                     if info == "python" and text.startswith("# myapp/receivers.py"))
    (app / "myapp" / "receivers.py").write_text(receivers)

    # Step 3: the venv from the system interpreter, the wheels, the app; nobody imports it.
    venv_block = block_with("-m venv /opt/sqsd/venv")
    assert venv_block.startswith(f"{SYSTEM_PYTHON} -m venv ")
    run("bash", "-e", "-c", rooted(venv_block, root), cwd=work, env=env)
    venv = root / "opt" / "sqsd" / "venv"
    assert Path(os.path.realpath(venv / "bin" / "python")).is_relative_to("/usr")

    # Step 1's runtime directory (the socket's), from the shipped tmpfiles file.
    assert create_tmpfiles_directories(root, "nobody") == [root / "run" / "sqsd"]

    # Step 4: the configuration, checked by the unprivileged user (the local endpoint stands
    # in for AWS, which the tests cannot reach: it validates and imports, nothing more).
    config = block_with('imports = ["myapp.receivers"]', "toml")
    config = rooted(config, root).replace("[sqsd]\n", '[sqsd]\nendpoint_url = "local"\n', 1)
    (work / "sqsd.toml").write_text(config)
    check = run("bash", "-e", "-c", rooted(block_with("install -m 0644 sqsd.toml"), root),
                cwd=work, env=env)
    assert "configuration valid" in check.stdout, check.stdout + check.stderr
    assert stat.S_IMODE((root / "etc" / "sqsd" / "sqsd.toml").stat().st_mode) == 0o644

    # The commands and what the wheel ships.
    bin_dir = venv / "bin"
    assert run(bin_dir / "sqsd", "--version", env=env).stdout == f"sqsd {sqsd.__version__}\n"
    assert run(bin_dir / "sqsctl", "--version", env=env).stdout.startswith("sqsctl ")
    assert "-c, --config" in run(bin_dir / "sqsctl", "--help", env=env).stdout
    run(bin_dir / "python", "-m", "pip", "check", env=env)
    shipped = run(bin_dir / "python", "-c", textwrap.dedent("""\
        from importlib.resources import files
        import sqsd_client
        share = files("sqsd") / "share"
        print(share)
        print((files("sqsd") / "py.typed").is_file(), (files("sqsd_client") / "py.typed").is_file())
        print(sqsd_client.__file__)
        print((share / "etc" / "sqsd.toml").read_text(), end="")
    """), cwd=root, env=env).stdout
    share, typed, client_file, example = shipped.split("\n", 3)
    assert share.startswith(str(venv)) and client_file.startswith(str(venv)), shipped
    assert typed == "True True"
    assert example == (REPO / "etc" / "sqsd.toml").read_text()

    # Step 5: the units and the drop-in, then systemd-analyze verify on them.
    units_block = block_with("override.conf <<'EOF'")
    if SYSTEMD_ANALYZE is None:
        units_block = re.sub(r"^systemd-analyze .*$", "", units_block, flags=re.M)
    run("bash", "-e", "-c", rooted(units_block, root), cwd=work, env=env)
    unit_dir = root / "etc" / "systemd" / "system"
    for name in UNITS:
        assert (unit_dir / name).read_text() == (REPO / "systemd" / name).read_text()
        assert (unit_dir / name).read_text() == (files("sqsd") / "share" / "systemd" / name
                                                 ).read_text()
    dropin = (unit_dir / "sqsd.service.d" / "override.conf").read_text()
    assert f"ExecStart={venv}/bin/sqsd run -c " in dropin
    again = run(bin_dir / "sqsd", "install-units", "--dest", unit_dir, env=env)
    assert again.stdout.count("unchanged") == len(UNITS)
    assert f"ExecStart={venv}/bin/sqsd run -c " in again.stdout
    if SYSTEMD_ANALYZE is not None and not Path("/usr/local/bin/sqsd").exists():
        # As the guide warns: without the drop-in, verify fails on the shipped ExecStart.
        shutil.rmtree(unit_dir / "sqsd.service.d")
        bare = run(SYSTEMD_ANALYZE, "verify", unit_dir / "sqsd.service", check=False)
        assert bare.returncode != 0
        assert "/usr/local/bin/sqsd is not executable" in bare.stderr + bare.stdout


def test_a_venv_made_from_an_interpreter_under_root_is_unusable_by_the_service_user(
    scratch_root
):
    """operations.md's warning, shown: the venv links to an interpreter nobody can reach."""
    interpreter = Path(os.path.realpath(sys._base_executable))
    if os.geteuid() != 0 or not interpreter.is_relative_to("/root"):
        pytest.skip("needs root and a test interpreter under /root (pyenv, as here)")
    venv = scratch_root / "opt" / "bad-venv"
    run(interpreter, "-m", "venv", "--without-pip", venv)
    result = run("runuser", "-u", "nobody", "--", venv / "bin" / "python", "-c", "pass",
                 check=False)
    assert result.returncode != 0
    assert "Permission denied" in result.stderr
