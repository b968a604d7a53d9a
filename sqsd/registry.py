"""Registrations: which handler runs for which queue, with the options given in code, and
the import of the modules that register them (``[sqsd] imports``).

``@receiver`` and ``@task`` (sqsd.decorators) fill this table; the plan (sqsd.plan) and
producers (sqsd.producer) read it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqsd import preflight
from sqsd.config import Settings
from sqsd.message import Message


@dataclass
class Registration:
    """A handler registered for a queue, with the options given in code."""

    queue: str
    handler: Callable[[Message], Any]
    module: str
    message_class: type[Message] = Message
    options: dict[str, Any] = field(default_factory=dict)


REGISTRY: dict[str, Registration] = {}


def default_queue_name(fn: Callable[..., Any]) -> str:
    """``module.name`` with dots as double underscores (``myapp.tasks.send`` ->
    ``myapp__tasks__send``)."""
    return f"{fn.__module__}.{fn.__name__}".replace(".", "__")


def register(
    queue_name: str,
    fn: Callable[[Message], Any] | None = None,
    *,
    message_class: type[Message] | None = None,
    **options: Any,
) -> Any:
    """Register ``fn`` as the handler of ``queue_name``; usable as a decorator without ``fn``.

    ``options`` are queue settings (``visibility_timeout``, ``suffixes``, ``max_retries``, ...);
    the configuration file's ``[queues.NAME]`` overrides them.
    """
    if fn is None:
        return functools.partial(register, queue_name, message_class=message_class, **options)
    options = {k: v for k, v in options.items() if v is not None}
    if "suffixes" in options:
        options["suffixes"] = _with_plain_queue(options["suffixes"])
    module = getattr(fn, "__module__", "") or ""
    REGISTRY[queue_name] = Registration(queue_name, fn, module, message_class or Message, options)
    return fn


def _with_plain_queue(suffixes: Any) -> list[str]:
    """django-sqs's ``suffixes=`` lists extra queues; the plain queue always runs too."""
    items = list(suffixes)
    return items if "" in items else ["", *items]


IMPORTED_QUEUES: set[str] = set()  # registered while an `imports` module was imported


def import_receivers(settings: Settings) -> None:
    """Import ``[sqsd] imports`` so their decorators register queues (preload, before fork).
    Queues registered while they import (by modules they import in turn) count too."""
    for module in settings.imports:
        before = set(REGISTRY)
        preflight.import_module(module, f"{settings.path}: [sqsd] imports")
        IMPORTED_QUEUES.update(set(REGISTRY) - before)


def registered_queues(settings: Settings) -> list[str]:
    """Queues registered in code that the daemon runs besides its configured ones: those
    registered while ``imports`` were imported, or from a module inside one of them."""
    return [
        name
        for name, registration in REGISTRY.items()
        if name not in settings.queues
        and (name in IMPORTED_QUEUES or _imported_by(registration.module, settings.imports))
    ]


def _imported_by(module: str, imports: tuple[str, ...]) -> bool:
    """Registrations count when their module is listed in ``imports`` (or is inside one)."""
    return any(module == name or module.startswith(name + ".") for name in imports)
