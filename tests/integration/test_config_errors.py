"""A bad config stops `sqsd run` before anything starts (DESIGN "Configuration")."""

import pytest

BASIC_RECEIVER = "tests.receivers.basic:handle"


@pytest.mark.parametrize(("section", "key", "value"), [
    ("defaults", "batch_size", 11),
    ("queue", "on_error", "explode"),
    ("queue", "processes", "two"),
    ("queue", "max_retires", 3),  # a misspelt key must not be silently ignored
])
def test_bad_config_exits_2_with_one_line_naming_file_and_key(harness, section, key, value):
    if section == "defaults":
        config = harness.write_config({"basic": {"receiver": BASIC_RECEIVER}},
                                      defaults={key: value})
    else:
        config = harness.write_config({"basic": {"receiver": BASIC_RECEIVER, key: value}})

    result = harness.run_sqsd("run", "-c", str(config))

    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0]
    assert key in lines[0]
    assert not harness.socket_path.exists()
    assert harness.sqs.list_queues(QueueNamePrefix=harness.prefix).get("QueueUrls", []) == []
