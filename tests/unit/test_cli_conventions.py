"""sqsctl's conventions, one test each: --json before or after the command, "did you mean",
colour (NO_COLOR, --color/--no-color), exit codes (in --help and in fact), the socket's
permission hint, Ctrl-C in a pseudo-terminal, QUEUE[:SUFFIX] and effective config values."""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import sqsd_client
from sqsd import cli, cli_conventions, config, plan
from sqsd.control.commands import effective
from sqsd_client import protocol

REPO = Path(__file__).resolve().parents[2]
STATUS = {
    "ok": True, "version": 1, "pid": 4242, "config": "/etc/sqsd/sqsd.toml", "uptime": 5.0,
    "stopping": False, "rss": 1,
    "workers": [{"queue": "emails", "suffix": "", "index": 0, "pid": None, "state": "crashloop",
                 "restarts": 3, "failures": 3, "last_exit": "exited 1", "retry_in": 4.0}],
    "queues": [{"queue": "emails", "suffix": "", "url_name": "emails", "processes": 1,
                "dead_letter": None, "visible": 0, "in_flight": 0, "delayed": 0,
                "depth_error": None, "depth_age": 0.1}],
    "dead_letters": [],
}


class FakeDaemon:
    """A control socket answering each request with ``answer(request)``; None holds the
    connection open without a reply (a `wait` that never ends)."""

    def __init__(self, path: Path, answer: Callable[[dict[str, Any]], dict[str, Any] | None]):
        self.path = str(path)
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.held: list[socket.socket] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                line += chunk
            request = json.loads(line)
            self.requests.append(request)
            reply = self.answer(request)
            if reply is None:
                self.held.append(conn)
                continue
            with conn:
                conn.sendall(protocol.encode(reply))

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def default_answer(request: dict[str, Any]) -> dict[str, Any] | None:
    cmd = request["cmd"]
    if cmd == "status":
        return STATUS
    if cmd == "ping":
        return {"ok": True, "pid": 4242, "uptime": 1.0, "version": 1}
    if cmd == "wake":
        if request["queue"] != "emails":
            return protocol.error(f"wake: unknown queue {request['queue']!r} "
                                  "(did you mean 'emails'?)")
        return {"ok": True, "woken": 1}
    if cmd == "reload":
        return protocol.error("reload: permission denied for uid 1000")
    if cmd == "wait":
        return None
    return protocol.error(f"unknown command {cmd!r}")


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    for name in ("SQSD_CONFIG", "SQSD_SOCKET", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli.config_module, "DEFAULT_CONFIG_PATH", "/nonexistent/sqsd.toml")
    fake = FakeDaemon(tmp_path / "d.sock", default_answer)
    yield fake
    fake.close()


def sqsctl(daemon: FakeDaemon, *args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli.sqsctl_main, ["--socket", daemon.path, *args], env=env,
                              catch_exceptions=False, prog_name="sqsctl")


def test_json_is_accepted_before_or_after_the_command(daemon):
    before = sqsctl(daemon, "--json", "ping")
    after = sqsctl(daemon, "ping", "--json")
    assert before.exit_code == after.exit_code == 0
    assert json.loads(before.output) == json.loads(after.output) == default_answer({"cmd": "ping"})
    assert json.loads(sqsctl(daemon, "status", "--json").output)["pid"] == 4242
    assert "--json" in sqsctl(daemon, "status", "--help").output  # every command lists it


def test_a_mistyped_command_gets_the_nearest_one_and_exit_code_2(daemon):
    result = sqsctl(daemon, "stauts")
    assert result.exit_code == 2
    assert "no such command 'stauts' (did you mean 'status'?)" in result.output


def test_a_mistyped_queue_shows_the_daemons_suggestion_as_a_usage_error(daemon):
    result = sqsctl(daemon, "wake", "emials")
    assert result.exit_code == 2
    assert result.output == "sqsctl: wake: unknown queue 'emials' (did you mean 'emails'?)\n"


def test_queue_suffix_is_one_argument_and_the_old_option_still_works(daemon):
    assert sqsctl(daemon, "wake", "emails:big").exit_code == 0
    assert sqsctl(daemon, "wake", "emails", "--suffix", "big").exit_code == 0
    assert sqsctl(daemon, "wake", "emails:").exit_code == 0
    assert sqsctl(daemon, "wake", "emails").exit_code == 0
    wakes = [(r["queue"], r["suffix"]) for r in daemon.requests if r["cmd"] == "wake"]
    assert wakes == [("emails", "big"), ("emails", "big"), ("emails", ""), ("emails", None)]
    conflict = sqsctl(daemon, "wake", "emails:big", "--suffix", "small")
    assert conflict.exit_code == 2 and "different suffixes" in conflict.output


def test_colour_follows_no_color_and_the_flags(daemon):
    red = "\x1b[31m"
    assert red not in sqsctl(daemon, "status").output  # not a terminal
    assert red in sqsctl(daemon, "--color", "status").output
    assert red not in sqsctl(daemon, "--no-color", "status").output
    assert red in sqsctl(daemon, "--color", "status", env={"NO_COLOR": "1"}).output  # asked for
    tty = type("Tty", (), {"isatty": lambda self: True})()
    assert cli_conventions.wants_color(None, tty) is True
    os.environ["NO_COLOR"] = "1"
    try:
        assert cli_conventions.wants_color(None, tty) is False
        assert cli_conventions.wants_color(True, tty) is True
    finally:
        del os.environ["NO_COLOR"]


