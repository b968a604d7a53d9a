"""Django integration (sqsd.contrib.django) against the real project in tests/django_project.

Django's settings and app registry are process-wide, so every check that needs Django runs
in a fresh Python (``DJANGO_SETTINGS_MODULE=tests.django_project.settings``); this process
never imports Django. The last tests run the management commands against a real daemon and
against a scripted control socket.
"""

import json
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, child_env

from sqsd import config as config_module
from sqsd.errors import ConfigError

SETTINGS_MODULE = "tests.django_project.settings"
MANAGE = REPO / "tests" / "django_project" / "manage.py"


def django_env(database: Path | None = None, **settings: Any) -> dict[str, str]:
    """Environment for the test project: an SQLite file, and settings to override."""
    extra = {"DJANGO_SETTINGS_MODULE": SETTINGS_MODULE, "SHOP_SETTINGS": json.dumps(settings)}
    if database is not None:
        extra["SHOP_DATABASE"] = str(database)
    return child_env(**extra)


def run_python(code: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    if check:
        assert result.returncode == 0, f"exit {result.returncode}:\n{result.stderr}"
    return result


def run_django(code: str, database: Path | None = None, **settings: Any) -> str:
    """Run ``code`` after ``django.setup()`` with its tables created; return its stdout."""
    prelude = """
        import json, sys
        import django
        django.setup()
        from django.core.management import call_command
        call_command("migrate", run_syncdb=True, verbosity=0)
    """
    env = django_env(database, **settings)
    return run_python(textwrap.dedent(prelude) + textwrap.dedent(code), env).stdout


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(MANAGE), *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60,
    )


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


# --- no Django unless asked --------------------------------------------------------------------


def test_importing_sqsd_does_not_import_django():
    run_python("""
        import sys
        import sqsd, sqsd.cli, sqsd.master, sqsd.testing, sqsd.worker
        import sqsd.contrib.django
        assert "django" not in sys.modules, "sqsd imported django"
    """, child_env())


# --- messages and receivers, in memory ------------------------------------------------------


def test_receiver_gets_the_saved_row_as_message_instance():
    run_django("""
        import sqsd, sqsd.testing
        from sqsd.contrib.django import ModelInstanceMessage
        from tests.django_project.shop.models import Order
        from tests.django_project.shop.receivers import ship_order

        order = Order.objects.create(number="A1")
        with sqsd.testing.queues() as queues:
            ship_order(instance=order)
            sqsd.send("shop_orders", instance=order)  # the registration's message class
            first, second = queues["shop_orders"].messages
            assert json.loads(first.body) == {"app_label": "shop", "model": "order",
                                              "pk": order.pk}, first.body
            assert second.body == first.body
            assert isinstance(first, ModelInstanceMessage)
            assert first.model is Order and first.pk == order.pk
            assert first.instance == order and first.instance is not order
            assert first.instance is first.instance  # fetched once
            assert queues.run_pending().processed == 2
        order.refresh_from_db()
        assert order.status == "shipped", order
    """)


def test_model_instance_message_reads_django_sqs_bodies():
    run_django("""
        import base64
        from sqsd.contrib.django import ModelInstanceMessage
        from tests.django_project.shop.models import Order

        order = Order.objects.create(number="C3")
        body = base64.b64encode(json.dumps(["shop", "order", order.pk]).encode()).decode()
        message = ModelInstanceMessage({"MessageId": "m", "Body": body}, "shop_orders")
        assert message.instance == order
    """)


