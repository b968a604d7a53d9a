"""Hardening (issue #11): no local user can lock out the control socket; no secret, symbolic
link or bad name gets through; a broken log stream stops nothing.

Real `sqsd run` processes against the moto server; another user is a real second uid (65534,
see tests/another_user.py).
"""

import fcntl
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO, Daemon, alive, expected_worker_count, log_events, wait_for

import sqsd_client

BASIC_RECEIVER = "tests.receivers.basic:handle"
BASIC = {"basic": {"receiver": BASIC_RECEIVER}}


def one_line(result: subprocess.CompletedProcess) -> str:
    """The single line a refused start prints on stderr (no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{result.stderr}"
    return lines[0]


def run_and_check(harness, config: Path, *args: str) -> tuple[str, str]:
    """`sqsd run` and `sqsd check` on a configuration both refuse it: their lines."""
    run = harness.run_sqsd("run", "-c", str(config), *args, timeout=30)
    check = harness.run_sqsd("check", "-c", str(config), timeout=30)
    assert run.returncode == 2, (run.returncode, run.stderr)
    assert check.returncode == 2, (check.returncode, check.stdout, check.stderr)
    return one_line(run), one_line(check)


# --- 1. the control socket cannot be locked out by another user ---------------------------

HOLD_WAITS = """
import json, selectors, socket, sys, time
path, count, hang_up = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "hang-up"
conns, refused = [], 0
selector = selectors.DefaultSelector()
for _ in range(count):
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    try:
        conn.sendall(b'{"cmd": "wait"}\\n')
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused and closed before our request went: its reply is still there to read
    conns.append(conn)
    selector.register(conn, selectors.EVENT_READ)
quiet_since = time.monotonic()
while time.monotonic() - quiet_since < 1.0:  # the daemon answers those it refuses at once
    for key, _ in selector.select(0.1):
        refused += b"too many connections" in key.fileobj.recv(4096)
        selector.unregister(key.fileobj)
        quiet_since = time.monotonic()
if hang_up:
    for conn in conns:
        conn.close()
print(json.dumps({"sent": count, "refused": refused}), flush=True)
if not hang_up:
    sys.stdin.read()  # hold them until the test closes our stdin