def test_exit_codes_are_listed_in_help_and_kept(daemon, tmp_path):
    helped = sqsctl(daemon, "--help").output
    for line in ("0    ok", "1    failed, or timed out", "2    usage or configuration error",
                 "3    daemon not reachable", "130  interrupted (Ctrl-C)"):
        assert line in helped
    assert "2  usage or configuration error" in CliRunner().invoke(cli.sqsd_main, ["--help"]).output
    assert sqsctl(daemon, "ping").exit_code == 0
    assert sqsctl(daemon, "reload").exit_code == 1
    assert sqsctl(daemon, "scale", "emails", "many").exit_code == 2
    gone = CliRunner().invoke(cli.sqsctl_main, ["--socket", str(tmp_path / "no.sock"), "ping"])
    assert gone.exit_code == 3


def test_a_privileged_command_refused_says_who_may(daemon):
    result = sqsctl(daemon, "reload")
    assert "reload: permission denied for uid 1000 (only root and the daemon's user may; " \
           "try sudo)" in result.output


def test_a_socket_this_user_may_not_open_names_the_clients_group(daemon, monkeypatch):
    def refuse(self, request, timeout):
        try:
            raise PermissionError(13, "Permission denied")
        except PermissionError as exc:
            raise sqsd_client.DaemonUnavailable(f"{self.socket_path}: Permission denied") from exc

    monkeypatch.setattr(sqsd_client.Client, "_request", refuse)
    monkeypatch.setattr(cli_conventions.grp, "getgrgid", lambda gid: type(
        "Group", (), {"gr_name": "sqsd-clients"})())
    result = sqsctl(daemon, "status")
    assert result.exit_code == 3
    assert "permission denied: only root, the daemon's user and members of the " \
           "'sqsd-clients' group may connect" in result.output
    assert "sudo usermod -aG sqsd-clients $USER" in result.output


def test_config_shows_the_values_in_effect():
    settings = config.parse({"queues": {
        "a": {"receiver": "m:f", "dead_letter_queue": "a_dlq"},
        "b": {"receiver": "m:f", "processes": 2},
    }})
    queues = plan.queue_settings(settings)
    a, b = effective(queues["a"]), effective(queues["b"])
    assert (a["on_error"], b["on_error"]) == ("dead-letter", "delete")
    assert (a["max_receives"], b["max_processes"]) == (60, 2)
    assert a["suffixes"] == [""]


def test_ctrl_c_in_wait_prints_one_line_and_exits_130(daemon):
    code = (f"import sys; sys.argv = ['sqsctl', '--socket', {daemon.path!r}, 'wait']; "
            "from sqsd.cli import sqsctl_main; sqsctl_main()")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        os.execve(sys.executable, [sys.executable, "-c", code], env)
    output = b""

    def read_until(predicate: Callable[[bytes], bool], timeout: float) -> None:
        nonlocal output
        deadline = time.monotonic() + timeout
        while not predicate(output) and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    return
                if not chunk:
                    return
                output += chunk

    read_until(lambda out: b"waiting for queues to drain" in out, 30)
    deadline = time.monotonic() + 10
    while not any(r["cmd"] == "wait" for r in daemon.requests) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.write(fd, b"\x03")  # Ctrl-C, as the terminal sends it: SIGINT to the foreground group
    read_until(lambda out: False, 10)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 130, text
    assert text.count("sqsctl: interrupted") == 1, text
    assert "Aborted" not in text and "Traceback" not in text, text


def complete(args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    words = f"sqsctl {args}"
    result = CliRunner().invoke(
        cli.sqsctl_main, [], prog_name="sqsctl", catch_exceptions=False,
        env={"_SQSCTL_COMPLETE": "bash_complete", "COMP_WORDS": words,
             "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
             **(env or {})})
    return result.exit_code, result.output


def test_completion_offers_the_running_daemons_queues(daemon):
    code, output = complete(f"--socket {daemon.path} wake em")
    assert (code, output.split()) == (0, ["plain,emails"])
    assert complete(f"--socket {daemon.path} dlq ")[1].split() == ["plain,emails"]


def test_completion_falls_back_to_the_configuration_and_never_fails_loudly(daemon, tmp_path):
    config_file = tmp_path / "sqsd.toml"
    config_file.write_text('[queues.reports]\nreceiver = "m:f"\nsuffixes = ["", "daily"]\n')
    gone = str(tmp_path / "gone.sock")
    code, output = complete(f"--socket {gone} send re", env={"SQSD_CONFIG": str(config_file)})
    assert (code, output.split()) == (0, ["plain,reports", "plain,reports:daily"])
    config_file.write_text("not [ toml")
    broken = complete(f"--socket {gone} send re", env={"SQSD_CONFIG": str(config_file)})
    assert (broken[0], broken[1].strip()) == (0, "")
    missing = complete("-c /nonexistent.toml wake ")
    assert (missing[0], missing[1].strip()) == (0, "")
