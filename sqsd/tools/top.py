"""``sqsctl top``: queues and workers live, from ``status`` once a second.

The figures are data first (``Frame``, from two status replies some seconds apart), then
text (``render``): the same lines go to a full-screen curses view on a terminal and, one
block after another, to a pipe or a file. Rates come from the running totals the daemon
keeps per queue (exited workers included), so a recycled worker does not make them dip.

Queue depths cost SQS calls (two per queue, one once URLs are known): they are asked
afresh every ``depth_interval`` seconds only; the other refreshes take the daemon's last
known figures, whose age the header shows.
"""

from __future__ import annotations

import collections
import contextlib
import curses
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from sqsd.control.render import duration, shorten
from sqsd_client import CommandFailed, DaemonUnavailable

Fetch = Callable[[bool], dict[str, Any]]  # fresh depths? -> the status reply
RATE_WINDOW = 5.0  # seconds the rates are taken over (or since the first refresh)
STATE_COLOURS = {"busy": "green", "retrying": "yellow", "stopping": "yellow",
                 "crashloop": "red", "fatal": "red"}  # fmt: skip


@dataclass
class Sample:
    """What one status reply says, reduced to the numbers rates are taken from."""

    at: float
    queues: dict[tuple[str, str], tuple[int, int, float]]  # handled, SQS calls, cost
    workers: dict[int, tuple[int, int]]  # pid -> handled, SQS calls


def sample(status: dict[str, Any], at: float) -> Sample:
    queues = {}
    for q in status.get("queues", []):
        totals = q.get("totals") or {}
        handled = sum(totals.get(k, 0) for k in ("processed", "failed", "retried"))
        calls = sum((q.get("sqs_requests") or {}).values())
        queues[(q["queue"], q["suffix"])] = (handled, calls, float(q.get("cost") or 0.0))
    workers = {}
    for w in status.get("workers", []):
        if w.get("pid"):
            handled = sum(w.get(k) or 0 for k in ("processed", "failed", "retried"))
            workers[w["pid"]] = (handled, sum((w.get("api") or {}).values()))
    return Sample(at, queues, workers)


class Rates:
    """Rates over the last RATE_WINDOW seconds of samples."""

    def __init__(self) -> None:
        self.samples: collections.deque[Sample] = collections.deque()

    def add(self, status: dict[str, Any], at: float) -> None:
        self.samples.append(sample(status, at))
        while len(self.samples) > 2 and at - self.samples[1].at >= RATE_WINDOW:
            self.samples.popleft()

    def _span(self) -> tuple[Sample, Sample, float] | None:
        if len(self.samples) < 2:
            return None
        first, last = self.samples[0], self.samples[-1]
        seconds = last.at - first.at
        return (first, last, seconds) if seconds > 0 else None

    def queue(self, key: tuple[str, str]) -> tuple[float, float, float] | None:
        """(messages/s, SQS calls/h, dollars/h) of a queue and suffix."""
        span = self._span()
        if span is None or key not in span[0].queues or key not in span[1].queues:
            return None
        first, last, seconds = span
        (h0, c0, d0), (h1, c1, d1) = first.queues[key], last.queues[key]
        return (h1 - h0) / seconds, 3600 * (c1 - c0) / seconds, 3600 * (d1 - d0) / seconds

    def worker(self, pid: int) -> tuple[float, float] | None:
        """(messages/s, SQS calls/h) of a worker process."""
        span = self._span()
        if span is None or pid not in span[0].workers or pid not in span[1].workers:
            return None
        first, last, seconds = span
        (h0, c0), (h1, c1) = first.workers[pid], last.workers[pid]
        return (h1 - h0) / seconds, 3600 * (c1 - c0) / seconds


Line = tuple[str, str | None]  # text, colour of the whole line (None: plain)


