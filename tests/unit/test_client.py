import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

import sqsd_client
from sqsd_client import Client, CommandFailed, DaemonUnavailable, autowake, protocol

Answer = Callable[[dict[str, Any]], dict[str, Any] | None]


class FakeDaemon:
    """Records requests on a real Unix socket and answers each with ``answer(request)``.

    Requests are recorded before the reply is sent, so a caller that got its
    reply can inspect ``requests`` at once. ``None`` from ``answer`` means silence.
    """

    def __init__(self, path: Path, answer: Answer) -> None:
        self.path = path
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen()
        self._listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn, conn.makefile("rb") as lines:
                conn.settimeout(5)
                for line in lines:
                    request = json.loads(line)
                    self.requests.append(request)
                    reply = self.answer(request)
                    if reply is not None:
                        conn.sendall(protocol.encode(reply))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        assert not self._thread.is_alive()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[[Answer], FakeDaemon]]:
    daemons: list[FakeDaemon] = []

    def start(answer: Answer = lambda request: {"ok": True}) -> FakeDaemon:
        daemons.append(FakeDaemon(tmp_path / f"sqsd{len(daemons)}.sock", answer))
        return daemons[-1]

    yield start
    for daemon in daemons:
        daemon.close()


def test_wake_without_daemon_returns_false_fast(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.sock")
    for _ in range(20):
        started = time.perf_counter()
        assert sqsd_client.wake("emails", socket_path=path) is False
        assert time.perf_counter() - started < 0.05


def test_wake_with_stale_socket_file_returns_false(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))
    assert sqsd_client.wake("emails", socket_path=str(path)) is False


def test_wake_sends_one_request(start_daemon: Callable[..., FakeDaemon]) -> None:
    daemon = start_daemon()
    assert sqsd_client.wake("emails", "big", socket_path=str(daemon.path)) is True
    assert sqsd_client.wake("emails", socket_path=str(daemon.path)) is True
    assert daemon.requests == [
        {"cmd": "wake", "queue": "emails", "suffix": "big"},
        {"cmd": "wake", "queue": "emails", "suffix": None},
    ]


