"""The control socket, `sqsctl` and `sqsd_client` against a real daemon (docs/protocol.md).

Every test talks to a real `sqsd run` over its Unix socket: raw lines for the protocol
itself, `sqsd_client` as producers use it, and the `sqsctl` console script as operators do.
"""

import contextlib
import json
import os
import resource
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO, child_env, queue_counts, wait_for

import sqsd_client

BASIC_RECEIVER = "tests.receivers.basic:handle"
CRASHY_RECEIVER = "tests.receivers.crashy:handle"
SQSCTL_SCRIPT = Path(sys.executable).parent / "sqsctl"


# --- helpers -------------------------------------------------------------------------------


def sqsctl(daemon, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run the `sqsctl` console script against ``daemon``'s socket."""
    if SQSCTL_SCRIPT.exists():
        command = [str(SQSCTL_SCRIPT)]
    else:
        command = [sys.executable, "-c", "from sqsd.cli import sqsctl_main; sqsctl_main()"]
    return subprocess.run(
        [*command, "--socket", str(daemon.socket_path), *args],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout,
    )


def worker_status(daemon, queue: str, index: int = 0) -> dict:
    """The status entry of one worker slot."""
    [entry] = [w for w in daemon.status()["workers"]
               if w["queue"] == queue and w["index"] == index]
    return entry


def queue_status(status: dict, queue: str) -> dict:
    [entry] = [q for q in status["queues"] if q["queue"] == queue]
    return entry


def in_state(daemon, queue: str, state: str, **at_least: float):
    """The worker's status entry when it is in ``state`` (and its fields are at least
    the given numbers), else None: a predicate for ``wait_for``."""
    entry = worker_status(daemon, queue)
    if entry["state"] != state:
        return None
    if any((entry.get(key) or 0) < value for key, value in at_least.items()):
        return None
    return entry


def send_batch(harness, queue: str, bodies: list[str]) -> None:
    url = harness.queue_url(queue)
    for start in range(0, len(bodies), 10):
        entries = [{"Id": str(i), "MessageBody": body}
                   for i, body in enumerate(bodies[start:start + 10])]
        response = harness.sqs.send_message_batch(QueueUrl=url, Entries=entries)
        assert len(response["Successful"]) == len(entries)


def connect(daemon, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(daemon.socket_path))
    return sock


def connect_patiently(daemon, timeout: float = 5.0) -> socket.socket:
    """Connect, retrying while the listen backlog is full (EAGAIN on a Unix socket)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect(daemon, timeout)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def read_line(sock: socket.socket) -> bytes:
    """One reply line, or b"" when the daemon closed the connection first."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


def exchange(sock: socket.socket, data: bytes) -> dict:
    sock.sendall(data)
    line = read_line(sock)
    assert line.endswith(b"\n"), f"no reply line to {data[:80]!r}: got {line!r}"
    return json.loads(line)


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


# --- wake-ups and idle backoff -------------------------------------------------------------


def test_wake_ends_a_backed_off_sleep_at_once_and_nothing_else_does(harness):
    # Short polls make the backoff climb 1, 2, 4, 8 s quickly; the cap is far above that.
    daemon = harness.start(defaults={"idle_sleep_max": 30, "wait_time_seconds": 0})
    daemon.wait_for(lambda: in_state(daemon, "basic", "idle", idle_seconds=5), timeout=20,
                    what="the worker backed off into a sleep of 5 s or more")

    harness.send("basic", "ok|unannounced")  # boto3 only: no wake-up

    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert not harness.records("start", body="ok|unannounced"), \
            "a sleeping worker received a message nobody woke it for"
        time.sleep(0.1)
    asleep = in_state(daemon, "basic", "idle", idle_seconds=1)
    assert asleep, "the worker should still be sleeping"

    woken_at = time.time()
    assert sqsd_client.wake("basic", socket_path=str(daemon.socket_path), timeout=2.0)
    wake_call = time.time() - woken_at

    [call] = harness.wait_for_records(1, "start", body="ok|unannounced", timeout=5)
    latency = call["time"] - woken_at
    print(f"\nwake-to-handler latency {latency * 1000:.0f} ms (wake() call "
          f"{wake_call * 1000:.1f} ms; the sleep had {asleep['idle_seconds']} s left)")
    assert latency < 1.0


def test_idle_backoff_makes_fewer_receive_calls_than_plain_long_polling(harness):
    daemon = harness.start(
        {"plain": {"receiver": BASIC_RECEIVER, "idle_sleep_max": 0},
         "backoff": {"receiver": BASIC_RECEIVER, "idle_sleep_max": 4}},
        defaults={"wait_time_seconds": 1},
    )

    def receives() -> dict[str, int]:
        return {w["queue"]: w["api"]["receive"] for w in daemon.status()["workers"]}

    daemon.wait_for(lambda: in_state(daemon, "backoff", "idle"), what="backoff worker idle")
    before = receives()
    # The window: while plain long polling makes 6 one-second receives.
    after = daemon.wait_for(
        lambda: (now := receives())["plain"] >= before["plain"] + 6 and now,
        timeout=20, what="6 receives by the plain worker",
    )

    plain = after["plain"] - before["plain"]
    backoff = after["backoff"] - before["backoff"]
    print(f"\nreceives in the same window: plain {plain}, with idle backoff {backoff}")
    assert backoff * 2 < plain


def test_wake_without_a_daemon_returns_false_at_once(harness):
    missing = harness.socket_dir / "missing.sock"
    stale = harness.socket_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(stale))  # a socket file nobody listens on: connect is refused

    for path in (missing, stale):
        started = time.monotonic()
        assert sqsd_client.wake("basic", socket_path=str(path)) is False
        elapsed = time.monotonic() - started
        assert elapsed < 0.05, f"wake() took {elapsed * 1000:.1f} ms with {path.name}"

    # A hung daemon (listening, never answering) costs at most the 50 ms timeout.
    hung = harness.socket_dir / "hung.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(hung))
        listener.listen(1)
        started = time.monotonic()
        assert sqsd_client.wake("basic", socket_path=str(hung)) is False
        assert time.monotonic() - started < 0.2


