"""``endpoint_url = "local"``: the embedded endpoint across reloads (issue 17, bug 2).

``sqsd run`` replaces "local" with the embedded endpoint's URL at start. A reload reads the
literal "local" again; it must come out as the same URL, or every worker is replaced as
"settings changed" and crashes on the endpoint "local".
"""

import signal

import pytest
from conftest import BASIC_RECEIVER, log_events

BASIC = {"basic": {"receiver": BASIC_RECEIVER}}


def reload(daemon, count: int) -> None:
    """SIGHUP, then wait for the ``count``th reload (good or bad) to be logged."""
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(
        lambda: len(log_events(daemon, "configuration reloaded"))
        + len(log_events(daemon, "reload failed; keeping the running configuration")) >= count,
        what=f"reload {count} to finish",
    )


def crashes(daemon) -> list[dict]:
    return [e for e in log_events(daemon) if e.get("event", "").startswith("worker crashed")]


def test_reload_treats_the_resolved_local_endpoint_as_unchanged(harness):
    daemon = harness.start(BASIC, endpoint_url="local")
    url = daemon.ctl("config")["sqsd"]["endpoint_url"]
    assert url.startswith("http://127.0.0.1:")
    before = daemon.worker_pids()

    reload(daemon, 1)

    assert daemon.ctl("config")["sqsd"]["endpoint_url"] == url
    assert daemon.worker_pids() == before
    assert not log_events(daemon, "worker exited; replacing")

    # A real change still applies, and the new worker reaches the same endpoint.
    harness.write_config({**BASIC, "other": {"receiver": BASIC_RECEIVER}},
                         sqsd={"endpoint_url": "local"})
    reload(daemon, 2)
    daemon.expected_workers = 2
    daemon.wait_ready()
    assert daemon.worker_pids("basic") == before
    workers = daemon.status()["workers"]
    assert {w["state"] for w in workers} <= {"polling", "idle"}, workers
    assert not crashes(daemon)
    assert "Invalid endpoint" not in daemon.log_text()


def test_switching_to_local_on_reload_is_refused_until_a_restart(harness):
    daemon = harness.start(BASIC)
    before = daemon.worker_pids()

    harness.write_config(BASIC, sqsd={"endpoint_url": "local"})
    reload(daemon, 1)

    [error] = log_events(daemon, "reload failed; keeping the running configuration")
    assert error["error"] == (f'{harness.config_path}: [sqsd] endpoint_url: "local" needs a '
                              "restart (the daemon started without its local endpoint)")
    assert daemon.ctl("config")["sqsd"]["endpoint_url"] == harness.endpoint
    assert daemon.worker_pids() == before


@pytest.mark.parametrize("endpoint_url", ["", "http://127.0.0.1:9"])
def test_local_flag_overrides_any_endpoint_at_start_and_on_reload(endpoint_url):
    from sqsd.config import Settings
    from sqsd.local import resolve

    settings = Settings(path="sqsd.toml", endpoint_url=endpoint_url)
    resolved = resolve(settings, "http://127.0.0.1:5000", forced=True)
    assert (resolved.endpoint_url, resolved.create_queues) == ("http://127.0.0.1:5000", True)
    assert resolve(settings, "http://127.0.0.1:5000") is settings