def render(status: dict[str, Any], rates: Rates, width: int, error: str = "") -> list[Line]:
    """The view as lines of at most ``width`` characters."""
    price = float(status.get("sqs_price_per_million") or 0.0)
    queues = status.get("queues", [])
    totals = [rates.queue((q["queue"], q["suffix"])) for q in queues]
    known = [t for t in totals if t is not None]
    header = (
        f"sqsd pid {status.get('pid')}  up {duration(status.get('uptime'))}  "
        f"{_plural(sum(1 for w in status.get('workers', []) if w.get('pid')), 'worker')}  "
        f"depths {_age(queues)} old  q quits"
    )
    figures = (
        f"{_rate(sum(t[0] for t in known) if known else None)} msg/s  "
        f"{_count(sum(t[1] for t in known) if known else None)} SQS calls/h  "
        f"${_dollars(sum(t[2] for t in known) if known else None)}/h  "
        f"${_dollars(sum(q.get('cost') or 0.0 for q in queues))} since start"
    )
    lines: list[Line] = [(header[:width], None), (figures[:width], None)]
    if error:
        lines.append((shorten(error, width, middle=False), "red"))
    if status.get("stopping"):
        lines.append(("STOPPING", "yellow"))
    lines.append(("", None))
    rows = [["QUEUE", "PROCS", "MSG/S", "DONE", "FAILED", "DLQ", "BACKLOG", "IN FLIGHT",
             "DELAYED", "CALLS/H", "$/H"]]  # fmt: skip
    for q, rate in zip(queues, totals, strict=True):
        done = q.get("totals") or {}
        rows.append([
            _label(q), str(q.get("processes", "-")), _rate(rate and rate[0]),
            _count(done.get("processed")), _count(done.get("failed")),
            _count(done.get("dead_lettered")), _count(q.get("visible")),
            _count(q.get("in_flight")), _count(q.get("delayed")),
            _count(rate and rate[1]), _dollars(rate and rate[2]),
        ])  # fmt: skip
    for d in status.get("dead_letters", []):  # their backlog is what waits for a person
        owners = ",".join(dict.fromkeys(label.partition(":")[0] for label in d["queues"]))
        rows.append([f"{owners} DLQ", "-", "-", "-", "-", "-", _count(d.get("visible")),
                     _count(d.get("in_flight")), _count(d.get("delayed")), "-", "-"])  # fmt: skip
    lines += [(text, None) for text in _table(rows, width)]
    lines.append(("", None))
    rows = [["WORKER", "PID", "STATE", "FOR", "MESSAGE", "AGE", "MSG/S", "DONE", "FAILED",
             "RESTARTS", "CALLS/H", "$/H"]]  # fmt: skip
    colours: list[str | None] = [None]
    for w in sorted(status.get("workers", []), key=_worker_order(queues)):
        rate = rates.worker(w["pid"]) if w.get("pid") else None
        busy = w.get("state") == "busy"
        rows.append([
            _label(w), str(w.get("pid") or "-"), w.get("state", "?"),
            duration(w.get("state_seconds")),
            (w.get("message_id") or "")[:8] if busy else "-",
            _seconds(w.get("message_seconds", 0.0)) if busy else "-",
            _rate(rate and rate[0]), _count(w.get("processed")), _count(w.get("failed")),
            _count(w.get("restarts")), _count(rate and rate[1]),
            _dollars(rate and rate[1] * price / 1e6),
        ])  # fmt: skip
        colours.append(STATE_COLOURS.get(w.get("state", "")))
    table = _table(rows, width, text=(0, 2, 4))
    lines += list(zip(table, colours, strict=True))
    return lines


