"""``sqsd.testing`` with ``concurrency > 1``: a queue's waiting messages run that many at
once, plain handlers on threads and ``async def`` handlers as tasks on one event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from typing import Any

from sqsd.engine import is_async_handler


def deliver_many(backend: Any, queue: Any, wave: list[Any], route: Any, counts: Any) -> None:
    """``Queues._deliver`` for each message of ``wave``, ``concurrency`` at once (threads
    for a plain handler, tasks on one event loop for an ``async def`` one)."""
    size = route.settings.concurrency
    if not is_async_handler(route.handler):
        with concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix="sqsd-testing") as pool:
            for future in [pool.submit(backend._deliver, queue, s, route, counts) for s in wave]:
                future.result()
        return

    async def deliver_all() -> None:
        slots = asyncio.Semaphore(size)

        async def deliver(stored: Any) -> None:
            async with slots:
                message = backend._receive(queue, stored, route, counts)
                if message is None:
                    return
                try:
                    result = route.handler(message)
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:
                    backend._settle(queue, stored, route, counts, message, exc)
                else:
                    backend._settle(queue, stored, route, counts, message, None)

        await asyncio.gather(*(deliver(stored) for stored in wave))

    run_awaitable(deliver_all())


def run_awaitable(result: Any) -> Any:
    """Await what an ``async def`` handler returned, as the worker does; from inside a
    running event loop (an async test), on a loop of its own in a helper thread."""
    if not inspect.isawaitable(result):
        return result

    async def awaited() -> Any:
        return await result

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(awaited())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sqsd-testing") as pool:
        return pool.submit(asyncio.run, awaited()).result()
