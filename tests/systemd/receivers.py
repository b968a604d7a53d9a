"""Handlers for the container suite, installed as /opt/sqsd-test/sqsd_systemd_receivers.py.

Each writes one JSON line per event to /var/log/sqsd/records.jsonl (the service's
LogsDirectory, the one place besides /run/sqsd that its sandbox lets it write).
"""

import json
import os
import subprocess
import time

RECORD = "/var/log/sqsd/records.jsonl"


def _record(event: str, message, **extra) -> None:
    entry = {"event": event, "queue": message.queue, "body": message.body,
             "pid": os.getpid(), "time": time.time(), **extra}
    with open(RECORD, "a") as out:
        out.write(json.dumps(entry) + "\n")


def record(message) -> None:
    _record("end", message)


def slow(message) -> None:
    """Body "SECONDS TAG": busy for that long."""
    _record("start", message)
    time.sleep(float(message.body.split()[0]))
    _record("end", message)


def stray(message) -> None:
    """Leaves a process behind in its own session: only the unit's cgroup still holds it
    (no parent-death signal reaches it), so only KillMode= can clean it up."""
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _record("end", message, stray=proc.pid)