def _table(rows: list[list[str]], width: int, text: tuple[int, ...] = (0,)) -> list[str]:
    """Aligned columns, the ``text`` ones to the left and numbers to the right; the first
    (the name) shortened to fit ``width``."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    if excess > 0:
        widths[0] = max(8, widths[0] - excess)
    lines = []
    for row in rows:
        cells = [
            shorten(cell, w, middle=True).ljust(w) if i in text else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip()[:width])
    return lines


def _worker_order(queues: list[dict[str, Any]]) -> Callable[[dict[str, Any]], tuple[int, int]]:
    order = {(q["queue"], q["suffix"]): i for i, q in enumerate(queues)}
    return lambda w: (order.get((w["queue"], w["suffix"]), len(order)), w.get("index", 0))


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _label(entry: dict[str, Any]) -> str:
    return f"{entry['queue']}:{entry['suffix']}" if entry.get("suffix") else entry["queue"]


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _count(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 100_000:
        return f"{value:,.0f}"
    return f"{value / 1000:,.0f}k" if value < 10_000_000 else f"{value / 1e6:,.0f}M"


def _dollars(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.01:
        return f"{value:.6f}"
    return f"{value:.4f}" if value < 100 else f"{value:,.0f}"


def _seconds(value: float) -> str:
    return f"{value:.1f}s" if value < 10 else duration(value)


def _age(queues: list[dict[str, Any]]) -> str:
    ages = [q["depth_age"] for q in queues if q.get("depth_age") is not None]
    return duration(max(ages)) if ages else "?"


# -- running it -----------------------------------------------------------------------


class Poller(threading.Thread):
    """Fetches status every ``interval`` seconds (fresh depths every ``depth_interval``)
    off the drawing thread, so a slow daemon or SQS never keeps ``q`` from quitting."""

    def __init__(self, fetch: Fetch, interval: float, depth_interval: float):
        super().__init__(name="sqsctl-top", daemon=True)
        self.fetch = fetch
        self.interval = interval
        self.depth_interval = depth_interval
        self.stopped = threading.Event()
        self.updated = threading.Event()
        self.lock = threading.Lock()
        self.rates = Rates()
        self.status: dict[str, Any] = {}
        self.error = ""

    def poll_once(self, last_fresh: float) -> float:
        now = time.monotonic()
        fresh = now - last_fresh >= self.depth_interval
        try:
            status = self.fetch(fresh)
        except (DaemonUnavailable, CommandFailed) as exc:
            with self.lock:
                self.error = f"{exc}; trying again"
        else:
            with self.lock:
                self.status, self.error = status, ""
                self.rates.add(status, time.monotonic())
            if fresh:
                last_fresh = now
        self.updated.set()
        return last_fresh

    def run(self) -> None:
        last_fresh = -1e9
        next_at = time.monotonic()
        while not self.stopped.is_set():
            last_fresh = self.poll_once(last_fresh)
            next_at = max(next_at + self.interval, time.monotonic())
            self.stopped.wait(next_at - time.monotonic())

    def lines(self, width: int) -> list[Line]:
        with self.lock:
            if not self.status:
                return [(self.error or "asking the daemon...", "red" if self.error else None)]
            return render(self.status, self.rates, width, self.error)


def run(
    fetch: Fetch,
    interval: float = 1.0,
    depth_interval: float = 5.0,
    iterations: int = 0,
    *,
    color: bool = False,
    out: TextIO | None = None,
) -> None:
    """Full screen on a terminal until q or Ctrl-C; elsewhere, a block of lines every
    ``interval`` until ``iterations`` (0: until Ctrl-C). Ctrl-C is a normal end here."""
    out = out or sys.stdout
    poller = Poller(fetch, interval, depth_interval)
    try:
        if out.isatty() and sys.stdin.isatty() and not iterations:
            poller.start()
            curses.wrapper(_full_screen, poller, color)
        else:
            _plain(poller, out, iterations)
    except KeyboardInterrupt:
        pass
    finally:
        poller.stopped.set()


def _plain(poller: Poller, out: TextIO, iterations: int) -> None:
    width = int(os.environ.get("COLUMNS") or 0) or 120
    last_fresh, count = -1e9, 0
    next_at = time.monotonic()
    while True:
        last_fresh = poller.poll_once(last_fresh)
        count += 1
        stamp = time.strftime("%H:%M:%S")
        text = "\n".join(text for text, _ in poller.lines(width))
        out.write(f"--- {stamp}\n{text}\n\n")
        out.flush()
        if iterations and count >= iterations:
            return
        next_at = max(next_at + poller.interval, time.monotonic())
        time.sleep(next_at - time.monotonic())


def _full_screen(screen: Any, poller: Poller, color: bool) -> None:
    with contextlib.suppress(curses.error):
        curses.curs_set(0)
    attrs = _colours(color)
    screen.timeout(100)  # milliseconds: how quickly q is seen
    while True:
        if poller.updated.is_set():
            poller.updated.clear()
            _draw(screen, poller, attrs)
        key = screen.getch()
        if key in (ord("q"), ord("Q")):
            return
        if key == curses.KEY_RESIZE:
            _draw(screen, poller, attrs)


def _draw(screen: Any, poller: Poller, attrs: dict[str | None, int]) -> None:
    height, width = screen.getmaxyx()
    screen.erase()
    for y, (text, colour) in enumerate(poller.lines(max(20, width - 1))[:height]):
        attr = attrs.get(colour, 0) | (curses.A_REVERSE if y == 0 else 0)
        with contextlib.suppress(curses.error):  # a terminal narrower than 20 columns
            screen.addnstr(y, 0, text, max(0, width - 1), attr)
    screen.refresh()


def _colours(color: bool) -> dict[str | None, int]:
    if not color or not curses.has_colors():
        return {}
    curses.start_color()
    with contextlib.suppress(curses.error):
        curses.use_default_colors()
    found: dict[str | None, int] = {}
    for n, (name, value) in enumerate(
        (("green", curses.COLOR_GREEN), ("yellow", curses.COLOR_YELLOW),
         ("red", curses.COLOR_RED)), start=1,
    ):  # fmt: skip
        with contextlib.suppress(curses.error):
            curses.init_pair(n, value, -1)
            found[name] = curses.color_pair(n)
    return found
