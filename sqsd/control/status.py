"""The ``status`` reply: what the master knows of its workers and queues, as data.

How it is shown to people is sqsd.control.render's business.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import psutil

from sqsd.config import QueueSettings, Settings
from sqsd.scaling import Size
from sqsd.states import SLEEPING_STATES, Program, ProgramState, WorkerState, shown_state
from sqsd_client.protocol import PROTOCOL_VERSION

QueueKey = tuple[str, str]  # (queue, suffix)


def status_reply(
    *,
    pid: int,
    config_path: str,
    uptime: float,
    stopping: bool,
    settings: Settings,
    programs: Iterable[Program],
    sizes: Mapping[QueueKey, Size],
    depths: Mapping[str, Mapping[str, Any]],
    depths_age: float,
    now: float,
    queue_settings: Mapping[str, QueueSettings] | None = None,
) -> dict[str, Any]:
    """The whole reply. Retired programs still finishing a message show as "stopping"
    until they exit; ``sizes`` are the process counts (autoscaled or pinned), ``depths``
    the last queue depths fetched, ``depths_age`` ago, dead-letter queues' included
    (``queue_settings`` say which queue uses which)."""
    workers = [worker_entry(p, now) for p in programs if not p.retired or p.worker is not None]
    dead_letter = dead_letter_names(settings, queue_settings or {})
    queues = []
    users: dict[str, list[str]] = {}  # dead-letter queue -> the queues that send to it
    for (queue, suffix), size in sizes.items():
        url_name = settings.queue_url_name(queue, suffix)
        queues.append(
            {
                "queue": queue,
                "suffix": suffix,
                "url_name": url_name,
                "processes": size.current,
                "min_processes": size.minimum,
                "max_processes": size.maximum,
                "pinned": size.pinned,
                "scaling_decisions": size.decisions,
                "last_scaling": scaling_entry(size, now),
                "dead_letter": dead_letter.get(queue),
                **depth_fields(depths.get(url_name, {}), depths_age),
            }
        )
        if queue in dead_letter:
            label = f"{queue}:{suffix}" if suffix else queue
            users.setdefault(dead_letter[queue], []).append(label)
    dead_letters = [
        {"url_name": name, "queues": sources, **depth_fields(depths.get(name, {}), depths_age)}
        for name, sources in users.items()
    ]
    return {
        "ok": True,
        "version": PROTOCOL_VERSION,
        "pid": pid,
        "config": config_path,
        "uptime": round(uptime, 1),
        "stopping": stopping,
        "rss": rss(pid),
        "workers": workers,
        "queues": queues,
        "dead_letters": dead_letters,
    }


def depth_fields(depth: Mapping[str, Any], age: float) -> dict[str, Any]:
    """A queue's approximate depth as status shows it (None until first fetched)."""
    return {
        "visible": depth.get("visible"),
        "in_flight": depth.get("in_flight"),
        "delayed": depth.get("delayed"),
        "depth_error": depth.get("error"),
        "depth_age": round(age, 1) if depth else None,
    }


def dead_letter_names(settings: Settings, queues: Mapping[str, QueueSettings]) -> dict[str, str]:
    """The SQS name of each queue's dead-letter queue, for the queues that have one."""
    return {
        name: settings.queue_url_name(queue.dead_letter_queue)
        for name, queue in queues.items()
        if queue.dead_letter_queue
    }


def scaling_entry(size: Size, now: float) -> dict[str, Any] | None:
    """The last change of a queue's process count (autoscaling or `sqsctl scale`), or None."""
    decision = size.last
    if decision is None:
        return None
    ago = max(0.0, now - decision.at)
    return {
        "from": decision.before,
        "to": decision.after,
        "reason": decision.reason,
        "text": str(decision),  # "2→3: all busy, receives full"
        "seconds_ago": round(ago, 1),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - ago)),
    }


def worker_entry(program: Program, now: float) -> dict[str, Any]:
    """One program: its state as operators see it, restart history and, while its worker
    runs, the worker's counters."""
    spec = program.spec
    entry: dict[str, Any] = {
        "queue": spec.queue.name,
        "suffix": spec.suffix,
        "index": spec.index,
        "pid": None,
        "state": shown_state(program),
        "restarts": program.restarts,
        "failures": program.failures,
        "last_exit": None if program.last_exit is None else str(program.last_exit),
    }
    worker = program.worker
    if worker is None:
        if program.state is ProgramState.BACKOFF:
            entry["retry_in"] = round(max(0.0, program.next_start - now), 1)
        return entry
    view = worker.slot.read()
    counters = view.counters
    entry.update(
        pid=worker.pid,
        state_seconds=round(now - view.state_since, 1),
        uptime=round(now - worker.started, 1),
        rss=rss(worker.pid),
        processed=counters["processed"],
        failed=counters["failed"],
        retried=counters["retried"],
        dead_lettered=counters["dead_lettered"],
        busy=view.busy,  # handler slots running a message
        slots=view.slots,  # handler slots in all (concurrency)
        api={
            "receive": counters["receives"],
            "empty_receive": counters["empty_receives"],
            "delete": counters["deletes"],
            "change_visibility": counters["visibility_changes"],
            "send": counters["sends"],
        },
    )
    if worker.stop_sent:
        pass
    elif view.state is WorkerState.BUSY or view.message_started:  # the oldest running
        entry["message_id"] = view.message_id
        entry["message_seconds"] = round(now - view.message_started, 1)
    elif view.state in SLEEPING_STATES:
        entry["idle_seconds"] = round(max(0.0, view.idle_until - now), 1)
    return entry


def rss(pid: int) -> int | None:
    """Resident memory of ``pid`` in bytes (None when it is gone)."""
    try:
        process = _processes.get(pid)
        if process is None:
            if len(_processes) > 4096:
                _processes.clear()
            process = _processes[pid] = psutil.Process(pid)
        return process.memory_info().rss
    except psutil.Error:
        _processes.pop(pid, None)
        return None


_processes: dict[int, psutil.Process] = {}  # reused across status calls
