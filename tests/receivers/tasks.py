"""A ``@sqsd.task``: the daemon calls it with the args and kwargs of the wire message."""

import sqsd
from tests.receivers.record import record


@sqsd.task("tasks_add")
def add(a, b, **kwargs):
    record("task", queue="tasks_add", args=[a, b], kwargs=kwargs)
    return a + b
