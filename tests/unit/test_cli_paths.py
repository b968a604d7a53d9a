"""Where the commands look: --version, $SQSD_CONFIG for `sqsd run/check`, the socket sqsctl
picks (--socket, -c CONFIG, $SQSD_SOCKET, $SQSD_CONFIG, /etc/sqsd/sqsd.toml), and
`sqsd install-units`."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

import sqsd
from sqsd import cli, sqsctl, units
from sqsd_client import protocol

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_sqsd_environment(monkeypatch):
    monkeypatch.delenv("SQSD_CONFIG", raising=False)
    monkeypatch.delenv("SQSD_SOCKET", raising=False)
    # The machine's own /etc/sqsd/sqsd.toml, if any, must not leak into these tests.
    monkeypatch.setattr(cli.config_module, "DEFAULT_CONFIG_PATH", "/nonexistent/sqsd.toml")


def invoke(command, *args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(command, list(args), env=env, catch_exceptions=False)


@pytest.mark.parametrize(("command", "name"), [(cli.sqsd_main, "sqsd"),
                                               (cli.sqsctl_main, "sqsctl")])
def test_both_tools_print_their_version(command, name):
    result = invoke(command, "--version")
    assert (result.exit_code, result.output) == (0, f"{name} {sqsd.__version__}\n")


def test_sqsd_check_reads_sqsd_config_when_no_c_is_given(tmp_path):
    config = tmp_path / "from-env.toml"
    config.write_text('[sqsd]\nendpoint_url = "local"\n[queues.emails]\n'
                      'receiver = "tests.receivers.basic:handle"\n')
    result = invoke(cli.sqsd_main, "check", env={"SQSD_CONFIG": str(config)})
    assert result.exit_code == 0, result.output
    assert f"{config}: configuration valid" in result.output
    explicit = invoke(cli.sqsd_main, "check", "-c", str(tmp_path / "missing.toml"),
                      env={"SQSD_CONFIG": str(config)})
    assert explicit.exit_code == 2 and "missing.toml" in explicit.output


def test_sqsd_run_reads_sqsd_config(tmp_path):
    result = invoke(cli.sqsd_main, "run", env={"SQSD_CONFIG": str(tmp_path / "nope.toml")})
    assert result.exit_code == 2
    assert "nope.toml" in result.output


class FakeDaemon:
    """A socket that answers every request with a pong naming itself."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(protocol.encode({"ok": True, "pid": 4242, "uptime": 1.0}))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def daemon(tmp_path):
    fake = FakeDaemon(tmp_path / "d.sock")
    yield fake
    fake.close()


def config_with_socket(tmp_path: Path, path: str) -> Path:
    config = tmp_path / "sqsd.toml"
    config.write_text(f'[sqsd]\nsocket = "{path}"\n')
    return config


@pytest.mark.parametrize("how", ["-c", "SQSD_CONFIG", "default file"])
def test_sqsctl_takes_the_socket_from_the_configuration(tmp_path, daemon, how, monkeypatch):
    config = config_with_socket(tmp_path, daemon.path)
    args, env = ["ping"], {}
    if how == "-c":
        args = ["-c", str(config), "ping"]
    elif how == "SQSD_CONFIG":
        env = {"SQSD_CONFIG": str(config)}
    else:
        monkeypatch.setattr(cli.config_module, "DEFAULT_CONFIG_PATH", str(config))
    result = invoke(cli.sqsctl_main, *args, env=env)
    assert (result.exit_code, result.output) == (0, "pong from sqsd pid 4242 (up 1s)\n")


def test_sqsctl_prefers_explicit_choices_to_the_environment(tmp_path, daemon):
    config = config_with_socket(tmp_path, daemon.path)
    elsewhere = str(tmp_path / "elsewhere.sock")
    choose = sqsctl.control_socket
    assert choose(None, None) == protocol.DEFAULT_SOCKET
    assert choose("/x.sock", str(config)) == "/x.sock"
    env = {"SQSD_SOCKET": elsewhere, "SQSD_CONFIG": str(config)}
    # -c beats $SQSD_SOCKET; $SQSD_SOCKET beats $SQSD_CONFIG.
    assert invoke(cli.sqsctl_main, "-c", str(config), "ping", env=env).exit_code == 0
    unreachable = invoke(cli.sqsctl_main, "ping", env=env)
    assert unreachable.exit_code == 3
    assert f"daemon not reachable: {elsewhere}" in unreachable.output
    assert "--socket PATH or -c CONFIG" in unreachable.output


def test_sqsctl_reads_only_the_socket_so_a_file_the_daemon_refused_still_works(tmp_path, daemon):
    config = tmp_path / "edited.toml"
    config.write_text(f'[sqsd]\nsocket = "{daemon.path}"\nbatch_size = 99\n[queues.x]\nbogus = 1\n')
    assert invoke(cli.sqsctl_main, "-c", str(config), "ping").exit_code == 0


@pytest.mark.parametrize(("text", "error"), [
    (None, "No such file or directory"),
    ("[sqsd\n", "not valid TOML"),
    ("[sqsd]\nsocket = 3\n", "[sqsd] socket: expected a path"),
])
def test_sqsctl_c_with_a_broken_file_is_a_usage_error(tmp_path, text, error):
    config = tmp_path / "broken.toml"
    if text is not None:
        config.write_text(text)
    result = invoke(cli.sqsctl_main, "-c", str(config), "ping")
    assert result.exit_code == 2
    assert f"{config}: " in result.output and error in result.output


def test_an_unreadable_default_file_falls_back_to_the_default_socket(tmp_path, monkeypatch):
    broken = tmp_path / "sqsd.toml"
    broken.write_text("not toml [")
    monkeypatch.setattr(cli.config_module, "DEFAULT_CONFIG_PATH", str(broken))
    assert sqsctl.control_socket(None, None) == protocol.DEFAULT_SOCKET


def test_install_units_copies_the_shipped_units_and_never_overwrites_a_changed_one(tmp_path):
    dest = tmp_path / "system"
    first = invoke(cli.sqsd_main, "install-units", "--dest", str(dest))
    assert first.exit_code == 0, first.output
    for name in units.UNITS:
        assert (dest / name).read_text() == (REPO / "systemd" / name).read_text()
        assert f"written    {dest / name}" in first.output
    assert f"cat > {dest}/sqsd.service.d/override.conf" in first.output
    assert f"ExecStart={units.sqsd_executable()} run -c /etc/sqsd/sqsd.toml" in first.output

    (dest / "sqsd.service").write_text("# changed by hand\n")
    (dest / "sqsd.socket").unlink()
    refused = invoke(cli.sqsd_main, "install-units", "--dest", str(dest))
    assert refused.exit_code == 1
    assert "sqsd.service: differs from the shipped unit; nothing written" in refused.output
    assert not (dest / "sqsd.socket").exists()  # all or nothing
    forced = invoke(cli.sqsd_main, "install-units", "--dest", str(dest), "--force")
    assert forced.exit_code == 0
    assert f"replaced   {dest / 'sqsd.service'}" in forced.output
    assert (dest / "sqsd.service").read_text() == (REPO / "systemd" / "sqsd.service").read_text()


def test_the_package_ships_the_repository_units_and_example():
    for name in units.UNITS:
        assert units.shared("systemd", name).read_text() == (REPO / "systemd" / name).read_text()
    for name in ("sqsd.toml", "receivers.py"):
        assert units.shared("etc", name).read_text() == (REPO / "etc" / name).read_text()