"""


def open_to_other_users(harness, **options) -> Daemon:
    harness.socket_dir.chmod(0o755)
    return harness.start(socket_mode="0666", **options)


def test_another_user_holding_hundreds_of_waits_cannot_lock_out_root(harness, nobody):
    daemon = open_to_other_users(harness)
    holder = nobody.popen(HOLD_WAITS, str(daemon.socket_path), "300", "hold",
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        held = json.loads(holder.stdout.readline())

        pings = [daemon.ctl("ping", timeout=2) for _ in range(20)]
        woken = sqsd_client.wake("basic", socket_path=str(daemon.socket_path), timeout=0.5)
        status = daemon.ctl("status")
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)

    assert held["refused"] >= 300 - 32, "another user got more than its share"
    assert all(p["ok"] for p in pings), [p for p in pings if not p["ok"]][:3]
    assert woken is True
    assert status["ok"] is True


def test_waits_of_clients_that_hang_up_are_dropped_at_once(harness, nobody):
    daemon = open_to_other_users(harness)

    flood = nobody.run(HOLD_WAITS, str(daemon.socket_path), "300", "hang-up", timeout=30)
    assert flood.returncode == 0, flood.stderr
    hung_up = time.monotonic()
    pings = [daemon.ctl("ping", timeout=2) for _ in range(5)]
    # A wait fetches queue depths every second; a fetch begun before the hang-up may end.
    earlier, forked = set(), set()
    while time.monotonic() < hung_up + 0.5:
        earlier |= daemon.query_children()
        time.sleep(0.02)
    while time.monotonic() < hung_up + 3.5:
        forked |= daemon.query_children() - earlier
        time.sleep(0.02)

    assert all(p["ok"] for p in pings), pings
    assert not forked, f"the master still queries SQS for waits nobody waits for: {forked}"


def request(daemon: Daemon, message: dict, timeout: float = 5.0) -> dict:
    """One raw request line (for fields that ``ctl``'s own arguments would shadow)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(daemon.socket_path))
        conn.sendall(json.dumps(message).encode() + b"\n")
        return json.loads(conn.makefile("rb").readline())


def test_wait_timeout_has_an_upper_bound(harness):
    daemon = harness.start()

    reply = request(daemon, {"cmd": "wait", "timeout": 10 * 365 * 86400})

    assert reply["ok"] is False
    assert "timeout must be" in reply["error"] and "86400" in reply["error"]


# --- 2. credentials never leave the daemon --------------------------------------------------

SECRET = "hunter2secret"


def test_endpoint_password_appears_in_no_reply_and_no_log_line(harness):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once this closes
    endpoint = f"http://sqsuser:{SECRET}@127.0.0.1:{port}"
    daemon = harness.start(endpoint_url=endpoint, ready=False)
    daemon.wait_for(daemon.pings, what="the control socket")
    daemon.wait_for(lambda: "Could not connect" in daemon.log_text(), timeout=30,
                    what="a worker to log its connection error")

    status = daemon.ctl("status", fresh=True, timeout=10)
    raw = json.dumps(status)

    [queue] = status["queues"]
    assert queue["depth_error"], status
    assert "***@127.0.0.1" in raw
    assert SECRET not in raw and "sqsuser" not in raw
    assert SECRET not in daemon.log_text()
    assert "***@127.0.0.1" in daemon.log_text()


# --- 3. failed_log is never written through a symbolic link ---------------------------------


def test_failed_log_that_is_a_symlink_is_refused_at_start(harness, tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("")
    harness.failed_log.symlink_to(target)
    config = harness.write_config(BASIC)

    run, check = run_and_check(harness, config)

    for line in (run, check):
        assert "failed_log" in line and "symbolic link" in line and str(config) in line
    assert target.read_text() == ""


def test_symlink_planted_at_failed_log_later_keeps_the_message_in_its_queue(harness, tmp_path):
    daemon = harness.start(defaults={"visibility_timeout": 30})
    target = tmp_path / "planted-target"
    target.write_text("")
    harness.failed_log.symlink_to(target)

    harness.send("basic", "fail|planted")
    harness.wait_for_records(1, body="fail|planted")
    daemon.wait_for(lambda: log_events(daemon, "failed_log not writable"),
                    what="the worker to refuse the link")

    assert target.read_text() == ""
    assert harness.depth("basic") == 1, "the message must stay in its queue"


def test_failed_log_is_created_0640(harness):
    umask = os.umask(0o022)
    try:
        harness.start()
    finally:
        os.umask(umask)

    harness.send("basic", "fail|mode")
    wait_for(harness.failed_lines, what="a failed_log line")

    assert stat.S_IMODE(harness.failed_log.stat().st_mode) == 0o640


# --- 4 and 11. socket problems at start: one line naming the key, exit 2 --------------------


def socket_case(harness, tmp_path: Path, case: str) -> tuple[dict, str]:
    """Set up one broken socket configuration: (sqsd options, key the line must name)."""
    if case == "regular file":
        harness.socket_path.write_text("precious")
        return {}, "socket"
    if case == "symlink":
        harness.socket_path.symlink_to(tmp_path / "dangling.sock")
        return {}, "socket"
    if case == "missing group":
        return {"socket_group": "no-such-group-sqsd"}, "socket_group"
    if case == "parent is a file":
        blocker = harness.socket_dir / "file"
        blocker.write_text("")
        return {"socket": str(blocker / "sqsd.sock")}, "socket"
    if case == "too long":
        return {"socket": str(harness.socket_dir / ("s" * 120))}, "socket"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["regular file", "symlink", "missing group",
                                  "parent is a file", "too long"])
def test_socket_problem_is_one_line_naming_the_key_in_run_and_check(harness, tmp_path, case):
    options, key = socket_case(harness, tmp_path, case)
    config = harness.write_config(BASIC, sqsd=options)

    run, check = run_and_check(harness, config)

    for line in (run, check):
        assert f"[sqsd] {key}:" in line, line
    if case == "regular file":
        assert harness.socket_path.read_text() == "precious"
    assert harness.sqs.list_queues(QueueNamePrefix=harness.prefix).get("QueueUrls", []) == []


def test_a_100_byte_socket_path_works(harness):
    base = str(harness.socket_dir) + "/"
    path = base + "s" * (100 - len(base))
    assert len(path) == 100
    harness.socket_path = Path(path)  # the harness's own checks follow it

    daemon = harness.start(socket=path)

    assert daemon.pings()
    assert stat.S_ISSOCK(os.stat(path).st_mode)


@pytest.mark.parametrize("missing", ["the directory", "only the socket"])
def test_socket_directory_that_cannot_be_written_names_the_key_and_the_directory(harness,
                                                                                missing):
    locked = harness.socket_dir / "locked"
    locked.mkdir(mode=0o555)
    directory = locked / "run" if missing == "the directory" else locked
    config = harness.write_config(BASIC, sqsd={"socket": str(directory / "sqsd.sock")})
    # As root, give up the capability that ignores file modes: like a user without rights.
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] \
        if os.geteuid() == 0 else []
    if prefix and not shutil.which("setpriv"):
        pytest.skip("needs setpriv to run sqsd without CAP_DAC_OVERRIDE")

    def sqsd(*args):
        return subprocess.run([*prefix, sys.executable, "-m", "sqsd", *args, "-c", str(config)],
                              cwd=REPO, env=harness.daemon_env(), capture_output=True,
                              text=True, timeout=30)

    run, check = sqsd("run"), sqsd("check")

    for result in (run, check):
        assert result.returncode == 2, (result.returncode, result.stderr)
        line = one_line(result)
        assert "[sqsd] socket:" in line and str(directory) in line, line


