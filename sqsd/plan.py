"""Which workers should exist: the wanted set, computed from settings and registrations.

Everything here is planning, not supervising: the master (sqsd.master) keeps the wanted
set running, ``sqsd check`` lists its queues and ``sqsd.testing`` runs its handlers in
memory. ``diff`` is the reload (and scale) decision as a pure function: from the specs that
run and the specs wanted, what to stop, start, restart and keep.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqsd import preflight
from sqsd.config import QueueSettings, Settings
from sqsd.contrib.django.hooks import close_django_connections
from sqsd.errors import ConfigError
from sqsd.message import Message
from sqsd.registry import REGISTRY, import_receivers, registered_queues

Key = tuple[str, str, int]  # (queue, suffix, index)
Overrides = Mapping[tuple[str, str], int]  # processes per (queue, suffix): scaled or pinned
# Queue keys only the master reads: a reload that changes them restarts no worker.
MASTER_ONLY_KEYS = (
    "processes",
    "max_processes",
    "scale_up_interval",
    "scale_down_after",
    "priority",
)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything one worker process needs, resolved by the master before fork."""

    queue: QueueSettings
    suffix: str
    url_name: str
    dead_letter_name: str
    handler: Callable[[Message], Any]
    message_class: type[Message]
    after_message: Callable[[Message], Any] | None
    index: int = 0

    @property
    def label(self) -> str:
        return f"{self.queue.name}:{self.suffix}" if self.suffix else self.queue.name

    @property
    def key(self) -> Key:
        return (self.queue.name, self.suffix, self.index)


@dataclass(frozen=True)
class Changes:
    """What a new wanted set asks of the running one, by program key."""

    stop: tuple[Key, ...] = ()  # runs, no longer wanted
    start: tuple[Key, ...] = ()  # wanted, not running
    restart: tuple[Key, ...] = ()  # runs with other settings (or the daemon's changed)
    keep: tuple[Key, ...] = ()  # runs as wanted


def diff(
    running: Mapping[Key, WorkerSpec],
    wanted: Mapping[Key, WorkerSpec],
    *,
    environment_changed: bool = False,
) -> Changes:
    """Compare the specs that run with the specs wanted. ``environment_changed``: the
    daemon-wide keys workers start with changed (``worker_environment``), so every worker
    that stays must restart."""
    stop, restart, keep = [], [], []
    for key, spec in running.items():
        if key not in wanted:
            stop.append(key)
        elif environment_changed or not same_worker(wanted[key], spec):
            restart.append(key)
        else:
            keep.append(key)
    start = [key for key in wanted if key not in running]
    return Changes(tuple(stop), tuple(start), tuple(restart), tuple(keep))


def same_worker(a: WorkerSpec, b: WorkerSpec) -> bool:
    """Whether a worker started from spec ``a`` runs as ``b`` asks: the keys only the
    master reads (how many processes, autoscaling) make no difference to a worker."""
    blank = dict.fromkeys(MASTER_ONLY_KEYS, 0)
    return replace(a, queue=replace(a.queue, **blank)) == replace(
        b, queue=replace(b.queue, **blank)
    )


def prepare(
    settings: Settings,
    only_queues: tuple[str, ...] = (),
    only_suffix: str | None = None,
    running: Overrides | None = None,
) -> tuple[dict[str, QueueSettings], dict[Key, WorkerSpec]]:
    """Import the receivers, then plan: the queues to run and the wanted specs, every
    handler resolved; ``running`` (a reload) carries the counts that run into the new
    ranges. Raises ConfigError, naming the file and key, on any problem."""
    import_receivers(settings)
    queues = queue_settings(settings, only_queues, only_suffix)
    check_budget(settings, queues)
    return queues, wanted(settings, queues, carried(queues, running or {}))


def check_budget(settings: Settings, queues: Mapping[str, QueueSettings]) -> None:
    """``max_workers`` must leave every queue and suffix its ``processes``."""
    fewest = sum(queue.processes * len(queue.suffixes) for queue in queues.values())
    if settings.max_workers and fewest > settings.max_workers:
        raise ConfigError(
            f"{settings.path}: [sqsd] max_workers: expected 0 (no limit) or at least {fewest}, "
            f"the processes of every queue and suffix added up; got {settings.max_workers}"
        )


def carried(queues: Mapping[str, QueueSettings], counts: Overrides) -> dict[tuple[str, str], int]:
    """Processes per (queue, suffix) for new settings: a count that runs stays, within its
    new range (a reload does not undo autoscaling); a new one starts at ``processes``."""
    result = {}
    for queue in queues.values():
        low, high = queue.process_range
        for suffix in queue.suffixes:
            result[(queue.name, suffix)] = min(
                max(counts.get((queue.name, suffix), low), low), high
            )
    return result


