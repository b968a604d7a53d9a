"""The Django app: configures the producer and imports receivers when Django starts."""

from __future__ import annotations

from django.apps import AppConfig


class SqsdConfig(AppConfig):
    name = "sqsd.contrib.django"
    label = "sqsd"
    verbose_name = "sqsd"

    def ready(self) -> None:
        from sqsd.contrib.django.conf import configure_producer

        configure_producer()
        autodiscover_receivers()


def autodiscover_receivers() -> None:
    """Import the ``receivers`` module of every installed app that has one, so that its
    ``@sqsd.receiver`` and ``@sqsd.task`` registrations exist in this process."""
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("receivers")