# --- 5. queue names follow SQS's rule ------------------------------------------------------


@pytest.mark.parametrize(("queues", "sqsd", "key"), [
    ({"my queue": {"receiver": BASIC_RECEIVER}}, {}, "[queues.my queue]"),
    ({"émails": {"receiver": BASIC_RECEIVER}}, {}, "[queues.émails]"),
    ({"a.b": {"receiver": BASIC_RECEIVER}}, {}, "[queues.a.b]"),
    ({"q" * 90: {"receiver": BASIC_RECEIVER}}, {}, f"[queues.{'q' * 90}]"),
    ({"q" * 78: {"receiver": BASIC_RECEIVER}}, {}, "at most 80"),  # too long with the prefix
    ({"basic": {"receiver": BASIC_RECEIVER, "suffixes": ["", "big one"]}}, {}, "suffixes"),
    ({"basic": {"receiver": BASIC_RECEIVER}}, {"queue_prefix": "prod."}, "queue_prefix"),
    ({"basic": {"receiver": BASIC_RECEIVER, "dead_letter_queue": "dead letter"}}, {},
     "dead_letter_queue"),
])
def test_queue_name_sqs_would_refuse_is_one_line_in_run_and_check(harness, queues, sqsd, key):
    config = harness.write_config(queues, sqsd=sqsd)

    run, check = run_and_check(harness, config)

    for line in (run, check):
        assert key in line and str(config) in line, line
    assert harness.sqs.list_queues(QueueNamePrefix=harness.prefix).get("QueueUrls", []) == []


def test_check_says_a_missing_queue_will_be_created_when_create_queues_is_on(harness):
    config = harness.write_config(BASIC)  # the harness's configs set create_queues = true

    result = harness.run_sqsd("check", "-c", str(config))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{harness.prefix}basic: does not exist yet; will be created" in result.stdout
    assert "create_queues = true" not in result.stdout


# --- 6 and 7. run's arguments, and modules that end the import -----------------------------


@pytest.mark.parametrize(("args", "expected"), [
    (["--suffix", "bogus"], "--suffix 'bogus'"),
    (["basic", "--suffix", "bogus"], "--suffix 'bogus'"),
    (["nosuch"], "'nosuch'"),
    (["basic:big"], "--suffix"),
])
def test_run_arguments_that_name_nothing_configured_are_one_line(harness, args, expected):
    config = harness.write_config({"basic": {"receiver": BASIC_RECEIVER,
                                             "suffixes": ["", "big"]}})

    result = harness.run_sqsd("run", "-c", str(config), *args, timeout=30)

    assert result.returncode == 2, result.stderr
    assert expected in one_line(result)
    assert harness.sqs.list_queues(QueueNamePrefix=harness.prefix).get("QueueUrls", []) == []


@pytest.mark.parametrize(("module", "expected"), [
    ("tests.receivers.exits_at_import", "called sys.exit(3)"),
    ("tests.receivers.interrupted_at_import", "KeyboardInterrupt"),
    ("tests.receivers.name_error_at_import",
     "NameError: name 'undefined_name' is not defined "
     "(tests/receivers/name_error_at_import.py, line 6)"),
])
def test_import_that_fails_is_one_line_naming_the_module(harness, module, expected):
    config = harness.write_config(BASIC, imports=[module])

    run, check = run_and_check(harness, config)

    for line in (run, check):
        assert f"[sqsd] imports: cannot import {module!r}" in line, line
        assert expected in line, line


# --- 8. producers ----------------------------------------------------------------------------

RESOLVE_LOCAL = """
import json, sys
import sqsd
producer = sqsd.configure(sys.argv[1])
print(json.dumps({"endpoint_url": producer.settings.endpoint_url}))
"""


def test_producer_of_another_user_finds_the_local_endpoint(harness, nobody):
    daemon = open_to_other_users(harness, endpoint_url="local")
    config = nobody.copy(harness.config_path)
    local = daemon.ctl("ping")["local_endpoint"]

    result = nobody.run(RESOLVE_LOCAL, str(config), timeout=30)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["endpoint_url"] == local
    assert local.startswith("http://127.0.0.1:")


