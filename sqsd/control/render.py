"""Control replies for people: ``sqsctl status`` tables and ``sqsctl clear`` lines.

The replies themselves are data (sqsd.control.status); ``sqsctl --json`` prints them as is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqsd.states import CRASHLOOP, ProgramState, WorkerState

WIDTH = 100  # `sqsctl status` fits this many columns; --wide shows everything
Paint = Callable[[str, str | None], str]  # (text, colour name or None) -> text to print


def _ellipsis() -> str:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "…".encode(encoding)
    except (LookupError, UnicodeEncodeError):
        return "..."
    return "…"


ELLIPSIS = _ellipsis()


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


def render_status(
    status: dict[str, Any], *, width: int | None = WIDTH, paint: Paint | None = None
) -> str:
    """The status reply as aligned tables for people: workers grouped by queue and suffix,
    then queue depths with each queue's dead-letter queue. Within ``width`` columns long
    names are shortened with an ellipsis (``width=None``: everything in full). A third
    table, when a queue autoscales or was scaled, gives each one's last scaling decision."""
    paint = paint or _plain
    header = f"sqsd pid {status['pid']}  up {duration(status['uptime'])}  config "
    header += shorten(status["config"], (width or 10**6) - len(header), middle=True)
    if status.get("stopping"):
        header += "  " + paint("STOPPING", "yellow")
    sections = [
        header,
        "",
        table(WORKER_COLUMNS, [_worker_row(w) for w in _grouped(status)], width, paint),
        "",
        table(QUEUE_COLUMNS, _queue_rows(status), width, paint),
    ]
    scaling_rows = _scaling_rows(status)
    if scaling_rows:
        sections += ["", table(SCALING_COLUMNS, scaling_rows, width, paint)]
    return "\n".join(sections)


@dataclass(frozen=True)
class Column:
    header: str
    numeric: bool = False  # right-aligned
    shrink_to: int = 0  # > 0: a name that gives way (down to this width) to fit the table
    middle: bool = True  # shortened in the middle (names keep their suffix), else at the end
    first: bool = False  # gives way before the other shrinkable columns


WORKER_COLUMNS = (
    Column("QUEUE", shrink_to=8),
    Column("PID", numeric=True),
    Column("STATE"),
    Column("FOR", numeric=True),
    Column("DONE", numeric=True),
    Column("FAIL", numeric=True),
    Column("RETRY", numeric=True),
    Column("DLQ", numeric=True),
    Column("RESTARTS", numeric=True),
    Column("RSS", numeric=True),
    Column("LAST EXIT", shrink_to=12, middle=False, first=True),
)
QUEUE_COLUMNS = (
    Column("QUEUE", shrink_to=10),
    Column("SQS NAME", shrink_to=10),
    Column("PROCS", numeric=True),
    Column("VISIBLE", numeric=True),
    Column("IN FLIGHT", numeric=True),
    Column("DELAYED", numeric=True),
    Column("AGE", numeric=True),
)
SCALING_COLUMNS = (
    Column("QUEUE", shrink_to=10),
    Column("LAST SCALING", shrink_to=20, middle=False, first=True),
)
STATE_COLOURS = {
    WorkerState.BUSY.label: "green",
    WorkerState.RETRYING.label: "yellow",
    WorkerState.STOPPING.label: "yellow",
    CRASHLOOP: "red",
    ProgramState.FATAL.name.lower(): "red",
}
Cell = str | tuple[str, str | None]  # text, or text and its colour


