"""Metrics against a real `sqsd run` on moto: `sqsctl metrics` and `GET /metrics`, read with
prometheus_client's own parsers, count what the daemon really did."""

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

from conftest import REPO, child_env, free_port
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as prometheus

BASIC_RECEIVER = "tests.receivers.basic:handle"
QUEUES = {
    "mixed": {"receiver": BASIC_RECEIVER, "dead_letter_queue": "mixed_dlq"},
    "good": {"receiver": BASIC_RECEIVER, "suffixes": ["", "big"]},
}


def sqsctl(daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from sqsd.cli import sqsctl_main; sqsctl_main()",
         "--socket", str(daemon.socket_path), *args],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=30,
    )


def samples(text: str, parse=openmetrics) -> dict[tuple, float]:
    """Every sample as {(name, (label, value), ...): value}."""
    return {
        (sample.name, *sorted(sample.labels.items())): sample.value
        for family in parse(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels) -> float:
    return found[(name, *sorted(labels.items()))]


def scrape(port: int, path: str = "/metrics", accept: str = "") -> tuple[int, str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def totals(daemon, queue: str, suffix: str = "") -> dict:
    [entry] = [q for q in daemon.status()["queues"]
               if q["queue"] == queue and q["suffix"] == suffix]
    return entry["totals"]


def test_metrics_count_what_the_daemon_sent_failed_and_dead_lettered(harness):
    port = free_port()
    daemon = harness.start(QUEUES, metrics_listen=f"127.0.0.1:{port}")
    for n in range(7):
        harness.send("mixed", f"ok|{n}")
    for n in range(3):
        harness.send("mixed", f"fail|{n}")
    for n in range(5):
        harness.send("good", f"ok|plain{n}")
    for n in range(4):
        harness.send("good", f"ok|big{n}", suffix="big")
    harness.wait_for_records(19)
    daemon.wait_for(lambda: totals(daemon, "mixed")["dead_lettered"] == 3
                    and totals(daemon, "good", "big")["processed"] == 4,
                    what="every outcome counted")

    result = sqsctl(daemon, "metrics")
    assert result.returncode == 0, result.stderr
    found = samples(result.stdout)

    mixed = {"queue": "mixed", "suffix": ""}
    assert value(found, "sqsd_messages_total", outcome="processed", **mixed) == 7
    assert value(found, "sqsd_messages_total", outcome="failed", **mixed) == 3
    assert value(found, "sqsd_messages_total", outcome="dead_lettered", **mixed) == 3
    assert value(found, "sqsd_messages_total", outcome="retried", **mixed) == 0
    # Every handler run is timed and aged, whatever its outcome.
    assert value(found, "sqsd_handler_seconds_count", **mixed) == 10
    assert value(found, "sqsd_message_age_seconds_count", **mixed) == 10
    assert value(found, "sqsd_handler_seconds_bucket", le="+Inf", **mixed) == 10
    # Each dead-lettered message was sent to the dead-letter queue.
    assert value(found, "sqsd_sqs_requests_total", action="SendMessage", **mixed) == 3
    for suffix, sent in (("", 5), ("big", 4)):
        good = {"queue": "good", "suffix": suffix}
        assert value(found, "sqsd_messages_total", outcome="processed", **good) == sent
        assert value(found, "sqsd_handler_seconds_count", **good) == sent
        assert value(found, "sqsd_message_age_seconds_count", **good) == sent
        assert value(found, "sqsd_messages_total", outcome="failed", **good) == 0
        states = {dict(k[1:])["state"]: v for k, v in found.items()
                  if k[0] == "sqsd_workers" and dict(k[1:]).items() >= good.items()}
        assert sum(states.values()) == 1 and set(states) <= {"idle", "polling"}
        receives = value(found, "sqsd_sqs_requests_total", action="ReceiveMessage", **good)
        requests = sum(v for k, v in found.items()
                       if k[0] == "sqsd_sqs_requests_total" and ("suffix", suffix) in k
                       and ("queue", "good") in k)
        assert receives >= 1
        cost = value(found, "sqsd_sqs_cost_dollars_total", **good)
        assert abs(cost - requests * 0.40 / 1e6) < 1e-12  # small messages: one chunk each
    assert value(found, "sqsd_info", version="0.1.0") == 1
    assert value(found, "sqsd_start_time_seconds") > 1.7e9

    # The same figures over HTTP, in both formats.
    status, content_type, text = scrape(port, accept="application/openmetrics-text")
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    over_http = samples(text)
    assert value(over_http, "sqsd_messages_total", outcome="dead_lettered", **mixed) == 3
    assert value(over_http, "sqsd_handler_seconds_count", queue="good", suffix="big") == 4
    status, content_type, text = scrape(port)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    plain = samples(text, prometheus)
    assert value(plain, "sqsd_messages_total", outcome="processed", **mixed) == 7
    # Only GET /metrics.
    assert scrape(port, "/")[0] == 404
    assert scrape(port, "/metrics/../admin")[0] == 404

    # The queue depths a scrape asked for arrive for the next one.
    daemon.wait_for(
        lambda: ("sqsd_queue_messages", ("queue", "mixed"), ("state", "visible"),
                 ("suffix", "")) in samples(sqsctl(daemon, "metrics").stdout),
        what="queue depths in the metrics",
    )
    found = samples(sqsctl(daemon, "metrics").stdout)
    assert value(found, "sqsd_queue_messages", state="visible", queue="mixed_dlq",
                 suffix="") == 3
    assert value(found, "sqsd_queue_messages", state="visible", **mixed) == 0
    assert value(found, "sqsd_sqs_requests_total", action="GetQueueAttributes", **mixed) >= 1


def test_totals_survive_their_workers(harness):
    daemon = harness.start({"good": {"receiver": BASIC_RECEIVER}})
    for n in range(6):
        harness.send("good", f"ok|{n}")
    harness.wait_for_records(6)
    labels = {"queue": "good", "suffix": ""}
    daemon.wait_for(lambda: totals(daemon, "good")["processed"] == 6, what="6 processed")
    [pid] = daemon.worker_pids("good")

    # A crash: the worker's slot is gone, its counts are not.
    os.kill(pid, signal.SIGKILL)
    daemon.wait_for(lambda: daemon.worker_pids("good") - {pid}, what="a new worker")
    found = samples(sqsctl(daemon, "metrics").stdout)
    assert value(found, "sqsd_messages_total", outcome="processed", **labels) == 6
    assert value(found, "sqsd_handler_seconds_count", **labels) == 6
    assert value(found, "sqsd_worker_restarts_total", **labels) == 1

    # Scaled to nothing: still there, restarts included.
    assert sqsctl(daemon, "scale", "good", "0").returncode == 0
    daemon.wait_for(lambda: not daemon.worker_pids("good"), what="no worker of good")
    found = samples(sqsctl(daemon, "metrics").stdout)
    assert value(found, "sqsd_messages_total", outcome="processed", **labels) == 6
    assert value(found, "sqsd_worker_restarts_total", **labels) == 1
    # No worker, so no state has a series.
    assert not [k for k in found if k[0] == "sqsd_workers" and ("queue", "good") in k]


AS_OTHER_USER = """
import sys
import sqsd_client
sys.stdout.write(sqsd_client.Client(sys.argv[1]).metrics()["text"])
"""


def test_wakeups_are_counted_and_another_user_may_read_metrics(harness, nobody):
    harness.socket_dir.chmod(0o755)
    daemon = harness.start({"good": {"receiver": BASIC_RECEIVER, "suffixes": ["", "big"]}},
                           socket_mode="0666")
    assert sqsctl(daemon, "wake", "good").returncode == 0  # every suffix
    assert sqsctl(daemon, "wake", "good:big").returncode == 0
    found = samples(sqsctl(daemon, "metrics").stdout)
    assert value(found, "sqsd_wakeups_total", queue="good", suffix="") == 1
    assert value(found, "sqsd_wakeups_total", queue="good", suffix="big") == 2

    # Allowed to the same users as status.
    result = nobody.run(AS_OTHER_USER, str(daemon.socket_path), timeout=30)
    assert result.returncode == 0, result.stderr
    assert value(samples(result.stdout), "sqsd_wakeups_total", queue="good", suffix="big") == 2


def test_a_taken_metrics_port_is_one_line_and_exit_2(harness):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = harness.write_config({"good": {"receiver": BASIC_RECEIVER}},
                                      sqsd={"metrics_listen": f"127.0.0.1:{port}"})
        result = harness.run_sqsd("run", "-c", str(config))
    assert result.returncode == 2, result.stderr
    assert f"[sqsd] metrics_listen: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not harness.socket_path.exists()