def test_model_instance_message_refuses_what_it_cannot_refer_to():
    run_django("""
        from sqsd.contrib.django import ModelInstanceMessage
        from tests.django_project.shop.models import Order

        for bad, error in [({}, TypeError), ({"instance": Order(number="x")}, ValueError),
                           ({"instance": "A1"}, TypeError)]:
            try:
                ModelInstanceMessage.encode(**bad)
            except error:
                pass
            else:
                raise AssertionError(f"encode({bad}) did not raise {error.__name__}")
        for body in ["{}", "[1, 2]", "not a reference"]:
            try:
                ModelInstanceMessage({"MessageId": "m", "Body": body}).pk
            except ValueError as exc:
                assert "the body is not a model reference" in str(exc), exc
            else:
                raise AssertionError(f"{body!r} read as a reference")
        gone = ModelInstanceMessage({"MessageId": "m", "Body": json.dumps(
            {"app_label": "shop", "model": "order", "pk": 999})}, "shop_orders")
        try:
            gone.instance
        except Order.DoesNotExist:
            pass
        else:
            raise AssertionError("a deleted row was found")
    """)


# --- settings ----------------------------------------------------------------------------------


def producer_settings(**settings: Any) -> dict[str, Any]:
    """The producer's settings after django.setup() with these Django settings (or None)."""
    out = run_django("""
        import sqsd.producer
        current = sqsd.producer._producer
        print(json.dumps(None if current is None else {
            "queue_prefix": current.settings.queue_prefix,
            "defaults": dict(current.settings.defaults),
            "queues": {k: dict(v) for k, v in current.settings.queues.items()},
            "socket": current.settings.socket,
        }))
    """, **settings)
    return json.loads(out)


def test_sqsd_setting_configures_the_producer():
    assert producer_settings() == {
        "queue_prefix": "shop_",
        "defaults": {"visibility_timeout": 30},
        "queues": {"shop_orders": {"max_retries": 2}},
        "socket": config_module.DEFAULT_SOCKET,
    }


def test_django_sqs_setting_names_fill_in_what_sqsd_leaves_unset():
    legacy = {"SQS_QUEUE_PREFIX": "legacy_", "SQS_DEFAULT_VISIBILITY_TIMEOUT": 90}
    only_legacy = producer_settings(SQSD=None, **legacy)
    assert only_legacy["queue_prefix"] == "legacy_"
    assert only_legacy["defaults"] == {"visibility_timeout": 90}
    both = producer_settings(**legacy)
    assert both["queue_prefix"] == "shop_"
    assert both["defaults"] == {"visibility_timeout": 30}


def test_sqsd_setting_can_name_the_daemon_configuration_file(tmp_path):
    path = tmp_path / "sqsd.toml"
    path.write_text('[sqsd]\nqueue_prefix = "file_"\nsocket = "/tmp/file.sock"\n')
    assert producer_settings(SQSD=str(path))["queue_prefix"] == "file_"
    assert producer_settings(SQSD=str(path))["socket"] == "/tmp/file.sock"


def test_without_sqsd_settings_the_producer_keeps_its_default():
    assert producer_settings(SQSD=None) is None


def test_local_endpoint_is_resolved_on_first_send_not_when_django_starts():
    # The daemon sets Django up before it starts its embedded endpoint.
    env = django_env(SQSD={"sqsd": {"endpoint_url": "local", "socket": "/nonexistent.sock"}})
    env["SQSD_LOCAL_ENDPOINT"] = "http://127.0.0.1:9"
    run_python("""
        import django
        django.setup()
        import sqsd.producer
        producer = sqsd.producer._producer
        assert producer.settings.endpoint_url == "local"
        assert producer.client.meta.endpoint_url == "http://127.0.0.1:9"
    """, env)


def toml_error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        config_module.parse(raw, f"{SETTINGS_MODULE}.SQSD")
    return str(caught.value)


BAD_SQSD = {"queues": {"shop_orders": {"processes": -1}}}


