"""Control commands against a stand-in supervisor: no master, no fork, no socket."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from sqsd import config, metrics, plan, scaling
from sqsd.control.commands import ControlPlane
from sqsd.control.render import render_status
from sqsd.loop import EventLoop
from sqsd.states import Program, ProgramState, WorkerExit


def handle(message):
    """The queues' handler."""


SETTINGS = config.parse(
    {"queues": {"a": {"receiver": f"{__name__}:handle", "suffixes": ["", "big"]}}}, "test.toml"
)


@dataclass
class Supervisor:
    """What the control plane may ask of the master, and nothing else."""

    pid: int = 42
    started: float = 0.0
    config_path: str = "test.toml"
    settings: config.Settings = SETTINGS
    queues: dict = field(default_factory=lambda: plan.queue_settings(SETTINGS))
    programs: dict = field(default_factory=dict)
    stopping: bool = False
    calls: list = field(default_factory=list)
    totals: metrics.Totals = field(default_factory=metrics.Totals)

    def __post_init__(self) -> None:
        self.sizing = scaling.Sizing(self.queues)

    def wake(self, queue: str, suffix: str | None) -> int:
        self.calls.append(("wake", queue, suffix))
        return 1

    def reload(self) -> str | None:
        self.calls.append(("reload",))
        return "test.toml: broken"

    def begin_stop(self, *, quick: bool, reason: str = "") -> None:
        self.calls.append(("stop", quick, reason))

    def scale(self, queue: str, suffix: str, processes: int) -> int:
        self.calls.append(("scale", queue, suffix, processes))
        return processes

    def fork(self, main, close=()) -> int:
        raise AssertionError("no command here needs a child")


@dataclass
class Conn:
    peer_uid: int = os.getuid()
    peer_pid: int = 1
    closed: bool = False
    replies: list = field(default_factory=list)

    def reply(self, obj: dict[str, Any]) -> None:
        self.replies.append(obj)


@pytest.fixture
def control():
    supervisor = Supervisor()
    loop = EventLoop()
    yield ControlPlane(supervisor, loop), supervisor
    loop.close()


def test_commands_come_from_the_table(control):
    plane, supervisor = control
    assert plane.dispatch({"cmd": "ping"}, Conn())["pid"] == 42
    assert plane.dispatch({"cmd": "cmd_ping"}, Conn()) == {
        "ok": False, "error": "unknown command 'cmd_ping'"}
    assert plane.dispatch({"cmd": "dispatch"}, Conn())["ok"] is False


def test_privileged_commands_refuse_other_users(control):
    plane, supervisor = control
    stranger = Conn(peer_uid=os.getuid() + 1)
    reply = plane.dispatch({"cmd": "shutdown"}, stranger)
    assert reply["ok"] is False and "permission denied" in reply["error"]
    assert supervisor.calls == []
    assert plane.dispatch({"cmd": "shutdown", "quick": True}, Conn()) == {"ok": True}
    assert supervisor.calls == [("stop", True, "sqsctl shutdown")]


def test_commands_check_their_arguments_before_acting(control):
    plane, supervisor = control
    assert plane.dispatch({"cmd": "wake", "queue": "a", "suffix": "big"}, Conn()) == {
        "ok": True, "woken": 1}
    assert plane.dispatch({"cmd": "wake", "queue": "nope"}, Conn())["error"] == (
        "wake: unknown queue 'nope'")
    assert plane.dispatch({"cmd": "scale", "queue": "a", "processes": 300}, Conn())["ok"] is False
    assert plane.dispatch({"cmd": "wake", "queue": "a", "suffix": "bgi"}, Conn())["error"] == (
        "wake: unknown suffix 'bgi' of queue 'a' (did you mean 'big'?)")
    assert plane.dispatch({"cmd": "reload"}, Conn()) == {"ok": False, "error": "test.toml: broken"}
    assert supervisor.calls == [("wake", "a", "big"), ("reload",)]


