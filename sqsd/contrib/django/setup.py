"""Run a Django project's receivers in the daemon: list this module in its configuration::

    [sqsd]
    imports = ["sqsd.contrib.django.setup"]

and start ``sqsd run`` with ``DJANGO_SETTINGS_MODULE`` in its environment. Importing this
module sets Django up (which, with ``"sqsd.contrib.django"`` installed, configures the
producer and imports every app's ``receivers`` module) in the master, before it forks its
workers, and closes the database connections that start-up opened so that no worker
inherits one.
"""

from __future__ import annotations

import os

import django
from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from sqsd.contrib.django.apps import autodiscover_receivers
from sqsd.contrib.django.conf import configure_producer


def setup() -> None:
    if not apps.ready:
        if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
            raise ImproperlyConfigured(
                "set DJANGO_SETTINGS_MODULE to the project's settings module (e.g. mysite.settings)"
            )
        django.setup()
    if not apps.is_installed("sqsd.contrib.django"):
        configure_producer()
        autodiscover_receivers()
    connections.close_all()


setup()
