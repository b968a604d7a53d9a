"""Append-only record of handler calls, shared by the daemon's workers and the tests.

Each call writes one JSON line with a single ``os.write`` on an ``O_APPEND``
descriptor, so lines from concurrent worker processes never interleave.
"""

import json
import os
import time

RECORD_ENV = "SQSD_TEST_RECORD"


def record(event: str, **fields) -> None:
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    line = json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **fields})
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def message_fields(message) -> dict:
    """What a test needs to know about a received ``sqsd.Message``."""
    return {
        "queue": message.queue,
        "suffix": message.suffix,
        "message_id": message.id,
        "body": message.body,
        "receive_count": message.receive_count,
    }
