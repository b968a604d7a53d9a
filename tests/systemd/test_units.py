"""The shipped units under a real systemd (252, Debian bookworm) booted in a container.

Each check does what a user or an operator does (systemctl, sqsctl, producers' wake-ups,
kill) and looks at what systemd and the daemon show. They run in this order on one
container; each starts from sqsd.service running the base configuration.
"""

import re
import time

from .conftest import report
from .machine import (
    BASE_CONFIG,
    BASE_QUEUES,
    GRACEFUL_TIMEOUT,
    PYTHON,
    RESTART_SEC,
    WATCHDOG_SEC,
    sqsd_config,
    wait_for,
)

SOCKET = "/run/sqsd/sqsd.sock"
WAKE = f"import sqsd_client; print(sqsd_client.wake('basic', socket_path='{SOCKET}'))"


def test_boot_starts_sqsd_through_type_notify_with_a_status_line(machine):
    show = machine.show("sqsd.service", "Type", "ActiveState", "SubState", "NotifyAccess",
                        "StatusText", "WatchdogUSec", "NRestarts")
    assert (show["Type"], show["ActiveState"], show["SubState"]) == ("notify", "active",
                                                                      "running"), show
    assert show["NotifyAccess"] == "main"
    assert show["WatchdogUSec"] == f"{WATCHDOG_SEC}s"
    assert show["NRestarts"] == "0"
    workers = machine.wait_workers(len(BASE_QUEUES))
    status = wait_for(lambda: machine.show("sqsd.service", "StatusText")["StatusText"],
                      10, "a STATUS= line")
    assert re.fullmatch(r"\d+ workers? running.*", status), status
    text = machine.systemctl("status", "sqsd.service").stdout
    assert f"Status: \"{status}" in text, text
    assert "Traceback" not in machine.journal()
    report("boot", f"Type=notify: active (running), {len(workers)} workers, "
                   f"systemctl status shows Status: \"{status}\"")


def test_clients_group_can_ping_status_and_wake_after_a_fresh_boot_and_others_cannot(machine):
    """Issue 17, bug 1: RuntimeDirectory=sqsd re-owned the socket to sqsd:sqsd when the
    service first started after a boot, and `sqsctl ping` as a producer was refused."""
    check_clients(machine, machine.main_pid())
    assert machine.stat("/run/sqsd") == "sqsd sqsd 755 directory"
    assert machine.stat(SOCKET) == "sqsd sqsd-clients 660 socket"
    # Restarts and reloads keep it that way.
    machine.systemctl("restart", "sqsd.service")
    main_pid = machine.main_pid()
    machine.systemctl("reload", "sqsd.service")
    assert machine.stat(SOCKET) == "sqsd sqsd-clients 660 socket"
    check_clients(machine, main_pid)
    report("clients", "sqsd-clients member: ping, status, wake, sqsd_client.wake ok after a "
                      "fresh boot, a restart and a reload; outsider: Permission denied")


def check_clients(machine, main_pid: int) -> None:
    ping = machine.sqsctl("ping", user="producer")
    assert ping.stdout.startswith(f"pong from sqsd pid {main_pid} "), ping.stdout
    status = machine.sqsctl("status", user="producer").stdout
    assert "basic" in status and "slow" in status, status
    machine.wait_workers(len(BASE_QUEUES))
    wake = machine.sqsctl("wake", "basic", user="producer")
    assert wake.stdout.strip() == "woke 1 worker(s)", wake.stdout
    assert machine.sh([PYTHON, "-c", WAKE], user="producer").stdout.strip() == "True"
    # Privileged commands stay refused to the group.
    refused = machine.sqsctl("reload", user="producer", check=False)
    assert refused.returncode == 1, refused

    outsider = machine.sqsctl("ping", user="outsider", check=False)
    assert outsider.returncode == 3, outsider
    assert "permission denied" in outsider.stderr.lower(), outsider.stderr
    assert "sqsd-clients" in outsider.stderr, outsider.stderr
    assert machine.sh([PYTHON, "-c", WAKE], user="outsider").stdout.strip() == "False"