def test_wake_finds_socket_from_environment(
    start_daemon: Callable[..., FakeDaemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = start_daemon()
    monkeypatch.setenv("SQSD_SOCKET", str(daemon.path))
    assert sqsd_client.wake("emails") is True


def test_wake_refused_returns_false(start_daemon: Callable[..., FakeDaemon]) -> None:
    daemon = start_daemon(lambda request: protocol.error("unknown queue"))
    assert sqsd_client.wake("nope", socket_path=str(daemon.path)) is False


def test_wake_gives_up_on_a_silent_daemon(start_daemon: Callable[..., FakeDaemon]) -> None:
    daemon = start_daemon(lambda request: None)
    started = time.perf_counter()
    assert sqsd_client.wake("emails", socket_path=str(daemon.path), timeout=0.05) is False
    assert time.perf_counter() - started < 1


def test_client_without_daemon_raises_unavailable(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.sock")
    with pytest.raises(DaemonUnavailable, match="missing.sock"):
        Client(path).ping()


@pytest.mark.parametrize(
    ("call", "request_sent"),
    [
        (lambda c: c.ping(), {"cmd": "ping"}),
        (lambda c: c.status(), {"cmd": "status"}),
        (lambda c: c.wake("emails"), {"cmd": "wake", "queue": "emails", "suffix": None}),
        (lambda c: c.clear(), {"cmd": "clear", "queues": [], "purge": False}),
        (
            lambda c: c.clear(("a", "b"), purge=True),
            {"cmd": "clear", "queues": ["a", "b"], "purge": True},
        ),
        (lambda c: c.wait(), {"cmd": "wait", "queues": [], "timeout": None}),
        (lambda c: c.wait(["a"], timeout=3), {"cmd": "wait", "queues": ["a"], "timeout": 3.0}),
        (lambda c: c.reload(), {"cmd": "reload"}),
        (lambda c: c.config(), {"cmd": "config"}),
        (lambda c: c.shutdown(), {"cmd": "shutdown", "quick": False}),
        (lambda c: c.shutdown(quick=True), {"cmd": "shutdown", "quick": True}),
        (
            lambda c: c.scale("emails", "big", 3),
            {"cmd": "scale", "queue": "emails", "suffix": "big", "processes": 3},
        ),
        (lambda c: c.call("custom", x=1), {"cmd": "custom", "x": 1}),
    ],
)
def test_client_commands_send_their_arguments(
    start_daemon: Callable[..., FakeDaemon],
    call: Callable[[Client], dict[str, Any]],
    request_sent: dict[str, Any],
) -> None:
    daemon = start_daemon(lambda request: {"ok": True, "echo": request["cmd"]})
    assert call(Client(str(daemon.path))) == {"ok": True, "echo": request_sent["cmd"]}
    assert daemon.requests == [request_sent]


def test_client_raises_command_failed_with_the_reply(
    start_daemon: Callable[..., FakeDaemon],
) -> None:
    daemon = start_daemon(lambda request: {"ok": False, "error": "unknown queue 'x'", "code": 7})
    with pytest.raises(CommandFailed, match="unknown queue 'x'") as excinfo:
        Client(str(daemon.path)).wake("x")
    assert excinfo.value.reply == {"ok": False, "error": "unknown queue 'x'", "code": 7}


def test_client_raises_unavailable_on_a_silent_daemon(
    start_daemon: Callable[..., FakeDaemon],
) -> None:
    daemon = start_daemon(lambda request: None)
    with pytest.raises(DaemonUnavailable, match="no reply"):
        Client(str(daemon.path), timeout=0.05).status()


def test_client_wait_outlasts_the_wait_timeout(start_daemon: Callable[..., FakeDaemon]) -> None:
    daemon = start_daemon(lambda request: None)
    started = time.perf_counter()
    with pytest.raises(DaemonUnavailable):
        Client(str(daemon.path), timeout=0.05).wait(timeout=0.2)
    assert time.perf_counter() - started >= 0.25


@pytest.mark.parametrize(
    ("url", "prefix", "target"),
    [
        ("https://sqs.eu-west-1.amazonaws.com/123456789012/prod_emails", "prod_", ("emails", None)),
        ("https://sqs.eu-west-1.amazonaws.com/1/prod_emails__big", "prod_", ("emails", "big")),
        ("https://sqs.eu-west-1.amazonaws.com/1/prod_jobs__big.fifo", "prod_", ("jobs", "big")),
        ("http://localhost:4566/000000000000/app__tasks__slow", "", ("app__tasks", "slow")),
        ("http://localhost:4566/000000000000/emails.fifo", "", ("emails", None)),
        ("https://sqs.eu-west-1.amazonaws.com/1/staging_emails", "prod_", None),
    ],
)
def test_queue_from_url(url: str, prefix: str, target: tuple[str, str | None] | None) -> None:
    assert sqsd_client.queue_from_url(url, prefix) == target


QUEUE_URL = "https://sqs.eu-west-1.amazonaws.com/123456789012/prod_emails__big"
FIFO_URL = "https://sqs.eu-west-1.amazonaws.com/123456789012/prod_reports.fifo"
SENT = {"MessageId": "m-1", "MD5OfMessageBody": "49f68a5c8493ec2c0bf489821c21fc3b"}


@pytest.fixture
def sqs() -> Iterator[tuple[Any, Stubber]]:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-west-1"
    )
    client = session.client("sqs")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def test_autowake_wakes_after_send_message(
    sqs: tuple[Any, Stubber], start_daemon: Callable[..., FakeDaemon]
) -> None:
    client, stubber = sqs
    daemon = start_daemon()
    autowake(client, queue_prefix="prod_", socket_path=str(daemon.path))
    autowake(client, queue_prefix="prod_", socket_path=str(daemon.path))
    stubber.add_response("send_message", SENT)
    assert client.send_message(QueueUrl=QUEUE_URL, MessageBody="hi") == SENT
    assert daemon.requests == [{"cmd": "wake", "queue": "emails", "suffix": "big"}]


def test_autowake_wakes_after_send_message_batch(
    sqs: tuple[Any, Stubber], start_daemon: Callable[..., FakeDaemon]
) -> None:
    client, stubber = sqs
    daemon = start_daemon()
    autowake(client, queue_prefix="prod_", socket_path=str(daemon.path))
    entries = [{"Id": "1", "MessageBody": "hi", "MessageGroupId": "g"}]
    stubber.add_response("send_message_batch", {"Successful": [{"Id": "1", **SENT}], "Failed": []})
    stubber.add_response(
        "send_message_batch",
        {"Successful": [], "Failed": [{"Id": "1", "SenderFault": True, "Code": "Invalid"}]},
    )
    client.send_message_batch(QueueUrl=FIFO_URL, Entries=entries)
    client.send_message_batch(QueueUrl=FIFO_URL, Entries=entries)
    assert daemon.requests == [{"cmd": "wake", "queue": "reports", "suffix": None}]


def test_autowake_skips_failed_sends_and_foreign_queues(
    sqs: tuple[Any, Stubber], start_daemon: Callable[..., FakeDaemon]
) -> None:
    client, stubber = sqs
    daemon = start_daemon()
    autowake(client, queue_prefix="prod_", socket_path=str(daemon.path))
    stubber.add_client_error("send_message", "AWS.SimpleQueueService.NonExistentQueue")
    stubber.add_response("send_message", SENT)
    with pytest.raises(ClientError):
        client.send_message(QueueUrl=QUEUE_URL, MessageBody="hi")
    other = "https://sqs.eu-west-1.amazonaws.com/123456789012/staging_emails"
    client.send_message(QueueUrl=other, MessageBody="hi")
    assert daemon.requests == []


def test_autowake_retries_a_refused_suffix_as_part_of_the_name(
    sqs: tuple[Any, Stubber], start_daemon: Callable[..., FakeDaemon]
) -> None:
    client, stubber = sqs
    known = {("app__tasks__slow", None)}
    daemon = start_daemon(
        lambda r: {"ok": True} if (r["queue"], r["suffix"]) in known else protocol.error("unknown")
    )
    autowake(client, socket_path=str(daemon.path))
    stubber.add_response("send_message", SENT)
    client.send_message(
        QueueUrl=QUEUE_URL.replace("prod_emails__big", "app__tasks__slow"), MessageBody="x"
    )
    assert daemon.requests == [
        {"cmd": "wake", "queue": "app__tasks", "suffix": "slow"},
        {"cmd": "wake", "queue": "app__tasks__slow", "suffix": None},
    ]


def test_autowake_never_disturbs_the_producer(sqs: tuple[Any, Stubber], tmp_path: Path) -> None:
    client, stubber = sqs
    autowake(client, socket_path=str(tmp_path / "missing.sock"))
    stubber.add_response("send_message", SENT)
    assert client.send_message(QueueUrl=QUEUE_URL, MessageBody="hi") == SENT


def test_wake_timeout_bounds_the_whole_call(tmp_path: Path) -> None:
    """A daemon that dribbles its reply a byte at a time, each within the timeout, still
    costs the producer no more than ``timeout`` in all."""
    path = tmp_path / "dribble.sock"
    stop = threading.Event()

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()

        def dribble() -> None:
            conn, _ = listener.accept()
            with conn:
                for byte in b'{"ok": true, "woken": 1, "pad": "' + b"x" * 200:
                    if stop.wait(0.02):
                        return
                    with contextlib.suppress(OSError):
                        conn.send(bytes([byte]))

        thread = threading.Thread(target=dribble, daemon=True)
        thread.start()
        started = time.monotonic()
        woken = sqsd_client.wake("q", socket_path=str(path), timeout=0.05)
        elapsed = time.monotonic() - started
        stop.set()
        thread.join(timeout=5)

    assert woken is False
    assert elapsed < 0.5, f"wake took {elapsed:.2f} s with a 0.05 s budget"