def _grouped(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Workers in the order of the queue table (configuration order), each queue and
    suffix together, by process index: a worker added by ``scale`` sits with its queue."""
    order = {(q["queue"], q["suffix"]): i for i, q in enumerate(status["queues"])}
    last = len(order)
    return sorted(
        status["workers"],
        key=lambda w: (order.get((w["queue"], w["suffix"]), last), w.get("index", 0)),
    )


def _worker_row(w: dict[str, Any]) -> list[Cell]:
    state = w["state"]
    colour = STATE_COLOURS.get(state)
    if state == WorkerState.BUSY.label and w.get("slots", 1) > 1:
        state = f"busy {w.get('busy', 0)}/{w['slots']}"
    elif state == WorkerState.BUSY.label:
        state = f"busy {(w.get('message_id') or '')[:8]}"
    elif state == WorkerState.IDLE.label:
        state = f"idle {duration(w.get('idle_seconds', 0))} left"
    elif state == CRASHLOOP and "retry_in" in w:
        state = f"crashloop retry {duration(w['retry_in'])}"
    dead_lettered = w.get("dead_lettered")
    return [
        _label(w),
        str(w.get("pid") or "-"),
        (state, colour),
        duration(w.get("state_seconds", w.get("message_seconds"))),
        _number(w.get("processed")),
        _number(w.get("failed")),
        _number(w.get("retried")),
        (_number(dead_lettered), "yellow" if dead_lettered else None),
        (_number(w["restarts"]), "yellow" if w["restarts"] else None),
        _mib(w.get("rss")),
        w.get("last_exit") or "-",
    ]


def _queue_rows(status: dict[str, Any]) -> list[list[Cell]]:
    """One row per queue and suffix; each dead-letter queue after the last queue using it."""
    dead_letters = {d["url_name"]: d for d in status.get("dead_letters", [])}
    last_user = {q.get("dead_letter"): i for i, q in enumerate(status["queues"])}
    rows: list[list[Cell]] = []
    for i, q in enumerate(status["queues"]):
        rows.append([_label(q), q["url_name"], _processes(q), *_depth_cells(q, False)])
        dead_letter = dead_letters.get(q.get("dead_letter") or "")
        if dead_letter is not None and last_user[dead_letter["url_name"]] == i:
            owners = dict.fromkeys(label.partition(":")[0] for label in dead_letter["queues"])
            label = ",".join(owners) + " DLQ"
            rows.append([label, dead_letter["url_name"], "-", *_depth_cells(dead_letter, True)])
    return rows


def _processes(queue: dict[str, Any]) -> str:
    """A queue's process count: "3 (1-8)" when autoscaling, "2 pinned" after `sqsctl scale`."""
    count = str(queue["processes"])
    if queue.get("pinned"):
        return f"{count} pinned"
    low, high = queue.get("min_processes"), queue.get("max_processes")
    return f"{count} ({low}-{high})" if high is not None and high != low else count


def _scaling_rows(status: dict[str, Any]) -> list[list[Cell]]:
    """Each queue's last scaling decision and how long ago (queues never scaled: none)."""
    return [
        [_label(q), f"{duration(last['seconds_ago'])} ago {last['text']}"]
        for q in status["queues"]
        if (last := q.get("last_scaling"))
    ]


def _depth_cells(entry: dict[str, Any], dead_letter: bool) -> list[Cell]:
    if entry.get("depth_error") is not None:
        return [("error", "red")] * 3 + [duration(entry.get("depth_age"))]
    visible = entry.get("visible")
    return [
        (_count(visible), "red" if dead_letter and visible else None),
        _count(entry.get("in_flight")),
        _count(entry.get("delayed")),
        duration(entry.get("depth_age")),
    ]


def _label(entry: dict[str, Any]) -> str:
    return f"{entry['queue']}:{entry['suffix']}" if entry.get("suffix") else entry["queue"]


def _count(value: int | None) -> str:
    return "?" if value is None else _number(value)


def _number(value: int | None) -> str:
    """A counter in at most 5 characters: 12345, 123k, 1.2M (exact figures in --json)."""
    if value is None:
        return "-"
    if value < 100_000:
        return str(value)
    if value < 1_000_000:
        return f"{value // 1000}k"
    return f"{value / 1_000_000:.1f}M" if value < 10_000_000 else f"{value // 1_000_000}M"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}M"


def _plain(text: str, colour: str | None) -> str:
    return text


def shorten(text: str, width: int, middle: bool) -> str:
    """``text`` in at most ``width`` characters, an ellipsis marking what was left out."""
    if len(text) <= width:
        return text
    if width <= len(ELLIPSIS):
        return text[:width]
    keep = width - len(ELLIPSIS)
    if not middle:
        return text[:keep] + ELLIPSIS
    tail = keep // 2
    for separator in (":", "__"):  # a queue's suffix is what tells its rows apart
        if separator in text and len(text) - text.rindex(separator) <= keep - 4:
            tail = max(tail, len(text) - text.rindex(separator))
            break
    return text[: keep - tail] + ELLIPSIS + text[len(text) - tail :]


def table(
    columns: tuple[Column, ...], rows: list[list[Cell]], width: int | None, paint: Paint
) -> str:
    cells = [[(c, None) if isinstance(c, str) else c for c in row] for row in rows]
    widths = [
        max([len(col.header)] + [len(row[i][0]) for row in cells]) for i, col in enumerate(columns)
    ]
    if width is not None:
        _fit(columns, widths, width)
    lines = []
    for row in [[(col.header, None) for col in columns], *cells]:
        parts = []
        for col, w, (text, colour) in zip(columns, widths, row, strict=True):
            text = shorten(text, w, col.middle)
            padded = text.rjust(w) if col.numeric and text != col.header else text.ljust(w)
            parts.append(paint(padded, colour) if text.strip() else padded)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _fit(columns: tuple[Column, ...], widths: list[int], width: int) -> None:
    """Narrow the shrinkable columns until the table fits in ``width``: those that give way
    first, then the others, widest first."""
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    for stage in (True, False):
        while excess > 0:
            candidates = [
                i
                for i, col in enumerate(columns)
                if col.shrink_to and widths[i] > col.shrink_to and (col.first or not stage)
            ]
            if not candidates:
                break
            widest = max(candidates, key=lambda i: widths[i])
            widths[widest] -= 1
            excess -= 1