# --- status --------------------------------------------------------------------------------


def test_status_shows_each_worker_state_with_its_fields_and_fresh_queue_depths(harness):
    daemon = harness.start(
        {"basic": {"receiver": BASIC_RECEIVER},
         "crashy": {"receiver": CRASHY_RECEIVER, "batch_size": 1}},
        defaults={"idle_sleep_max": 30, "graceful_timeout": 1},
    )

    idle = daemon.wait_for(lambda: in_state(daemon, "basic", "idle"), what="basic idle")
    assert 0 < idle["idle_seconds"] <= 33
    assert idle["pid"] in daemon.worker_pids("basic")
    assert (idle["restarts"], idle["last_exit"]) == (0, None)
    assert set(idle["api"]) == {"receive", "empty_receive", "delete", "change_visibility",
                                "send"}

    harness.send("basic", "ok|later", DelaySeconds=60)
    status = daemon.ctl("status", fresh=True)
    depth = queue_status(status, "basic")
    assert (depth["visible"], depth["in_flight"], depth["delayed"]) == (0, 0, 1), depth
    assert depth["depth_error"] is None
    assert 0 <= depth["depth_age"] < 2
    assert depth["url_name"] == harness.queue_name("basic")

    message_id = harness.send("basic", "sleep:3|busy")
    assert sqsd_client.wake("basic", socket_path=str(daemon.socket_path), timeout=2.0)
    busy = daemon.wait_for(lambda: in_state(daemon, "basic", "busy", message_seconds=0.5),
                           what="basic busy for half a second")
    assert busy["message_id"] == message_id
    assert busy["message_seconds"] < 3

    send_batch(harness, "crashy", [f"exit|{n}" for n in range(4)])
    crashloop = daemon.wait_for(lambda: in_state(daemon, "crashy", "crashloop"), timeout=15,
                                what="crashy in crashloop")
    assert crashloop["pid"] is None
    assert crashloop["restarts"] >= 2
    assert crashloop["last_exit"] == "exited 1"
    assert crashloop["retry_in"] > 0
    assert daemon.pings()


