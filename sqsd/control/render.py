"""Control replies for people: ``sqsctl status`` tables and ``sqsctl clear`` lines.

The replies themselves are data (sqsd.control.status); ``sqsctl --json`` prints them as is.
"""

from __future__ import annotations

from typing import Any

from sqsd.states import CRASHLOOP, WorkerState


def render_clear(reply: dict[str, Any], purge: bool) -> str:
    """One line per queue: what was deleted (or purged) and what stayed in flight."""
    lines = []
    verb = "purged" if purge else "deleted"
    for name, result in reply["queues"].items():
        if "error" in result:
            lines.append(f"{name}: {result['error']}")
        else:
            count = result.get("purged", result.get("deleted", 0))
            in_flight = result.get("in_flight", 0)
            lines.append(f"{name}: {count} {verb}, {in_flight} in flight (not touched)")
    return "\n".join(lines)


def render_status(status: dict[str, Any]) -> str:
    """The status reply as aligned tables for people."""
    header = (
        f"sqsd pid {status['pid']}  up {_duration(status['uptime'])}  config {status['config']}"
    )
    if status.get("stopping"):
        header += "  STOPPING"
    worker_rows = [
        (
            "QUEUE",
            "PID",
            "STATE",
            "FOR",
            "DONE",
            "FAILED",
            "RETRIED",
            "DLQ",
            "RESTARTS",
            "RSS",
            "LAST EXIT",
        )
    ]
    for w in status["workers"]:
        state = w["state"]
        if state == WorkerState.BUSY.label:
            state = f"busy {w.get('message_id', '')[:8]}"
        elif state == WorkerState.IDLE.label:
            state = f"idle {w.get('idle_seconds', 0):.0f}s left"
        elif state == CRASHLOOP and "retry_in" in w:
            state = f"crashloop retry {w['retry_in']:.0f}s"
        worker_rows.append(
            (
                _label(w),
                str(w.get("pid") or "-"),
                state,
                _duration(w.get("state_seconds", w.get("message_seconds"))),
                str(w.get("processed", "-")),
                str(w.get("failed", "-")),
                str(w.get("retried", "-")),
                str(w.get("dead_lettered", "-")),
                str(w["restarts"]),
                _mib(w.get("rss")),
                w.get("last_exit") or "-",
            )
        )
    queue_rows = [("QUEUE", "SQS NAME", "PROCS", "VISIBLE", "IN FLIGHT", "DELAYED", "AGE")]
    for q in status["queues"]:
        unknown = "?" if q.get("depth_error") is None else "error"
        queue_rows.append(
            (
                _label(q),
                q["url_name"],
                str(q["processes"]),
                _count(q.get("visible"), unknown),
                _count(q.get("in_flight"), unknown),
                _count(q.get("delayed"), unknown),
                _duration(q.get("depth_age")),
            )
        )
    return "\n".join([header, "", _table(worker_rows), "", _table(queue_rows)])


def _label(entry: dict[str, Any]) -> str:
    return f"{entry['queue']}:{entry['suffix']}" if entry.get("suffix") else entry["queue"]


def _count(value: int | None, unknown: str) -> str:
    return unknown if value is None else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}M"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