# --- 10. a broken, closed or full log stream stops nothing ----------------------------------


class StreamDaemon(Daemon):
    """A daemon whose stdout and stderr are ``fd`` (a pipe or a socket), as under a shell
    pipeline or journald, instead of the harness's log file."""

    def __init__(self, harness, fd: int, queues=None, **sqsd_options):
        queues = queues or BASIC
        config = harness.write_config(queues, sqsd=sqsd_options)
        self.config_path = config
        self.log_path = harness.tmp_path / "no-log-file"
        self.socket_path = harness.socket_path
        self.expected_workers = expected_worker_count(queues)
        self.graceful_timeout = 10
        self.killed = False
        self.proc = subprocess.Popen([sys.executable, "-m", "sqsd", "run", "-c", str(config)],
                                     cwd=REPO, env=harness.daemon_env(), stdout=fd, stderr=fd)
        self.master = psutil.Process(self.proc.pid)
        self.seen = {}
        self._sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        harness.daemons.append(self)


def read_lines(fd: int, count: int) -> list[bytes]:
    lines = b""
    while lines.count(b"\n") < count:
        chunk = os.read(fd, 4096)
        assert chunk, "the stream closed early"
        lines += chunk
    return lines.split(b"\n")[:count]


@pytest.mark.parametrize("stream", ["pipe closed by head", "journal socket closed"])
def test_daemon_keeps_working_when_its_log_stream_breaks(harness, stream):
    if stream == "pipe closed by head":
        reader, writer = os.pipe()
    else:
        reader_sock, writer_sock = socket.socketpair()
        reader, writer = reader_sock.detach(), writer_sock.detach()
    daemon = StreamDaemon(harness, writer)
    os.close(writer)
    read_lines(reader, 2)  # `sqsd run ... 2>&1 | head -2`
    os.close(reader)

    daemon.wait_ready()
    harness.send("basic", "ok|after the break")
    harness.wait_for_records(1, body="ok|after the break")
    harness.send("basic", "fail|after the break")
    harness.wait_for_records(1, body="fail|after the break")
    harness.send("basic", "ok|still here")
    harness.wait_for_records(1, body="ok|still here")

    assert daemon.pings()
    assert daemon.proc.poll() is None
    assert len(daemon.workers()) == 1


def test_ctrl_c_with_the_tee_gone_stops_gracefully_and_leaves_no_worker(harness):
    reader, writer = os.pipe()
    daemon = StreamDaemon(harness, writer)
    os.close(writer)
    tee = threading.Thread(target=lambda: drain(reader), daemon=True)
    tee.start()
    daemon.wait_ready()
    harness.send("basic", "sleep:3|busy")
    harness.wait_for_records(1, "start", body="sleep:3|busy")
    worker_pids = daemon.worker_pids()

    os.close(reader)  # Ctrl-C killed tee: the pipe has no reader any more
    daemon.master.send_signal(signal.SIGINT)  # workers ignore SIGINT; the master stops them
    time.sleep(0.5)
    master_alive_meanwhile = daemon.proc.poll() is None
    code = daemon.proc.wait(timeout=15)
    left = [pid for pid in worker_pids if alive(daemon.seen[pid])]

    assert master_alive_meanwhile, "the master vanished while its worker was busy"
    assert code == 0
    assert not left, f"workers outlived the master: {left}"
    [end] = harness.records(body="sleep:3|busy")
    assert end["outcome"] == "ok"


def drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


def test_full_log_pipe_never_stalls_the_daemon(harness):
    reader, writer = os.pipe()
    fcntl.fcntl(writer, 1031, 4096)  # F_SETPIPE_SZ: the smallest pipe, nobody reading it
    daemon = StreamDaemon(harness, writer)
    os.close(writer)
    daemon.wait_ready()

    for n in range(30):  # each failure logs a traceback: far more than the pipe holds
        harness.send("basic", f"fail|{n}")
    harness.wait_for_records(30, timeout=60)
    reloaded = daemon.ctl("reload", timeout=5)  # the master logs as it reloads
    pings = [daemon.ctl("ping", timeout=2) for _ in range(5)]
    harness.send("basic", "ok|after")
    harness.wait_for_records(1, body="ok|after")

    drained = []
    tee = threading.Thread(target=lambda: drained.append(read_all(reader)), daemon=True)
    tee.start()
    harness.send("basic", "ok|noted")  # the worker's next line says how many it dropped
    harness.wait_for_records(1, body="ok|noted")
    daemon.shut_down()
    tee.join(timeout=10)
    os.close(reader)

    assert reloaded["ok"] is True
    assert all(p["ok"] for p in pings)
    assert b"log lines dropped" in drained[0]


def read_all(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return data
