"""`sqsctl top` and `sqsctl wait` on a terminal (a pty read through a terminal emulator) and
off one, against a real daemon on moto."""

import subprocess
import sys

from conftest import REPO, child_env

from tests.support.terminal import Terminal

BASIC_RECEIVER = "tests.receivers.basic:handle"
SQSCTL = [sys.executable, "-c", "from sqsd.cli import sqsctl_main; sqsctl_main()"]


def on_terminal(daemon, *args: str, columns: int = 120) -> Terminal:
    return Terminal([*SQSCTL, "--socket", str(daemon.socket_path), *args],
                    child_env(), str(REPO), columns=columns)


def test_top_draws_queues_and_workers_and_q_quits_with_0(harness):
    daemon = harness.start({"basic": {"receiver": BASIC_RECEIVER, "processes": 2}})
    for n in range(4):
        harness.send("basic", f"ok|{n}")
    harness.send("basic", "fail|x")
    harness.send("basic", "sleep:30|slow")
    harness.wait_for_records(1, "start", body="sleep:30|slow")

    with on_terminal(daemon, "top") as term:
        screen = term.wait_for(lambda s: "busy" in s and "MSG/S" in s and "$/H" in s,
                               what="the busy worker")
        lines = screen.splitlines()
        assert lines[0].startswith("sqsd pid ") and "q quits" in lines[0]
        [queue_row] = [line for line in lines if line.startswith("basic ")
                       and "PROCS" not in line][:1]
        assert queue_row.split()[1] == "2"  # PROCS
        [busy] = [line for line in lines if " busy " in line]
        assert busy.split()[4] != "-"  # the message's id, then its age
        assert busy.split()[5].endswith("s")
        # Rates appear from the second refresh on: a number of calls per hour, not "-".
        term.wait_for(lambda s: "SQS calls/h" in s.splitlines()[1]
                      and "- SQS calls/h" not in s.splitlines()[1], what="a rate")
        term.type(b"q")
        assert term.wait() == 0
    # The alternate screen is left: what was on the terminal before is back.
    assert b"\x1b[?1049l" in term.raw


def test_top_ends_with_0_on_ctrl_c_and_prints_blocks_when_not_on_a_terminal(harness):
    daemon = harness.start({"basic": {"receiver": BASIC_RECEIVER}})
    with on_terminal(daemon, "top") as term:
        term.wait_for(lambda s: "WORKER" in s, what="the worker table")
        term.type(b"\x03")
        assert term.wait() == 0

    plain = subprocess.run(
        [*SQSCTL, "--socket", str(daemon.socket_path), "top", "-n", "2", "--interval", "0.5"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=30,
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.count("--- ") == 2
    assert plain.stdout.count("\nQUEUE ") == 2 and "\x1b" not in plain.stdout


def test_top_without_a_daemon_is_one_line_and_exit_3(harness, tmp_path):
    result = subprocess.run(
        [*SQSCTL, "--socket", str(tmp_path / "none.sock"), "top"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 3
    assert len(result.stderr.strip().splitlines()) == 1


def test_wait_shows_what_is_left_the_rate_and_eta_then_the_quiet_result(harness):
    daemon = harness.start({"basic": {"receiver": BASIC_RECEIVER}})
    for n in range(8):
        harness.send("basic", f"sleep:0.6|{n}")
    harness.wait_for_records(1, "start")

    with on_terminal(daemon, "wait", "basic", "--timeout", "60") as term:
        progress = term.wait_for(lambda s: "left (" in s and "msg/s" in s and "ETA" in s,
                                 what="a progress line")
        [line] = [line for line in progress.splitlines() if line.startswith("waiting: ")]
        assert "visible" in line and "in flight" in line and "delayed" in line
        assert term.wait(60) == 0
        final = term.text()
    assert "queues empty and workers idle" in final
    assert "waiting:" not in final  # the progress line was taken back
    # It redrew more than once, in place.
    assert term.raw.count(b"\rwaiting: ") >= 2

    # Not on a terminal: as quiet as ever.
    harness.send("basic", "ok|last")
    piped = subprocess.run(
        [*SQSCTL, "--socket", str(daemon.socket_path), "wait", "--timeout", "30"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=60,
    )
    assert piped.returncode == 0
    assert piped.stdout == "queues empty and workers idle\n" and piped.stderr == ""


def test_wait_on_a_terminal_times_out_with_1_and_ctrl_c_is_130(harness):
    daemon = harness.start({"basic": {"receiver": BASIC_RECEIVER}})
    harness.send("basic", "sleep:20|stuck")
    harness.wait_for_records(1, "start")
    with on_terminal(daemon, "wait", "--timeout", "2") as term:
        assert term.wait(15) == 1
        assert "timeout" in term.text() and "waiting:" not in term.text()
    with on_terminal(daemon, "wait") as term:
        term.wait_for(lambda s: "waiting: " in s, what="progress")
        term.type(b"\x03")
        assert term.wait() == 130
        assert "interrupted" in term.text()