@pytest.mark.parametrize(("settings", "expected"), [
    ({"SQSD": BAD_SQSD}, toml_error(BAD_SQSD)),
    ({"SQSD": {"sqsd": {"queue_prefx": "x_"}}}, toml_error({"sqsd": {"queue_prefx": "x_"}})),
    ({"SQSD": ["not", "a", "dict"]}, f"{SETTINGS_MODULE}.SQSD: expected a dict like the TOML"),
    ({"SQS_QUEUE_PREFIX": 3},
     f"{SETTINGS_MODULE}.SQS_QUEUE_PREFIX: expected a string, got 3"),
    ({"SQSD": "/nonexistent/sqsd.toml"}, "/nonexistent/sqsd.toml: configuration file not found"),
], ids=["bad-value", "unknown-key", "not-a-dict", "django-sqs-name", "missing-file"])
def test_bad_settings_stop_django_with_one_line(settings, expected):
    result = run_python("import django; django.setup()", django_env(**settings), check=False)
    assert result.returncode == 1
    error = last_line(result.stderr)
    assert error.startswith("sqsd.errors.ConfigError: "), result.stderr
    assert error.removeprefix("sqsd.errors.ConfigError: ").startswith(expected)
    # The TOML file's errors read the same.
    assert "[queues.shop_orders] processes: expected an integer from 0 to 256" in toml_error(
        BAD_SQSD)


# --- autodiscovery, the daemon's setup module, close_database -------------------------------


def test_receivers_modules_of_installed_apps_are_registered():
    run_django("""
        from sqsd.registry import REGISTRY
        assert "tests.django_project.shop.receivers" in sys.modules
        assert REGISTRY["shop_orders"].module == "tests.django_project.shop.receivers"
    """)


def test_setup_module_sets_django_up_for_the_daemon(tmp_path):
    # Without "sqsd.contrib.django" in INSTALLED_APPS the setup module does the app's work.
    env = django_env(tmp_path / "db.sqlite3", INSTALLED_APPS=["tests.django_project.shop"])
    run_python("""
        import importlib
        from django.apps import apps
        from django.db import connection
        import sqsd.producer
        from sqsd.registry import REGISTRY

        importlib.import_module("sqsd.contrib.django.setup")  # as `imports` does
        assert apps.ready
        assert REGISTRY["shop_orders"].module == "tests.django_project.shop.receivers"
        assert sqsd.producer._producer.settings.queue_prefix == "shop_"
        assert connection.connection is None  # workers inherit no connection
    """, env)


def test_setup_module_without_settings_module_says_so():
    env = child_env()
    result = run_python("import sqsd.contrib.django.setup", env, check=False)
    assert "set DJANGO_SETTINGS_MODULE" in last_line(result.stderr)


def test_close_database_closes_djangos_connections(tmp_path):
    run_django("""
        from django.db import connection
        from sqsd.contrib.django.hooks import close_django_connections

        connection.ensure_connection()
        assert connection.connection is not None
        close_django_connections()
        assert connection.connection is None
    """, tmp_path / "db.sqlite3")


# --- management commands against a real daemon --------------------------------------------------


def test_daemon_runs_the_projects_receivers_and_commands_report(harness, tmp_path):
    database = tmp_path / "shop.sqlite3"
    run_django("", database)  # create the tables
    # The web side and the daemon share one configuration: SQSD names the daemon's file.
    env = django_env(database, SQSD=str(harness.config_path))
    daemon = harness.start({"shop_orders": {}}, imports=["sqsd.contrib.django.setup"], env=env)

    run_python("""
        import django
        django.setup()
        from tests.django_project.shop.models import Order
        from tests.django_project.shop.receivers import ship_order
        ship_order(instance=Order.objects.create(number="B7"))
    """, env)
    waited = manage("sqs_wait", "shop_orders", "--timeout", "20", env=env)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.strip() == "queues empty and workers idle"
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT number, status FROM shop_order").fetchall() == [("B7", "shipped")]
    assert "after_message hook failed" not in daemon.log_text()  # close_database ran cleanly

    status = manage("sqs_status", env=env)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"sqsd pid {daemon.pid} ")
    assert "shop_orders" in status.stdout and f"{harness.prefix}shop_orders" in status.stdout
    as_json = json.loads(manage("sqs_status", "--json", env=env).stdout)
    [worker] = as_json["workers"]
    assert (worker["queue"], worker["processed"]) == ("shop_orders", 1)

    cleared = manage("sqs_clear", "shop_orders", "--noinput", env=env)
    assert cleared.returncode == 0, cleared.stderr
    assert cleared.stdout.strip() == (
        f"{harness.prefix}shop_orders: 0 deleted, 0 in flight (not touched)")


