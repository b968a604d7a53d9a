"""The wanted set of workers and the reload diff, as pure functions: nothing is forked."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from sqsd import config, plan
from sqsd.errors import ConfigError
from sqsd.registry import REGISTRY


def handle(message):
    """A handler for the configurations below."""


def after(message):
    """An after_message hook for the configurations below."""


def settings(**queues) -> config.Settings:
    tables = {name: {"receiver": f"{__name__}:handle", **table} for name, table in queues.items()}
    return config.parse({"sqsd": {"queue_prefix": "p_"}, "queues": tables}, "test.toml")


pytestmark = pytest.mark.usefixtures("fresh_registry")


def test_one_spec_per_queue_suffix_and_process():
    s = settings(a={"suffixes": ["", "big"], "processes": 2, "dead_letter_queue": "a_dlq"},
                 b={})
    wanted = plan.wanted(s, plan.queue_settings(s))
    assert sorted(wanted) == [("a", "", 0), ("a", "", 1), ("a", "big", 0), ("a", "big", 1),
                              ("b", "", 0)]
    spec = wanted[("a", "big", 1)]
    assert (spec.url_name, spec.dead_letter_name, spec.label) == ("p_a__big", "p_a_dlq", "a:big")
    assert spec.handler is handle
    assert wanted[("b", "", 0)].dead_letter_name == ""


def test_scale_overrides_change_one_suffix_only():
    s = settings(a={"suffixes": ["", "big"]})
    queues = plan.queue_settings(s)
    assert plan.process_counts(queues, {("a", "big"): 3}) == {("a", ""): 1, ("a", "big"): 3}
    assert len(plan.wanted(s, queues, {("a", "big"): 3})) == 4
    assert len(plan.wanted(s, queues, {("a", ""): 0})) == 1


def test_run_arguments_filter_queues_and_suffixes():
    s = settings(a={"suffixes": ["", "big"]}, b={})
    assert list(plan.queue_settings(s, only_queues=("b",))) == ["b"]
    assert plan.queue_settings(s, only_suffix="big")["a"].suffixes == ("big",)


def test_registered_queues_count_when_their_module_is_imported():
    import sqsd

    sqsd.register("coded", handle, processes=2)
    REGISTRY["coded"].module = "myapp.receivers"
    s = replace(settings(), imports=("myapp",))
    assert plan.process_counts(plan.queue_settings(s)) == {("coded", ""): 2}
    assert plan.queue_settings(replace(s, imports=("other",))) == {}


def test_unresolvable_handlers_are_config_errors():
    s = config.parse({"queues": {"a": {"receiver": "nowhere.at_all:handle"}}}, "test.toml")
    with pytest.raises(ConfigError, match=r"test.toml: \[queues.a\] receiver: cannot import"):
        plan.wanted(s, plan.queue_settings(s))
    s = config.parse({"queues": {"a": {}}}, "test.toml")
    with pytest.raises(ConfigError, match="no @receiver or @task registered this queue"):
        plan.wanted(s, plan.queue_settings(s))


def test_after_message_hook_is_resolved_and_specs_built_twice_are_equal():
    s = settings(a={"after_message": f"{__name__}:after"})
    first = plan.wanted(s, plan.queue_settings(s))
    assert first[("a", "", 0)].after_message is after
    assert plan.wanted(s, plan.queue_settings(s)) == first


# -- the reload diff -------------------------------------------------------------------


def specs(**queues):
    s = settings(**queues)
    return plan.wanted(s, plan.queue_settings(s))


def test_same_wanted_set_keeps_everything():
    running = specs(a={"processes": 2})
    changes = plan.diff(running, specs(a={"processes": 2}))
    assert changes == plan.Changes(keep=(("a", "", 0), ("a", "", 1)))


def test_removed_added_and_resized_queues_stop_and_start():
    running = specs(a={"processes": 2}, b={}, d={})
    changes = plan.diff(running, specs(a={}, c={}, d={}))
    assert changes.stop == (("a", "", 1), ("b", "", 0))
    assert changes.start == (("c", "", 0),)
    # processes is the master's business: the worker that stays runs on undisturbed
    assert changes.keep == (("a", "", 0), ("d", "", 0))
    assert changes.restart == ()


def test_keys_only_the_master_reads_restart_no_worker():
    running = specs(a={}, b={})
    master_only = {"max_processes": 4, "scale_up_interval": 1, "scale_down_after": 5,
                   "priority": 3}
    changes = plan.diff(running, specs(a=master_only, b={"processes": 2}))
    assert (changes.keep, changes.start, changes.restart) == (
        (("a", "", 0), ("b", "", 0)), (("b", "", 1),), ())


def test_changed_queue_settings_restart_that_queue_only():
    running = specs(a={}, b={})
    changes = plan.diff(running, specs(a={"batch_size": 5}, b={}))
    assert (changes.restart, changes.keep) == ((("a", "", 0),), (("b", "", 0),))


def test_changed_daemon_environment_restarts_every_worker_that_stays():
    running = specs(a={}, b={})
    changes = plan.diff(running, specs(a={}), environment_changed=True)
    assert (changes.restart, changes.stop, changes.keep) == ((("a", "", 0),), (("b", "", 0),), ())


def test_worker_environment_is_the_daemon_keys_workers_start_with():
    s = settings()
    assert plan.worker_environment(s) == plan.worker_environment(replace(s, log_level="debug"))
    assert plan.worker_environment(s) != plan.worker_environment(replace(s, region="eu-west-1"))


def test_planning_imports_no_supervisor():
    code = ("import sys, sqsd.testing, sqsd.plan, sqsd.cli; "
            "assert 'sqsd.master' not in sys.modules, 'sqsd.master imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_close_database_is_an_after_message_hook_composed_after_the_queues_own():
    from sqsd.contrib.django.hooks import close_django_connections

    s = settings(a={"close_database": True},
                 b={"close_database": True, "after_message": f"{__name__}:after"})
    wanted = plan.wanted(s, plan.queue_settings(s))
    assert wanted[("a", "", 0)].after_message is close_django_connections
    assert wanted[("b", "", 0)].after_message == plan.AfterMessage(
        (after, close_django_connections))


def test_composed_hooks_all_run_and_the_first_failure_is_raised():
    calls = []

    def failing(message):
        calls.append("failing")
        raise ValueError("first")

    def counting(message):
        calls.append("counting")

    with pytest.raises(ValueError, match="first"):
        plan.AfterMessage((failing, counting))("message")
    assert calls == ["failing", "counting"]
