"""The producer-side API: registration, default names and the task wire format."""

from __future__ import annotations

import pytest

import sqsd
from sqsd.message import Message, decode_call, encode_call
from sqsd.registry import REGISTRY, default_queue_name

pytestmark = pytest.mark.usefixtures("fresh_registry")


def test_default_queue_name_uses_module_and_name_with_double_underscores():
    def handler(message):
        pass

    handler.__module__ = "myapp.tasks"
    assert default_queue_name(handler) == "myapp__tasks__handler"


def test_receiver_registers_options_and_keeps_a_direct_call():
    @sqsd.receiver("emails", visibility_timeout=90, suffixes=["big"], delete_on_start=True)
    def handle(message):
        return message.body.upper()

    registration = REGISTRY["emails"]
    assert registration.options == {
        "visibility_timeout": 90,
        "delete_on_start": True,
        "suffixes": ["", "big"],
    }
    raw = {"Body": "hi", "MessageId": "1", "ReceiptHandle": "r"}
    assert handle.direct(Message(raw, "emails")) == "HI"


def test_task_runs_locally_when_called_and_handles_its_wire_format():
    calls = []

    @sqsd.task("resize", max_retries=2)
    def resize(image_id, width=128):
        calls.append((image_id, width))
        return image_id * width

    assert resize(2, width=3) == 6
    assert REGISTRY["resize"].options == {"max_retries": 2}
    body = encode_call((7,), {"width": 64})
    assert body == '[[7],{"width":64}]'
    REGISTRY["resize"].handler(Message({"Body": body, "MessageId": "1", "ReceiptHandle": "r"}))
    assert calls == [(2, 3), (7, 64)]


@pytest.mark.parametrize("body", ['{"a": 1}', "[[1]]", '[{"a": 1}, [1]]', "[[], {}, 3]"])
def test_task_bodies_that_are_not_args_and_kwargs_are_rejected(body):
    with pytest.raises(ValueError, match=r"not \[\[args\], \{kwargs\}\]"):
        decode_call(body)


def test_undecodable_task_body_raises():
    with pytest.raises(ValueError):
        decode_call("not json")


@pytest.mark.parametrize(
    ("args", "kwargs", "body"),
    [
        (("hello",), {}, "hello"),
        ((), {"body": "hello"}, "hello"),
        (({"a": 1},), {}, '{"a":1}'),
        ((), {"a": 1, "b": 2}, '{"a":1,"b":2}'),
    ],
)
def test_message_encode_turns_send_arguments_into_a_body(args, kwargs, body):
    assert Message.encode(*args, **kwargs) == body


def test_restart_later_is_transient_error():
    assert sqsd.RestartLater is sqsd.TransientError
    assert sqsd.RestartLater(delay=30).delay == 30
