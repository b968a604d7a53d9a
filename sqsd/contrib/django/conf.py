"""sqsd's producer settings from Django's settings.

``SQSD`` is either a dict shaped like the TOML file (``{"sqsd": {...}, "defaults": {...},
"queues": {...}}``), checked by the same code so that errors read the same, or the path of
a TOML file (usually the daemon's own, so both sides share one configuration). django-sqs's
``SQS_QUEUE_PREFIX`` and ``SQS_DEFAULT_VISIBILITY_TIMEOUT`` fill in what a dict leaves unset.
Without any of these settings the producer keeps its usual default: ``$SQSD_CONFIG`` or
/etc/sqsd/sqsd.toml, read on first send.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

from django.conf import settings as django_settings

from sqsd import config as config_module
from sqsd import producer as producer_module
from sqsd.config import Key, Settings
from sqsd.errors import ConfigError

# django-sqs's names: setting -> (section, key, how it is checked)
LEGACY_SETTINGS: dict[str, tuple[str, str, Key]] = {
    "SQS_QUEUE_PREFIX": ("sqsd", "queue_prefix", config_module.SQSD_KEYS["queue_prefix"]),
    "SQS_DEFAULT_VISIBILITY_TIMEOUT": (
        "defaults",
        "visibility_timeout",
        config_module.QUEUE_KEYS["visibility_timeout"],
    ),
}


def has_settings() -> bool:
    """Whether Django's settings configure sqsd at all."""
    return any(hasattr(django_settings, name) for name in ("SQSD", *LEGACY_SETTINGS))


def load_settings() -> Settings:
    """The sqsd settings Django's settings describe; ConfigError names the setting and key."""
    module = getattr(django_settings, "SETTINGS_MODULE", None) or "settings"
    where = f"{module}.SQSD"
    value = getattr(django_settings, "SQSD", None)
    legacy = _legacy_values(module)
    if isinstance(value, str | os.PathLike):
        if legacy:
            names = ", ".join(sorted(legacy))
            raise ConfigError(
                f"{where}: names a configuration file, so {names} would be ignored; "
                "set those keys in the file instead"
            )
        return config_module.load(value)
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            f'{where}: expected a dict like the TOML file ({{"sqsd": {{...}}, "defaults": '
            f'{{...}}, "queues": {{...}}}}) or a configuration file\'s path, got {value!r}'
        )
    raw: dict[str, Any] = copy.deepcopy(dict(value))
    for (section, key), setting_value in legacy.items():
        table = raw.setdefault(section, {})
        if isinstance(table, dict):  # parse() reports a section that is not a table
            table.setdefault(key, setting_value)
    return config_module.parse(raw, where)


def _legacy_values(module: str) -> dict[tuple[str, str], Any]:
    """The django-sqs settings that are set, checked one by one."""
    found: dict[tuple[str, str], Any] = {}
    for name, (section, key, spec) in LEGACY_SETTINGS.items():
        if not hasattr(django_settings, name):
            continue
        value = getattr(django_settings, name)
        try:
            spec.convert(value)
        except (ValueError, TypeError):
            raise ConfigError(f"{module}.{name}: expected {spec.expected}, got {value!r}") from None
        found[(section, key)] = value
    return found


def configure_producer() -> producer_module.Producer | None:
    """Make the process-wide producer (``sqsd.send``, receiver proxies, ``.delay()``) use
    Django's settings; None, and the producer left alone, when they say nothing of sqsd."""
    if not has_settings():
        return None
    producer = DjangoProducer(load_settings())
    producer_module._producer = producer  # see the module docstring of sqsd.producer
    return producer


class DjangoProducer(producer_module.Producer):
    """A producer whose ``endpoint_url = "local"`` is resolved on first send, not when
    Django starts: the daemon sets up Django before it starts its embedded endpoint."""

    @property
    def client(self) -> Any:
        if self.settings.endpoint_url == "local":
            self.settings = producer_module._with_local_endpoint(self.settings)
        return super().client
