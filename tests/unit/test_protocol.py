import json

import pytest

from sqsd_client import protocol
from sqsd_client.protocol import ProtocolError


def test_encode_is_one_compact_line() -> None:
    data = protocol.encode({"cmd": "wake", "queue": "emails", "suffix": None, "text": "a\nb"})
    assert data == b'{"cmd":"wake","queue":"emails","suffix":null,"text":"a\\nb"}\n'
    assert data.count(b"\n") == 1


def test_decode_roundtrip_with_and_without_newline() -> None:
    msg = {"cmd": "clear", "queues": ["a", "b"], "purge": False, "v": 1}
    assert protocol.decode(protocol.encode(msg)) == msg
    assert protocol.decode(b'{"cmd":"ping"}') == {"cmd": "ping"}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"\xff\xfe garbage", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"", "not JSON"),
        (b"[" * 60000, "not JSON"),
        (b"1" * 5000, "not JSON"),
        (b'["cmd", "ping"]', "not a JSON object"),
        (b'"ping"', "not a JSON object"),
        (b'{"command": "ping"}', 'missing "cmd"'),
        (b'{"cmd": 5}', '"cmd" must be a string'),
        (b'{"cmd": "ping", "v": 2}', "unsupported protocol version 2"),
    ],
)
def test_decode_rejects_with_short_reason(line: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        protocol.decode(line)
    assert str(excinfo.value) == reason


def test_decode_limits_line_length() -> None:
    padding = protocol.MAX_LINE - len(b'{"cmd":"ping","pad":""}')
    fits = json.dumps({"cmd": "ping", "pad": "x" * padding}, separators=(",", ":")).encode()
    assert len(fits) == protocol.MAX_LINE
    assert protocol.decode(fits)["cmd"] == "ping"
    with pytest.raises(ProtocolError, match="longer than"):
        protocol.decode(fits + b" ")


def test_decode_reply_requires_ok() -> None:
    assert protocol.decode_reply(b'{"ok":true,"pong":1}\n') == {"ok": True, "pong": 1}
    with pytest.raises(ProtocolError):
        protocol.decode_reply(b'{"cmd":"ping"}\n')


def test_error() -> None:
    assert protocol.error("no such queue") == {"ok": False, "error": "no such queue"}


def test_socket_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SQSD_SOCKET", raising=False)
    assert protocol.socket_path() == protocol.DEFAULT_SOCKET == "/run/sqsd/sqsd.sock"
    monkeypatch.setenv("SQSD_SOCKET", "/tmp/env.sock")
    assert protocol.socket_path() == "/tmp/env.sock"
    assert protocol.socket_path("/tmp/explicit.sock") == "/tmp/explicit.sock"