def test_a_mistyped_queue_gets_the_nearest_name_in_the_reply(control):
    plane, supervisor = control
    supervisor.queues = plan.queue_settings(config.parse(
        {"queues": {"emails": {"receiver": f"{__name__}:handle", "suffixes": ["", "big"]}}}))
    supervisor.sizing = scaling.Sizing(supervisor.queues)  # the master keeps both together
    assert plane.dispatch({"cmd": "wake", "queue": "emials"}, Conn())["error"] == (
        "wake: unknown queue 'emials' (did you mean 'emails'?)")
    reply = plane.dispatch({"cmd": "wait", "queues": ["emails:bgi"]}, Conn())
    assert reply["error"] == "wait: unknown queue 'emails:bgi' (did you mean 'emails:big'?)"
    assert plane.dispatch({"cmd": "clear", "queues": ["zzz"]}, Conn())["error"] == (
        "clear: unknown queue 'zzz'")


def test_metrics_are_rendered_over_turns_of_the_loop_and_scrapes_are_redacted(control):
    plane, supervisor = control
    plane.depths_at = time.monotonic()  # depths known: no query child
    secret = "AKIA" + "ABCDEFGHIJKLMNOP"
    supervisor.totals.woken((secret, ""))
    conn = Conn()
    assert plane.dispatch({"cmd": "metrics"}, conn) is None
    turns = 0
    while not conn.replies:
        plane.loop.run_once(0)
        turns += 1
    assert turns >= 10  # one family a turn: a ping in between waits for one family only
    assert conn.replies[0]["content_type"].startswith("application/openmetrics-text")
    assert conn.replies[0]["text"].endswith("# EOF\n")
    scraped = []
    plane.scrape("text/plain", lambda body, kind: scraped.append((body, kind)))
    while not scraped:
        plane.loop.run_once(0)
    body, kind = scraped[0]
    assert kind.startswith("text/plain; version=0.0.4")
    assert b'sqsd_wakeups_total{queue="AKIA***",suffix=""} 1.0' in body
    assert secret.encode() not in body


def test_status_is_data_and_render_makes_the_table(control):
    plane, supervisor = control
    wanted = plan.wanted(SETTINGS, supervisor.queues)
    supervisor.programs = {key: Program(spec) for key, spec in wanted.items()}
    crashed = supervisor.programs[("a", "big", 0)]
    crashed.state, crashed.restarts, crashed.last_exit = ProgramState.BACKOFF, 2, WorkerExit(1)
    reply = plane.dispatch({"cmd": "status"}, Conn())
    assert [(w["suffix"], w["state"], w["last_exit"]) for w in reply["workers"]] == [
        ("", "starting", None), ("big", "crashloop", "exited 1")]
    assert [(q["url_name"], q["processes"]) for q in reply["queues"]] == [("a", 1), ("a__big", 1)]
    table = render_status(reply)
    assert "a:big" in table and "crashloop retry" in table and "exited 1" in table


def test_status_shows_each_queues_range_pin_and_last_scaling_within_100_columns(control):
    plane, supervisor = control
    supervisor.queues = plan.queue_settings(config.parse({"queues": {
        "a": {"receiver": f"{__name__}:handle", "suffixes": ["", "big"], "max_processes": 8}}},
        "test.toml"))
    supervisor.sizing = scaling.Sizing(supervisor.queues)
    why = "max_workers budget: for a-queue-with-a-rather-long-name:and-suffix (priority 1000)"
    supervisor.sizing.record(scaling.Decision("a", "", 3, 2, why, at=0.0, worker=2))
    supervisor.sizing.pin("a", "big", 4, now=0.0)
    reply = plane.dispatch({"cmd": "status"}, Conn())
    plain, big = reply["queues"]
    assert (plain["processes"], plain["min_processes"], plain["max_processes"]) == (2, 1, 8)
    assert (plain["pinned"], plain["scaling_decisions"]) == (False, 1)
    assert plain["last_scaling"]["text"] == f"3→2: {why}"
    assert (big["processes"], big["pinned"], big["last_scaling"]["reason"]) == (
        4, True, "pinned by sqsctl scale")
    table = render_status(reply)
    assert "2 (1-8)" in table and "4 pinned" in table
    scaling_lines = table.split("LAST SCALING")[1].splitlines()
    assert all(len(line) <= 100 for line in scaling_lines)
    assert scaling_lines[1].endswith("…") and "3→2: max_workers budget" in scaling_lines[1]