def test_the_daemon_can_create_files_next_to_its_socket_in_its_sandbox(machine):
    """The master creates its attempts table at /run/sqsd/sqsd.attempts: inside the service's
    sandbox (its mount namespace), as its user, it can; the file system stays read-only
    there (ProtectSystem=strict), even for root. (/run itself stays writable for root in
    that namespace under systemd 252 in nspawn as soon as ProtectProc= or ProtectKernel*=
    are set; the sqsd user cannot write there anyway: /run is root's, mode 0755.)"""
    main_pid = machine.ensure_running()
    sandbox = ["nsenter", f"--target={main_pid}", "--mount", "--"]
    as_sqsd = ["setpriv", "--reuid=sqsd", "--regid=sqsd", "--init-groups"]
    machine.sh([*sandbox, *as_sqsd, "/bin/sh", "-c",
                "umask 077; : > /run/sqsd/probe.attempts; rm /run/sqsd/probe.attempts"])
    for path, error in (("/run/probe", "Permission denied"), ("/etc/probe", "Read-only")):
        refused = machine.sh([*sandbox, *as_sqsd, "/bin/sh", "-c", f": > {path}"], check=False)
        assert refused.returncode != 0 and error in refused.stderr, refused
    as_root = machine.sh([*sandbox, "/bin/sh", "-c", ": > /etc/probe"], check=False)
    assert as_root.returncode != 0 and "Read-only file system" in as_root.stderr, as_root
    report("run directory", "the service's user creates files in /run/sqsd from inside its "
                            "sandbox; /etc is read-only there, even for root")


def test_socket_activation_starts_the_service_for_the_first_client(machine):
    machine.ensure_running()
    machine.systemctl("stop", "sqsd.service")
    assert machine.show("sqsd.service", "ActiveState")["ActiveState"] == "inactive"
    assert machine.show("sqsd.socket", "ActiveState")["ActiveState"] == "active"

    started = time.monotonic()
    ping = machine.sqsctl("ping", user="producer")
    seconds = time.monotonic() - started

    main_pid = machine.main_pid()
    assert ping.stdout.startswith(f"pong from sqsd pid {main_pid} "), ping.stdout
    assert machine.show("sqsd.service", "ActiveState")["ActiveState"] == "active"
    machine.wait_workers(len(BASE_QUEUES))
    report("socket activation", f"service stopped, socket listening: the first `sqsctl ping` "
                                f"started it and was answered in {seconds:.1f} s")


def test_reload_applies_processes_keeping_the_main_pid_and_refuses_a_bad_file(machine):
    main_pid = machine.ensure_running()
    before = machine.workers()
    others = {pid for pid, queue in before.items() if queue != "basic"}

    two = {**BASE_QUEUES, "basic": {**BASE_QUEUES["basic"], "processes": 2}}
    machine.write("/etc/sqsd/sqsd.toml", sqsd_config(two))
    machine.systemctl("reload", "sqsd.service")
    after = machine.wait_workers(len(BASE_QUEUES) + 1)
    assert sorted(after.values()).count("basic") == 2
    assert others <= set(after), "a reload restarted workers whose settings did not change"
    assert machine.main_pid() == main_pid
    assert machine.show("sqsd.service", "ActiveState")["ActiveState"] == "active"

    bad = {**two, "basic": {**two["basic"], "batch_size": 11}}
    machine.write("/etc/sqsd/sqsd.toml", sqsd_config(bad))
    machine.systemctl("reload", "sqsd.service")  # ExecReload= is a signal: it cannot tell
    error = ("/etc/sqsd/sqsd.toml: [queues.basic] batch_size: expected an integer from 1 to "
             "10, got 11")
    wait_for(lambda: error in machine.journal(), 10, "the reload error in the journal")
    refused = machine.sqsctl("reload", check=False)
    assert (refused.returncode, refused.stderr.strip()) == (1, f"sqsctl: {error}")
    assert machine.workers() == after
    assert machine.main_pid() == main_pid
    assert machine.show("sqsd.service", "ActiveState")["ActiveState"] == "active"

    machine.write("/etc/sqsd/sqsd.toml", BASE_CONFIG)
    machine.systemctl("reload", "sqsd.service")
    machine.wait_workers(len(BASE_QUEUES))
    report("reload", "processes 1 -> 2 applied, same MainPID, other workers untouched; a bad "
                     "file: error in the journal and from `sqsctl reload` (exit 1), old "
                     "workers kept")