def test_setup_import_alone_runs_every_queue_the_apps_register(harness, tmp_path):
    database = tmp_path / "shop.sqlite3"
    run_django("", database)
    env = django_env(database, SQSD=str(harness.config_path))
    daemon = harness.start({}, imports=["sqsd.contrib.django.setup"], env=env, ready=False)
    daemon.wait_for(daemon.pings, what="the control socket")

    workers = daemon.wait_for(
        lambda: [w for w in daemon.status().get("workers", []) if w.get("pid")],
        what="a worker for the queue registered by shop.receivers",
    )

    assert [w["queue"] for w in workers] == ["shop_orders"]


# --- exit codes and rendering against a scripted control socket ----------------------------------


class ScriptedDaemon:
    """A control socket that answers each command with a canned reply and records requests."""

    def __init__(self, path: Path, replies: dict[str, dict[str, Any]]):
        self.path = path
        self.replies = replies
        self.requests: list[dict[str, Any]] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                request = json.loads(conn.makefile("rb").readline())
                self.requests.append(request)
                conn.sendall((json.dumps(self.replies[request["cmd"]]) + "\n").encode())

    def close(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)  # wakes accept() in the serving thread
        self.server.close()
        self.thread.join(timeout=5)


@pytest.fixture
def scripted(tmp_path):
    daemons = []

    def start(**replies: dict[str, Any]) -> ScriptedDaemon:
        daemon = ScriptedDaemon(tmp_path / "ctl.sock", replies)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.close()


def test_unreachable_daemon_exits_3(tmp_path):
    for command in ("sqs_status", "sqs_wait", "sqs_clear"):
        result = manage(command, "--socket", str(tmp_path / "none.sock"), "--noinput"
                        if command == "sqs_clear" else "--json", env=django_env())
        assert result.returncode == 3, (command, result.stderr)
        assert result.stderr.strip() == (
            f"CommandError: daemon not reachable: {tmp_path / 'none.sock'}: "
            "No such file or directory"
        )


def test_wait_timeout_exits_1(scripted):
    daemon = scripted(wait={"ok": False, "error": "timeout", "timeout": True})
    result = manage("sqs_wait", "emails", "--timeout", "0.5", "--socket", str(daemon.path),
                    env=django_env())
    assert result.returncode == 1
    assert result.stderr.strip() == "CommandError: timeout"
    assert daemon.requests == [{"cmd": "wait", "queues": ["emails"], "timeout": 0.5}]


def test_clear_reports_each_queue_and_fails_when_one_failed(scripted):
    daemon = scripted(clear={"ok": True, "queues": {
        "emails": {"deleted": 4, "in_flight": 1},
        "thumbs": {"error": "AccessDenied: not allowed"},
    }})
    result = manage("sqs_clear", "emails", "thumbs", "--yes", "--socket", str(daemon.path),
                    env=django_env())
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "emails: 4 deleted, 1 in flight (not touched)",
        "thumbs: AccessDenied: not allowed",
    ]
    assert result.stderr.strip() == "CommandError: could not clear thumbs"
    assert daemon.requests == [{"cmd": "clear", "queues": ["emails", "thumbs"], "purge": False}]


def test_clear_refuses_without_noinput_when_not_on_a_terminal(scripted):
    daemon = scripted()
    result = manage("sqs_clear", "--socket", str(daemon.path), env=django_env())
    assert result.returncode == 2
    assert "refusing to clear without --noinput" in result.stderr
    assert daemon.requests == []
