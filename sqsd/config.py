"""Loading and validating sqsd's TOML configuration into typed settings.

Precedence for a queue's settings, lowest first: built-in defaults, ``[defaults]``,
options given to ``@receiver``/``@task``/``register``, then ``[queues.NAME]``.
Every error names the file, the key and what was expected, in one line.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from sqsd import redact
from sqsd.errors import ConfigError
from sqsd.spelling import nearest
from sqsd.sqs import MAX_BATCH, MAX_VISIBILITY, MAX_WAIT
from sqsd_client.protocol import DEFAULT_SOCKET

DEFAULT_CONFIG_PATH = "/etc/sqsd/sqsd.toml"
ON_ERROR_CHOICES = ("delete", "retry", "dead-letter")
LOG_FORMATS = ("json", "console", "logfmt")
MIN_VISIBILITY = 5  # below this the heartbeat cannot keep a running message hidden


@dataclass(frozen=True)
class Key:
    """How one configuration key is checked: a converter that raises ValueError, and the
    expectation quoted in the error message."""

    convert: Callable[[Any], Any]
    expected: str


def _int_range(low: int, high: int | None = None) -> Key:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError
        if value < low or (high is not None and value > high):
            raise ValueError
        return value

    upper = f" to {high}" if high is not None else " or more"
    return Key(convert, f"an integer from {low}{upper}")


def _number(low: float, high: float | None = None) -> Key:
    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError
        if value < low or (high is not None and value > high):
            raise ValueError
        return float(value)

    upper = f" to {high:g}" if high is not None else " or more"
    return Key(convert, f"a number from {low:g}{upper}")


def _boolean() -> Key:
    def convert(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError
        return value

    return Key(convert, "true or false")


def _string(choices: tuple[str, ...] = ()) -> Key:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or (choices and value not in choices):
            raise ValueError
        return value

    expected = "one of " + ", ".join(f'"{c}"' for c in choices) if choices else "a string"
    return Key(convert, expected)


def _reference() -> Key:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or (value and value.count(":") != 1):
            raise ValueError
        return value

    return Key(convert, 'a "module:callable" string')


def _string_list() -> Key:
    def convert(value: Any) -> tuple[str, ...]:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValueError
        if not all(isinstance(item, str) for item in value):
            raise ValueError
        return tuple(value)

    return Key(convert, "a list of strings")


def _suffixes() -> Key:
    def convert(value: Any) -> tuple[str, ...]:
        items = _string_list().convert(value)
        if not items or len(set(items)) != len(items) or any("__" in s for s in items):
            raise ValueError
        return items

    return Key(convert, 'a non-empty list of distinct strings without "__" ("" is the plain queue)')


def _octal_mode() -> Key:
    def convert(value: Any) -> int:
        if not isinstance(value, str):
            raise ValueError
        mode = int(value, 8)
        if not 0 <= mode <= 0o777:
            raise ValueError
        return mode

    return Key(convert, 'an octal string such as "0660"')


def _endpoint() -> Key:
    def convert(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError
        if value not in ("", "local") and not value.startswith(("http://", "https://")):
            raise ValueError
        return value

    return Key(convert, '"" (AWS), "local" (embedded emulator) or an http(s):// URL')


def _listen_address() -> Key:
    def convert(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError
        if value:
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError
        return value

    return Key(convert, '"" (off) or "HOST:PORT", such as "127.0.0.1:9640"')


SQSD_KEYS: dict[str, Key] = {
    "imports": _string_list(),
    "socket": _string(),
    "socket_mode": _octal_mode(),
    "socket_group": _string(),
    "queue_prefix": _string(),
    "region": _string(),
    "endpoint_url": _endpoint(),
    "create_queues": _boolean(),
    "log_format": _string(LOG_FORMATS),
    "log_level": _string(("debug", "info", "warning", "error")),
    "failed_log": _string(),
    "max_workers": _int_range(0, 4096),
    "metrics_listen": _listen_address(),
    "sqs_price_per_million": _number(0, 1000),
}

QUEUE_KEYS: dict[str, Key] = {
    "receiver": _reference(),
    "suffixes": _suffixes(),
    "processes": _int_range(0, 256),
    "visibility_timeout": _int_range(MIN_VISIBILITY, MAX_VISIBILITY),
    "wait_time_seconds": _int_range(0, MAX_WAIT),
    "idle_sleep_max": _number(0, 3600),
    "batch_size": _int_range(1, MAX_BATCH),
    "graceful_timeout": _number(0, 3600),
    "max_retries": _int_range(0, 1000),
    "dead_letter_queue": _string(),
    "on_error": _string(ON_ERROR_CHOICES),
    "delete_on_start": _boolean(),
    "close_database": _boolean(),
    "after_message": _reference(),
    "message_class": _reference(),
    "max_messages": _int_range(0),
    "max_memory_mb": _int_range(0),
    "hard_timeout": _number(0, 86400),
    "concurrency": _int_range(1, 1000),
    "hold_seconds": _number(0, 3600),
    "max_receives": _int_range(0, 100_000),
    "max_processes": _int_range(0, 256),
    "scale_up_interval": _number(0.1, 3600),
    "scale_down_after": _number(1, 86400),
    "priority": _int_range(-1000, 1000),
}


@dataclass(frozen=True)
class QueueSettings:
    """The effective settings of one configured queue (before prefix and suffix)."""

    name: str
    receiver: str = ""
    suffixes: tuple[str, ...] = ("",)
    processes: int = 1
    visibility_timeout: int = 60
    wait_time_seconds: int = MAX_WAIT
    idle_sleep_max: float = 60.0
    batch_size: int = MAX_BATCH
    graceful_timeout: float = 30.0
    max_retries: int = 5
    dead_letter_queue: str = ""
    on_error: str = ""  # "" = "dead-letter" with a dead_letter_queue, else "delete"
    delete_on_start: bool = False
    close_database: bool = False
    after_message: str = ""
    message_class: str = ""
    max_messages: int = 0
    max_memory_mb: int = 0
    hard_timeout: float = 0.0
    concurrency: int = 1
    hold_seconds: float = 2.0
    max_receives: int = 0  # 0 = 10 x (max_retries + 1)
    max_processes: int = 0  # 0 = processes (no autoscaling)
    scale_up_interval: float = 2.0
    scale_down_after: float = 60.0
    priority: int = 0

    @property
    def fifo(self) -> bool:
        return self.name.endswith(".fifo")

    @property
    def receive_limit(self) -> int:
        """SQS receives after which a message is given up on without calling its handler:
        the safety net for messages whose handler starts this host never saw."""
        return self.max_receives or 10 * (self.max_retries + 1)

    @property
    def process_range(self) -> tuple[int, int]:
        """(fewest, most) worker processes per suffix; equal when not autoscaling."""
        return self.processes, max(self.processes, self.max_processes)

    @property
    def error_policy(self) -> str:
        if self.on_error:
            return self.on_error
        return "dead-letter" if self.dead_letter_queue else "delete"


@dataclass(frozen=True)
class Settings:
    """The whole configuration: daemon settings, queue defaults and per-queue overrides."""

    path: str = ""
    imports: tuple[str, ...] = ()
    socket: str = DEFAULT_SOCKET
    socket_mode: int = 0o660
    socket_group: str = ""
    queue_prefix: str = ""
    region: str = ""
    endpoint_url: str = ""
    create_queues: bool = False
    log_format: str = "console"
    log_level: str = "info"
    failed_log: str = ""
    max_workers: int = 0  # 0 = no limit
    metrics_listen: str = ""
    sqs_price_per_million: float = 0.40
    defaults: Mapping[str, Any] = field(default_factory=dict)
    queues: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def queue_url_name(self, queue: str, suffix: str = "") -> str:
        """The SQS queue name: prefix, name, ``__suffix``, and ``.fifo`` kept last."""
        return queue_url_name(self.queue_prefix, queue, suffix)

    def queue_settings(
        self, name: str, code_options: Mapping[str, Any] | None = None
    ) -> QueueSettings:
        """Merge built-in defaults, [defaults], code options and [queues.NAME] for ``name``."""
        merged: dict[str, Any] = dict(self.defaults)
        if code_options:
            where = f"options of the receiver for queue {name!r}"
            merged.update(validate_table(code_options, QUEUE_KEYS, self.path, where))
        merged.update(self.queues.get(name, {}))
        settings = QueueSettings(name=name, **merged)
        where = f"{self.path}: [queues.{name}]"
        if settings.on_error == "dead-letter" and not settings.dead_letter_queue:
            raise ConfigError(
                f'{where} on_error: expected a dead_letter_queue to go with "dead-letter"'
            )
        if settings.wait_time_seconds == 0 and settings.idle_sleep_max == 0:
            raise ConfigError(
                f"{where} wait_time_seconds: expected 1 or more when idle_sleep_max = 0 "
                "(both 0 would call ReceiveMessage in a tight loop)"
            )
        if settings.max_processes and settings.max_processes < settings.processes:
            raise ConfigError(
                f"{where} max_processes: expected 0 (no autoscaling) or at least processes "
                f"({settings.processes}), got {settings.max_processes}"
            )
        return settings


def queue_url_name(prefix: str, queue: str, suffix: str = "") -> str:
    """Build the SQS name: ``{prefix}{queue}[__{suffix}]``, with ``.fifo`` kept last."""
    fifo = queue.endswith(".fifo")
    base = queue[: -len(".fifo")] if fifo else queue
    name = f"{prefix}{base}"
    if suffix:
        name += f"__{suffix}"
    return name + (".fifo" if fifo else "")


def validate_table(
    table: Mapping[str, Any], keys: Mapping[str, Key], path: str, where: str
) -> dict[str, Any]:
    """Check every key of ``table`` against ``keys``; return the converted values."""
    result: dict[str, Any] = {}
    for key, value in table.items():
        spec = keys.get(key)
        if spec is None:
            hint = _unknown_key_hint(key, keys)
            raise ConfigError(f"{path}: {where} {key}: unknown key ({hint})")
        try:
            result[key] = spec.convert(value)
        except (ValueError, TypeError):
            raise ConfigError(
                f"{path}: {where} {key}: expected {spec.expected}, got {value!r}"
            ) from None
    return result


def _unknown_key_hint(key: str, keys: Mapping[str, Key]) -> str:
    """Where ``key`` belongs, else the nearest known key, else every known key."""
    if keys is QUEUE_KEYS and key in SQSD_KEYS:
        return "it belongs in [sqsd]"
    if keys is SQSD_KEYS and key in QUEUE_KEYS:
        return "it belongs in [defaults] or [queues.NAME]"
    match = nearest(key, keys)
    if match is not None:
        return f"did you mean {match!r}?"
    return "known keys: " + ", ".join(sorted(keys))


def load(path: str | os.PathLike[str]) -> Settings:
    """Read and validate the TOML file at ``path``; raise ConfigError with one clear line."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except PermissionError:
        raise ConfigError(f"{path}: configuration file not readable (permission denied)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: expected a configuration file, found a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    settings = parse(raw, path)
    redact.remember(settings.endpoint_url)  # its password is masked wherever it shows up
    return settings


def parse(raw: Mapping[str, Any], path: str = "<config>") -> Settings:
    """Validate an already parsed TOML document."""
    for section in raw:
        if section not in ("sqsd", "defaults", "queues"):
            raise ConfigError(
                f"{path}: [{section}]: unknown section (expected [sqsd], [defaults], [queues.NAME])"
            )
    sqsd_table = _table(raw, "sqsd", path)
    daemon = validate_table(sqsd_table, SQSD_KEYS, path, "[sqsd]")
    defaults = validate_table(_table(raw, "defaults", path), QUEUE_KEYS, path, "[defaults]")
    defaults.pop("receiver", None)
    queues: dict[str, dict[str, Any]] = {}
    for name, table in _table(raw, "queues", path).items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: queues.{name}: expected a table [queues.{name}]")
        if not name or "__" in name or "/" in name:
            raise ConfigError(f'{path}: [queues.{name}]: expected a queue name without "__" or "/"')
        queues[name] = validate_table(table, QUEUE_KEYS, path, f"[queues.{name}]")
    settings = Settings(path=path, defaults=defaults, queues=queues, **daemon)
    for name in queues:
        settings.queue_settings(name)  # cross-key checks fail at load time
    return settings


def _table(raw: Mapping[str, Any], name: str, path: str) -> Mapping[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {name}: expected a table [{name}]")
    return table


def default_path() -> str:
    """The configuration path producers use: ``$SQSD_CONFIG`` or /etc/sqsd/sqsd.toml."""
    return os.environ.get("SQSD_CONFIG") or DEFAULT_CONFIG_PATH


def as_dict(settings: QueueSettings) -> dict[str, Any]:
    """Queue settings as a plain dict (for status, `config` and change detection on reload)."""
    return {f.name: getattr(settings, f.name) for f in fields(settings)}