def test_watchdog_kills_a_stopped_master_and_systemd_restarts_it(machine):
    main_pid = machine.ensure_running()
    old_workers = set(machine.workers())
    restarts = int(machine.show("sqsd.service", "NRestarts")["NRestarts"])

    started = time.monotonic()
    machine.sh(["kill", "-STOP", str(main_pid)])
    killed_after = wait_for(lambda: not machine.alive(main_pid) and time.monotonic() - started,
                            WATCHDOG_SEC + 30, "the watchdog to kill the stopped master")

    def restarted():
        show = machine.show("sqsd.service", "MainPID", "ActiveState")
        return (show["ActiveState"] == "active" and int(show["MainPID"]) not in (0, main_pid)
                and time.monotonic() - started)

    active_after = wait_for(restarted, WATCHDOG_SEC + RESTART_SEC + 30, "a new master")
    journal = machine.journal()
    assert "Watchdog timeout" in journal, journal[-2000:]
    assert int(machine.show("sqsd.service", "NRestarts")["NRestarts"]) == restarts + 1
    assert not any(machine.alive(pid) for pid in old_workers)
    machine.wait_workers(len(BASE_QUEUES))
    margin = 10
    assert active_after <= WATCHDOG_SEC + RESTART_SEC + margin, active_after
    report("watchdog", f"SIGSTOP -> killed after {killed_after:.1f} s, new master active "
                       f"after {active_after:.1f} s (WatchdogSec={WATCHDOG_SEC}, "
                       f"RestartSec={RESTART_SEC})")


def test_stop_lets_busy_handlers_finish_and_gives_the_rest_back(machine):
    machine.ensure_running()
    tag = f"stop{time.time_ns()}"
    bodies = [f"4 {tag}-{n}" for n in range(5)]
    machine.sqs("send", "slow", *bodies)
    wait_for(lambda: [r for r in machine.records() if r["event"] == "start"
                      and tag in r["body"]], 20, "a handler to start")

    started = time.monotonic()
    machine.systemctl("stop", "sqsd.service")
    seconds = time.monotonic() - started

    mine = [r for r in machine.records() if tag in r["body"]]
    begun = {r["body"] for r in mine if r["event"] == "start"}
    finished = {r["body"] for r in mine if r["event"] == "end"}
    assert begun and begun == finished, mine
    counts = machine.counts("slow")
    assert counts == {"visible": len(bodies) - len(finished), "in_flight": 0}, counts
    assert seconds < GRACEFUL_TIMEOUT, seconds
    assert machine.show("sqsd.service", "ActiveState", "MainPID") == {
        "ActiveState": "inactive", "MainPID": "0"}
    left = machine.sh("ps -eo pid,args | grep -E 'sqsd: |sleep 600' | grep -v grep || true").stdout
    assert left.strip() == "", left
    report("stop", f"{len(finished)} busy handler(s) finished, {counts['visible']} unstarted "
                   f"message(s) visible again at once, 0 in flight, no process left; "
                   f"`systemctl stop` took {seconds:.1f} s")
    # Let the given-back messages be handled, so later checks start from empty queues.
    machine.ensure_running()
    wait_for(lambda: machine.counts("slow") == {"visible": 0, "in_flight": 0}, 60,
             "the given-back messages to be handled")


def test_kill_mode_mixed_cleans_up_after_a_sigkilled_master(machine):
    main_pid = machine.ensure_running()
    old_workers = set(machine.workers())
    tag = f"stray{time.time_ns()}"
    machine.sqs("send", "stray", tag)
    [record] = wait_for(lambda: [r for r in machine.records() if r["body"] == tag], 20,
                        "the stray handler")
    stray = record["stray"]
    assert machine.alive(stray)

    machine.systemctl("kill", "--signal=KILL", "--kill-who=main", "sqsd.service")

    def restarted():
        show = machine.show("sqsd.service", "MainPID", "ActiveState")
        return show["ActiveState"] == "active" and int(show["MainPID"]) not in (0, main_pid)

    wait_for(restarted, RESTART_SEC + 30, "systemd to restart the service")
    assert not machine.alive(stray), "KillMode=mixed left a handler's process behind"
    assert not any(machine.alive(pid) for pid in old_workers)
    assert "status=9/KILL" in machine.journal()
    machine.wait_workers(len(BASE_QUEUES))
    report("KillMode=mixed", "master SIGKILLed: its workers and a handler's detached process "
                             "killed, service restarted")


def test_exit_78_is_not_restarted(machine):
    machine.ensure_running()
    missing = sqsd_config({"missing": {"receiver": "sqsd_systemd_receivers:record"}},
                          create_queues=False)
    machine.write("/etc/sqsd/sqsd.toml", missing)
    restarts = int(machine.show("sqsd.service", "NRestarts")["NRestarts"])
    machine.systemctl("restart", "sqsd.service", check=False)
    wait_for(lambda: machine.show("sqsd.service", "ActiveState")["ActiveState"] == "failed", 30,
             "sqsd.service to fail")
    time.sleep(RESTART_SEC + 2)
    show = machine.show("sqsd.service", "ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert show == {"ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "78",
                    "NRestarts": str(restarts)}, show
    machine.write("/etc/sqsd/sqsd.toml", BASE_CONFIG)
    machine.ensure_running()
    report("exit 78", "every queue missing: master exited 78, unit failed, not restarted "
                      "(RestartPreventExitStatus)")


