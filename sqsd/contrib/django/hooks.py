"""Hooks the daemon runs for Django projects, without importing Django until it must.

``close_database = true`` on a queue makes ``close_django_connections`` one of the queue's
``after_message`` hooks (composed in sqsd.plan): the worker itself knows nothing of Django.
"""

from __future__ import annotations

import contextlib
from typing import Any


def close_django_connections(message: Any = None) -> None:
    """Close Django's stale database connections (django-sqs's ``close_database``); does
    nothing when Django is not installed."""
    try:
        from django.db import close_old_connections
    except ImportError:
        return
    with contextlib.suppress(Exception):
        close_old_connections()