def test_sqsctl_status_prints_a_table_and_json(harness):
    daemon = harness.start({"basic": {"receiver": BASIC_RECEIVER, "suffixes": ["", "big"]}})
    pids = {(w.queue, w.suffix): w.pid for w in daemon.workers()}

    table = sqsctl(daemon, "status")

    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"sqsd pid {daemon.pid} ")
    assert lines[2].split()[:3] == ["QUEUE", "PID", "STATE"]
    rows = {line.split()[0]: line.split() for line in lines[3:5]}
    assert rows["basic"][1] == str(pids["basic", ""])
    assert rows["basic:big"][1] == str(pids["basic", "big"])
    assert any(line.split()[:2] == ["basic:big", harness.queue_name("basic", "big")]
               for line in lines[6:]), table.stdout

    as_json = sqsctl(daemon, "--json", "status")

    assert as_json.returncode == 0, as_json.stderr
    status = json.loads(as_json.stdout)
    assert status["ok"] is True
    assert {(w["queue"], w["suffix"]): w["pid"] for w in status["workers"]} == pids
    assert all(q["visible"] == 0 for q in status["queues"]), "status is fresh: depths known"


# --- clear and wait ------------------------------------------------------------------------


def test_clear_deletes_visible_messages_and_reports_the_one_in_flight(harness):
    daemon = harness.start({"basic": {"receiver": BASIC_RECEIVER, "batch_size": 1}},
                           defaults={"graceful_timeout": 1})
    harness.send("basic", "sleep:8|busy")
    harness.wait_for_records(1, "start", body="sleep:8|busy")
    send_batch(harness, "basic", [f"ok|{n}" for n in range(25)])
    sqs_name = harness.queue_name("basic")

    refused = sqsctl(daemon, "clear", "basic")  # stdin is not a terminal: no confirmation
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1

    cleared = sqsctl(daemon, "clear", "basic", "--yes")

    assert cleared.returncode == 0, cleared.stderr
    assert cleared.stdout.strip() == f"{sqs_name}: 25 deleted, 1 in flight (not touched)"
    assert queue_counts(harness, "basic") == (0, 1)
    assert not harness.records("start", body="ok|0")

    send_batch(harness, "basic", [f"ok|p{n}" for n in range(3)])
    purged = sqsctl(daemon, "--json", "clear", "basic", "--yes", "--purge")

    assert purged.returncode == 0, purged.stderr
    assert json.loads(purged.stdout)["queues"][sqs_name]["purged"] == 3
    assert queue_counts(harness, "basic")[0] == 0


def test_wait_returns_once_queues_drain_and_times_out_on_a_stuck_message(harness):
    daemon = harness.start(defaults={"graceful_timeout": 1})
    send_batch(harness, "basic", [f"ok|{n}" for n in range(3)])

    drained = sqsctl(daemon, "wait", "basic", "--timeout", "30")

    assert drained.returncode == 0, drained.stderr
    assert {r["body"] for r in harness.records()} == {"ok|0", "ok|1", "ok|2"}
    assert harness.depth("basic") == 0

    harness.send("basic", "sleep:10|stuck")
    harness.wait_for_records(1, "start", body="sleep:10|stuck")
    started = time.monotonic()

    stuck = sqsctl(daemon, "wait", "--timeout", "2")

    assert stuck.returncode == 1, stuck.stdout + stuck.stderr
    assert 2 <= time.monotonic() - started < 6
    assert "timeout" in stuck.stderr
    assert daemon.pings()


# --- hostile clients -----------------------------------------------------------------------