def test_two_template_instances_run_side_by_side(machine):
    instances = ("alpha", "beta")
    for name in instances:
        machine.write(f"/etc/sqsd/{name}.toml", sqsd_config(
            {"basic": BASE_QUEUES["basic"]}, socket=f"/run/sqsd/{name}.sock", prefix=f"{name}_"))
    units = [f"sqsd@{n}.{kind}" for n in instances for kind in ("socket", "service")]
    machine.systemctl("start", *units)
    try:
        pids = {}
        for name in instances:
            sock = f"/run/sqsd/{name}.sock"
            assert machine.stat(sock) == "sqsd sqsd-clients 660 socket"
            pids[name] = machine.main_pid(f"sqsd@{name}.service")
            ping = machine.sqsctl("--socket", sock, "ping", user="producer")
            assert ping.stdout.startswith(f"pong from sqsd pid {pids[name]} "), ping.stdout
            workers = machine.wait_workers(1, socket=sock)
            [queue] = machine.status(sock)["queues"]
            assert queue["url_name"] == f"{name}_basic"
            assert set(workers).isdisjoint(machine.workers())  # and not sqsd.service's
        assert len(set(pids.values())) == 2
        machine.systemctl("reload", "sqsd@alpha.service")
        assert machine.main_pid("sqsd@alpha.service") == pids["alpha"]
        assert machine.main_pid("sqsd@beta.service") == pids["beta"]
        assert machine.sqsctl("--socket", "/run/sqsd/sqsd.sock", "ping", user="producer")
    finally:
        machine.systemctl("stop", *units)
    for name in instances:
        assert machine.sh(["test", "-e", f"/run/sqsd/{name}.sock"], check=False).returncode == 1
    assert machine.stat(SOCKET) == "sqsd sqsd-clients 660 socket"
    report("sqsd@", f"sqsd@alpha (pid {pids['alpha']}) and sqsd@beta (pid {pids['beta']}) "
                    f"side by side, each on its own socket and queues")


def test_reload_keeps_the_embedded_local_endpoint(machine):
    """Issue 17, bug 2: `systemctl reload` of a daemon with endpoint_url = "local" replaced
    every worker, which then crashed on the endpoint "local"."""
    sock = "/run/sqsd/local.sock"
    machine.write("/etc/sqsd/local.toml", sqsd_config(
        {"basic": BASE_QUEUES["basic"]}, socket=sock, endpoint_url="local"))
    units = ["sqsd@local.socket", "sqsd@local.service"]
    machine.systemctl("start", *units)
    try:
        main_pid = machine.main_pid("sqsd@local.service")
        before = machine.wait_workers(1, socket=sock)
        machine.systemctl("reload", "sqsd@local.service")
        wait_for(lambda: "configuration reloaded" in machine.journal("sqsd@local.service"), 10,
                 "the reload")
        time.sleep(2)  # a replaced worker would show up (and crash) within this
        assert machine.wait_workers(1, socket=sock) == before
        assert machine.main_pid("sqsd@local.service") == main_pid
        assert "Invalid endpoint" not in machine.journal("sqsd@local.service")
    finally:
        machine.systemctl("stop", *units)
    report("local endpoint", 'endpoint_url = "local" under the hardened unit: reload kept '
                             "the worker and the embedded endpoint")


def test_systemd_analyze_security_rates_the_service_ok(machine):
    machine.ensure_running()
    ratings = {}
    for unit in ("sqsd.service", "sqsd@alpha.service"):
        out = machine.sh(["systemd-analyze", "security", "--no-pager", unit]).stdout
        [line] = [ln for ln in out.splitlines() if "Overall exposure level" in ln]
        ratings[unit] = line.split(":", 1)[1].strip()
        exposure = float(ratings[unit].split()[0])
        assert exposure <= 1.5, line
    report("security", ", ".join(f"{unit}: {rating}" for unit, rating in ratings.items()))


def test_clients_keep_their_access_after_a_reboot(machine):
    seconds = machine.reboot()
    machine.wait_workers(len(BASE_QUEUES))
    check_clients(machine, machine.main_pid())
    assert machine.stat(SOCKET) == "sqsd sqsd-clients 660 socket"
    report("reboot", f"second boot in {seconds:.1f} s: the clients group still gets in")