def queue_settings(
    settings: Settings, only_queues: tuple[str, ...] = (), only_suffix: str | None = None
) -> dict[str, QueueSettings]:
    """Every queue to run: configured ones and those registered in code, filtered by
    ``sqsd run QUEUE... [--suffix S]``."""
    names = list(settings.queues) + registered_queues(settings)
    if only_queues:
        names = [n for n in names if n in only_queues]
    result: dict[str, QueueSettings] = {}
    for name in names:
        registration = REGISTRY.get(name)
        options = registration.options if registration else None
        queue = settings.queue_settings(name, options)
        if only_suffix is not None:
            if only_suffix not in queue.suffixes:
                continue  # `run --suffix S` runs the queues that have S
            queue = replace(queue, suffixes=(only_suffix,))
        result[name] = queue
    return result


def process_counts(
    queues: Mapping[str, QueueSettings], overrides: Overrides | None = None
) -> dict[tuple[str, str], int]:
    """Processes per (queue, suffix): the configuration's, unless scaled."""
    overrides = overrides or {}
    return {
        (queue.name, suffix): overrides.get((queue.name, suffix), queue.processes)
        for queue in queues.values()
        for suffix in queue.suffixes
    }


def wanted(
    settings: Settings, queues: Mapping[str, QueueSettings], overrides: Overrides | None = None
) -> dict[Key, WorkerSpec]:
    """One spec per queue, suffix and process, with handlers resolved (preload)."""
    specs: dict[Key, WorkerSpec] = {}
    counts = process_counts(queues, overrides)
    for queue in queues.values():
        handler, message_class = resolve_handler(settings, queue)
        after = after_message_hook(settings, queue)
        dead_letter_name = (
            settings.queue_url_name(queue.dead_letter_queue) if queue.dead_letter_queue else ""
        )
        for suffix in queue.suffixes:
            for index in range(counts[(queue.name, suffix)]):
                spec = WorkerSpec(
                    queue=queue,
                    suffix=suffix,
                    url_name=settings.queue_url_name(queue.name, suffix),
                    dead_letter_name=dead_letter_name,
                    handler=handler,
                    message_class=message_class,
                    after_message=after,
                    index=index,
                )
                specs[spec.key] = spec
    return specs


def worker_environment(settings: Settings) -> tuple[Any, ...]:
    """The daemon-wide keys a running worker was started with: a reload that changes
    them restarts every worker."""
    return (
        settings.region,
        settings.endpoint_url,
        settings.create_queues,
        settings.failed_log,
        settings.queue_prefix,
    )


def resolve_reference(settings: Settings, queue: QueueSettings, key: str) -> Any:
    """Import ``module:attribute`` named by a queue key."""
    reference = getattr(queue, key)
    module_name, _, attribute = reference.partition(":")
    where = f"{settings.path}: [queues.{queue.name}] {key}"
    module = preflight.import_module(module_name, where)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(
            f"{where}: module {module_name!r} has no attribute {attribute!r}"
        ) from None


def resolve_handler(
    settings: Settings, queue: QueueSettings
) -> tuple[Callable[[Message], Any], type[Message]]:
    """The callable and message class for ``queue``: its ``receiver`` key, else a registration."""
    registration = REGISTRY.get(queue.name)
    message_class: type[Message] = registration.message_class if registration else Message
    if queue.message_class:
        message_class = resolve_reference(settings, queue, "message_class")
    if queue.receiver:
        handler = resolve_reference(settings, queue, "receiver")
        # A @receiver proxy or @task wrapper named in config: call what the worker should run.
        handler = getattr(handler, "handle", None) or getattr(handler, "direct", None) or handler
        if not callable(handler):
            raise ConfigError(
                f"{settings.path}: [queues.{queue.name}] receiver: expected a callable"
            )
        return handler, message_class
    if registration is None:
        raise ConfigError(
            f'{settings.path}: [queues.{queue.name}] receiver: expected a "module:callable" '
            "(no @receiver or @task registered this queue)"
        )
    return registration.handler, message_class


@dataclass(frozen=True)
class AfterMessage:
    """Several ``after_message`` hooks run in order; each runs even when one before it
    failed, and the first failure is raised (the worker logs it). Equal when its hooks are,
    so a reload does not take it for a change."""

    hooks: tuple[Callable[[Message], Any], ...]

    def __call__(self, message: Message) -> None:
        failure: Exception | None = None
        for hook in self.hooks:
            try:
                hook(message)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure


def after_message_hook(settings: Settings, queue: QueueSettings) -> Callable[[Message], Any] | None:
    """What runs after each message: the ``after_message`` key's callable, then, with
    ``close_database``, the closing of Django's stale connections."""
    hooks = []
    if queue.after_message:
        hooks.append(resolve_reference(settings, queue, "after_message"))
    if queue.close_database:
        hooks.append(close_django_connections)
    if len(hooks) > 1:
        return AfterMessage(tuple(hooks))
    return hooks[0] if hooks else None