def test_hostile_requests_get_errors_and_the_daemon_keeps_answering(harness):
    daemon = harness.start()

    with connect(daemon) as sock:
        for bad in (b'{"cmd": "ping"\n',                      # malformed JSON
                    bytes(range(256)).replace(b"\n", b"") + b"\n",  # binary garbage
                    b'{"cmd": "explode"}\n',                     # unknown command
                    b'{"cmd": "wake", "queue": "nosuch"}\n',     # unknown queue
                    b"[1, 2, 3]\n",                              # JSON, not an object
                    b'{"cmd": "ping", "v": 99}\n'):              # unknown protocol version
            reply = exchange(sock, bad)
            assert reply["ok"] is False, bad
            assert reply["error"], bad
            # ...and the same connection still serves, as does a new one.
            assert exchange(sock, b'{"cmd": "ping"}\n')["ok"] is True
            assert daemon.pings()
        assert "nosuch" in exchange(sock, b'{"cmd": "wake", "queue": "nosuch"}\n')["error"]

    with connect(daemon) as sock:
        oversized = b'{"cmd": "ping", "pad": "' + b"x" * (70 * 1024) + b'"}\n'
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(oversized)
        reply = read_line(sock)
        if reply:
            assert json.loads(reply)["ok"] is False
        assert closed_by_peer(sock), "an oversized request must close the connection"
    assert daemon.pings()

    with connect(daemon) as stalled:
        stalled.sendall(b'{"cmd": "pi')  # half a line, then silence
        assert daemon.pings()
        assert daemon.ctl("status")["ok"] is True
        assert exchange(stalled, b'ng"}\n')["ok"] is True  # finishing the line still works

    with connect(daemon) as vanished:
        vanished.sendall(b'{"cmd": "status"}\n')  # then gone without reading the reply
    assert daemon.pings()


def test_a_flood_of_idle_connections_does_not_lock_out_a_new_client(harness):
    needed = 400
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed + 100), hard))
    daemon = harness.start()

    flood = []
    try:
        for _ in range(300):
            flood.append(connect_patiently(daemon))
        # The daemon has seen every one of them before the newcomer arrives.
        wait_for(lambda: len(psutil.Process(daemon.pid).net_connections("unix")) >= 256 + 1,
                 timeout=5, what="the daemon to accept the idle connections")

        started = time.monotonic()
        reply = daemon.ctl("ping", timeout=5)
        assert reply["ok"] is True, reply
        assert time.monotonic() - started < 1.0
        assert sqsd_client.wake("basic", socket_path=str(daemon.socket_path), timeout=1.0), \
            "producers' wake-ups are refused while idle connections hog the daemon"
    finally:
        for sock in flood:
            sock.close()
    assert daemon.pings()


# --- the socket file -----------------------------------------------------------------------


def test_stale_socket_file_is_replaced_and_gets_the_configured_mode(harness):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(harness.socket_path))  # bound, then closed: nobody listens
    assert stat.S_ISSOCK(os.lstat(harness.socket_path).st_mode)

    daemon = harness.start(socket_mode="0660")

    assert stat.S_IMODE(os.lstat(harness.socket_path).st_mode) == 0o660
    assert daemon.pings()


def test_second_daemon_on_a_live_socket_exits_with_one_line_and_the_first_keeps_serving(
        harness):
    daemon = harness.start(socket_mode="0600")
    assert stat.S_IMODE(os.lstat(harness.socket_path).st_mode) == 0o600
    inode = os.lstat(harness.socket_path).st_ino
    workers = daemon.worker_pids()

    second = harness.run_sqsd("run", "-c", str(harness.config_path))

    assert second.returncode != 0
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert str(harness.socket_path) in lines[0]
    assert "Traceback" not in second.stderr
    assert daemon.pings()
    assert os.lstat(harness.socket_path).st_ino == inode
    assert daemon.worker_pids() == workers


# --- scale and shutdown --------------------------------------------------------------------


