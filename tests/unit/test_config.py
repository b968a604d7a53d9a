"""Configuration validation: every error is one line naming the file, key and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from sqsd import config
from sqsd.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sqsd.toml"
    path.write_text(text)
    return path


def error_for(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message[len(f"{path}: ") :]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[defaults]\nbatch_size = 11",
            "[defaults] batch_size: expected an integer from 1 to 10, got 11",
        ),
        (
            "[defaults]\nbatch_size = 0",
            "[defaults] batch_size: expected an integer from 1 to 10, got 0",
        ),
        (
            "[defaults]\nwait_time_seconds = 21",
            "[defaults] wait_time_seconds: expected an integer from 0 to 20, got 21",
        ),
        (
            "[queues.a]\nvisibility_timeout = 43201",
            "[queues.a] visibility_timeout: expected an integer from 5 to 43200, got 43201",
        ),
        (
            "[queues.a]\nvisibility_timeout = 0",
            "[queues.a] visibility_timeout: expected an integer from 5 to 43200, got 0",
        ),
        (
            "[defaults]\nwait_time_seconds = 0\nidle_sleep_max = 0\n[queues.a]",
            "[queues.a] wait_time_seconds: expected 1 or more when idle_sleep_max = 0",
        ),
        (
            "[queues.a]\nprocesses = 3\nmax_processes = 2",
            "[queues.a] max_processes: expected 0 (no autoscaling) or at least processes (3)",
        ),
        (
            "[queues.a]\nconcurrency = 0",
            "[queues.a] concurrency: expected an integer from 1 to 1000, got 0",
        ),
        (
            '[sqsd]\nmetrics_listen = "9640"',
            "[sqsd] metrics_listen: expected \"\" (off) or \"HOST:PORT\"",
        ),
        (
            '[queues.a]\nprocesses = "two"',
            "[queues.a] processes: expected an integer from 0 to 256, got 'two'",
        ),
        (
            "[queues.a]\nprocesses = true",
            "[queues.a] processes: expected an integer from 0 to 256, got True",
        ),
        (
            '[queues.a]\non_error = "explode"',
            '[queues.a] on_error: expected one of "delete", "retry", "dead-letter", got '
        ),
        (
            '[queues.a]\nreceiver = "nocolon"',
            "[queues.a] receiver: expected a \"module:callable\" string, got 'nocolon'",
        ),
        (
            '[sqsd]\nsocket_mode = "rwx"',
            "[sqsd] socket_mode: expected an octal string such as \"0660\", got 'rwx'",
        ),
        ('[sqsd]\nendpoint_url = "localhost:4566"', '[sqsd] endpoint_url: expected "" (AWS)'),
        ('[sqsd]\nimports = "myapp"', "[sqsd] imports: expected a list of strings, got 'myapp'"),
        ("[queues.a]\nsuffixes = []", "[queues.a] suffixes: expected a non-empty list"),
        ("[queues.a]\nmax_retires = 3",
         "[queues.a] max_retires: unknown key (did you mean 'max_retries'?)"),
        ('[sqsd]\nprefix = "x"', "[sqsd] prefix: unknown key (did you mean 'queue_prefix'?)"),
        ("[defaults]\nmax_workers = 3",
         "[defaults] max_workers: unknown key (it belongs in [sqsd])"),
        ("[sqsd]\nbatch_size = 3",
         "[sqsd] batch_size: unknown key (it belongs in [defaults] or [queues.NAME])"),
        ("[queues.a]\nxyzzy = 3", "[queues.a] xyzzy: unknown key (known keys: after_message, "),
        ("[workers]\nx = 1", "[workers]: unknown section"),
        ("[queues]\na = 1", "queues.a: expected a table [queues.a]"),
        ('[queues."a__b"]\nprocesses = 1', '[queues.a__b]: expected a queue name without "__"'),
        (
            '[queues.a]\non_error = "dead-letter"',
            '[queues.a] on_error: expected a dead_letter_queue to go with "dead-letter"',
        ),
        ("[sqsd\n", "not valid TOML: "),
    ],
)
def test_invalid_config_names_file_key_and_expectation(tmp_path, text, expected):
    assert error_for(tmp_path, text).startswith(expected)


def test_missing_file_is_one_clear_line(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=r"absent.toml: configuration file not found$"):
        config.load(path)


def test_precedence_builtin_defaults_code_options_then_queue_section(tmp_path):
    settings = config.load(
        write(
            tmp_path,
            "[defaults]\nvisibility_timeout = 90\nbatch_size = 5\n[queues.a]\nbatch_size = 2\n",
        )
    )
    queue = settings.queue_settings(
        "a", {"visibility_timeout": 300, "batch_size": 7, "max_retries": 1}
    )
    assert (queue.visibility_timeout, queue.batch_size, queue.max_retries) == (300, 2, 1)
    assert queue.wait_time_seconds == 20  # built-in default
    assert settings.queue_settings("other").visibility_timeout == 90


def test_code_options_are_validated_like_the_file(tmp_path):
    settings = config.load(write(tmp_path, ""))
    with pytest.raises(
        ConfigError, match=r"options of the receiver for queue 'a' batch_size: expected"
    ):
        settings.queue_settings("a", {"batch_size": 50})


def test_error_policy_defaults_to_dead_letter_when_a_dlq_is_set(tmp_path):
    settings = config.load(
        write(tmp_path, '[queues.a]\ndead_letter_queue = "a_failed"\n[queues.b]\n')
    )
    assert settings.queue_settings("a").error_policy == "dead-letter"
    assert settings.queue_settings("b").error_policy == "delete"


@pytest.mark.parametrize(
    ("prefix", "queue", "suffix", "expected"),
    [
        ("prod_", "emails", "", "prod_emails"),
        ("prod_", "emails", "big", "prod_emails__big"),
        ("", "orders.fifo", "", "orders.fifo"),
        ("p_", "orders.fifo", "eu", "p_orders__eu.fifo"),
    ],
)
def test_queue_url_names(prefix, queue, suffix, expected):
    assert config.queue_url_name(prefix, queue, suffix) == expected
