"""``@receiver`` and ``@task``: register a handler and give back something callable.

The decorated function stays usable: a receiver proxy sends when called with a body
(django-sqs), a task runs locally when called and sends with ``.delay()`` (zc.sqs /
django-eb-sqs, wire format ``[[args], {kwargs}]``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from sqsd import producer
from sqsd.message import Message, decode_call, encode_call
from sqsd.registry import REGISTRY, default_queue_name, register


class ReceiverProxy:
    """What ``@receiver`` returns: calling it sends a message to its queue."""

    def __init__(self, queue_name: str, fn: Callable[[Message], Any], message_class: type[Message]):
        self.queue_name = queue_name
        self.fn = fn
        self.message_class = message_class
        functools.update_wrapper(self, fn)

    def __call__(self, message: Any = None, *, suffix: str | None = None, **kwargs: Any) -> str:
        """Send ``message`` (or ``body=...``) to this receiver's queue; return the message id."""
        return producer.send(
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
        body = encode_call(args, kwargs or {})
        return producer.send(self.queue_name, body, **send_options)

    def handle(self, message: Message) -> Any:
        """Run the task for a received message (the worker's handler)."""
        args, kwargs = decode_call(message.body)
        return self.fn(*args, **kwargs)


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