def test_scale_starts_and_stops_workers_of_a_queue(harness):
    daemon = harness.start()
    [first] = daemon.worker_pids("basic")

    up = sqsctl(daemon, "scale", "basic", "3")

    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == "basic: 3 processes"
    daemon.wait_for(lambda: daemon.running_workers_in_status() == 3
                    and len(daemon.worker_pids("basic")) == 3, what="3 basic workers")
    three = daemon.worker_pids("basic")
    assert first in three
    assert queue_status(daemon.status(), "basic")["processes"] == 3

    down = sqsctl(daemon, "scale", "basic", "1")

    assert down.returncode == 0, down.stderr
    daemon.wait_for(lambda: len(daemon.status()["workers"]) == 1
                    and daemon.worker_pids("basic") == {first}, what="back to 1 worker")
    gone = [daemon.seen[pid] for pid in three - {first}]
    daemon.wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                    for p in gone),
                    what="the extra workers to exit")
    assert queue_status(daemon.status(), "basic")["processes"] == 1


def test_sqsctl_shutdown_stops_gracefully_and_status_shows_stopping(harness):
    daemon = harness.start()
    harness.send("basic", "sleep:2|last")
    harness.wait_for_records(1, "start", body="sleep:2|last")

    result = sqsctl(daemon, "shutdown")
    status = daemon.status()  # while the handler still runs

    assert result.returncode == 0, result.stderr
    assert daemon.proc.wait(timeout=15) == 0
    [call] = harness.records(body="sleep:2|last")
    assert call["outcome"] == "ok"
    assert not daemon.socket_path.exists()
    assert harness.depth("basic") == 0
    assert status["stopping"] is True
    # The worker finishing its message is what the daemon waits for: status must show it.
    assert [(w["queue"], w["state"]) for w in status["workers"]] == [("basic", "stopping")]


# --- who may do what -----------------------------------------------------------------------

AS_OTHER_USER = """
import json, sys
import sqsd_client

path = sys.argv[1]
client = sqsd_client.Client(path)
result = {"ping": client.ping()["ok"], "status": client.status()["ok"],
          "wake": sqsd_client.wake("basic", socket_path=path, timeout=2.0)}
for cmd, args in [("reload", {}), ("shutdown", {}), ("config", {}), ("clear", {"queues": []}),
                  ("scale", {"queue": "basic", "processes": 2})]:
    try:
        client.call(cmd, **args)
        result[cmd] = "allowed"
    except sqsd_client.CommandFailed as exc:
        result[cmd] = str(exc)
print(json.dumps(result))
"""


def test_another_user_may_ping_status_and_wake_but_not_reload(harness, nobody):
    os.chmod(harness.socket_dir, 0o755)
    daemon = harness.start(socket_mode="0666")

    result = nobody.run(AS_OTHER_USER, str(daemon.socket_path), timeout=30)

    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert (seen["ping"], seen["status"], seen["wake"]) == (True, True, True)
    for cmd in ("reload", "shutdown", "config", "clear", "scale"):
        assert "permission denied" in seen[cmd], (cmd, seen[cmd])
    assert daemon.pings()
    assert len(daemon.status()["workers"]) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_the_other_user_test_passes_from_a_checkout_other_users_cannot_read(tmp_path):
    """Most clones live in a 0700 home directory: the test that runs a client as uid 65534
    must not depend on that user reading the checkout."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    checkout = home / "sqsd"
    ignore = shutil.ignore_patterns("__pycache__", ".venv", ".git", "*.egg-info", "node_modules")
    for name in ("sqsd", "sqsd_client", "tests"):
        shutil.copytree(REPO / name, checkout / name, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", checkout)
    test = "tests/integration/test_control.py::" \
           "test_another_user_may_ping_status_and_wake_but_not_reload"

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", test],
        cwd=checkout, env={**child_env(), "PYTHONPATH": str(checkout)},
        capture_output=True, text=True, timeout=180,
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout or "SKIPPED" in result.stdout, result.stdout
