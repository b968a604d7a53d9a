"""Registering handlers for queues: ``@receiver``, ``@task`` and ``register``.

The decorated function stays usable: a receiver proxy sends when called with a body
(django-sqs), a task runs locally when called and sends with ``.delay()`` (zc.sqs /
django-eb-sqs, wire format ``[[args], {kwargs}]``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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


class ReceiverProxy:
    """What ``@receiver`` returns: calling it sends a message to its queue."""

    def __init__(self, queue_name: str, fn: Callable[[Message], Any], message_class: type[Message]):
        self.queue_name = queue_name
        self.fn = fn
        self.message_class = message_class
        functools.update_wrapper(self, fn)

    def __call__(self, message: Any = None, *, suffix: str | None = None, **kwargs: Any) -> str:
        """Send ``message`` (or ``body=...``) to this receiver's queue; return the message id."""
        from sqsd.producer import send

        return send(
            self.queue_name, message, suffix=suffix, message_class=self.message_class, **kwargs
        )

    def direct(self, message: Message) -> Any:
        """Call the handler in this process, as the worker would."""
        return self.fn(message)


def receiver(
    queue_name: str | None = None,
    *,
    visibility_timeout: int | None = None,
    message_class: type[Message] | None = None,
    delete_on_start: bool = False,
    close_database: bool = False,
    suffixes: tuple[str, ...] | list[str] = (),
    **queue_options: Any,
) -> Callable[[Callable[[Message], Any]], ReceiverProxy]:
    """Decorate ``fn(message)`` as the handler of ``queue_name`` (default from the function)."""

    def decorate(fn: Callable[[Message], Any]) -> ReceiverProxy:
        name = queue_name or default_queue_name(fn)
        options = dict(queue_options, visibility_timeout=visibility_timeout)
        if delete_on_start:
            options["delete_on_start"] = True
        if close_database:
            options["close_database"] = True
        if suffixes:
            options["suffixes"] = suffixes
        register(name, fn, message_class=message_class, **options)
        return ReceiverProxy(name, fn, message_class or Message)

    return decorate


class Task:
    """What ``@task`` returns: call it to run locally, ``.delay()`` to send."""

    def __init__(self, queue_name: str, fn: Callable[..., Any]):
        self.queue_name = queue_name
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> str:
        """Send a call of this task with these arguments; return the message id."""
        return self.send(args=args, kwargs=kwargs)

    def send(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **send_options: Any,
    ) -> str:
        """Send a call with options for ``sqsd.send`` (``delay_seconds``, ``suffix``, ...)."""
        from sqsd.producer import send

        body = encode_call(args, kwargs or {})
        return send(self.queue_name, body, **send_options)

    def handle(self, message: Message) -> Any:
        """Run the task for a received message (the worker's handler)."""
        args, kwargs = decode_call(message.body)
        return self.fn(*args, **kwargs)


def encode_call(args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> str:
    """The zc.sqs wire format: ``[[args], {kwargs}]``."""
    return json.dumps([list(args), kwargs], separators=(",", ":"))


def decode_call(body: str) -> tuple[list[Any], dict[str, Any]]:
    """Parse ``[[args], {kwargs}]``; ValueError with the reason when the body is not one."""
    data = json.loads(body)
    if (
        not isinstance(data, list)
        or len(data) != 2
        or not isinstance(data[0], list)
        or not isinstance(data[1], dict)
    ):
        raise ValueError("task message body is not [[args], {kwargs}]")
    return data[0], data[1]


def task(
    queue_name: str | None = None, *, max_retries: int | None = None, **queue_options: Any
) -> Callable[[Callable[..., Any]], Task]:
    """Decorate ``fn(*args, **kwargs)`` as a task run by the worker of ``queue_name``."""

    def decorate(fn: Callable[..., Any]) -> Task:
        name = queue_name or default_queue_name(fn)
        wrapper = Task(name, fn)
        register(name, wrapper.handle, max_retries=max_retries, **queue_options)
        REGISTRY[name].module = fn.__module__
        return wrapper

    return decorate
