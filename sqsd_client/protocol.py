"""The control socket's wire format, shared by the master and every client.

One JSON object per line, UTF-8, in both directions. A request is
``{"cmd": "...", ...}`` and may carry ``"v": 1``; a response is ``{"ok": true, ...}``
or ``{"ok": false, "error": "..."}``. Requests longer than ``MAX_LINE`` are refused.
"""

import json
import os
from typing import Any

PROTOCOL_VERSION = 1
MAX_LINE = 64 * 1024
DEFAULT_SOCKET = "/run/sqsd/sqsd.sock"

# One shared encoder: json.dumps() with non-default options builds a new one per call.
_encoder = json.JSONEncoder(separators=(",", ":"))


class ProtocolError(ValueError):
    """A line that is not a valid message; ``str()`` is a short reason fit for a reply."""


def socket_path(explicit: str | None = None) -> str:
    """The control socket path: ``explicit``, else ``$SQSD_SOCKET``, else the default."""
    return explicit or os.environ.get("SQSD_SOCKET") or DEFAULT_SOCKET


def encode(msg: dict[str, Any]) -> bytes:
    """Serialize one message as compact JSON terminated by a newline."""
    return _encoder.encode(msg).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """Parse one request line (trailing newline optional) or raise ProtocolError."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"request longer than {MAX_LINE} bytes")
    msg = _parse(line)
    if "cmd" not in msg:
        raise ProtocolError('missing "cmd"')
    if not isinstance(msg["cmd"], str):
        raise ProtocolError('"cmd" must be a string')
    if msg.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {msg['v']!r}")
    return msg


def decode_reply(line: bytes) -> dict[str, Any]:
    """Parse one response line or raise ProtocolError."""
    msg = _parse(line)
    if not isinstance(msg.get("ok"), bool):
        raise ProtocolError('missing "ok"')
    return msg


def error(msg: str) -> dict[str, Any]:
    """An error response."""
    return {"ok": False, "error": msg}


def _parse(line: bytes) -> dict[str, Any]:
    try:
        text = line.decode()
    except UnicodeDecodeError:
        raise ProtocolError("not UTF-8") from None
    try:
        msg = json.loads(text)
    # Deeply nested arrays fit in MAX_LINE and exhaust the parser's recursion.
    except (ValueError, RecursionError):
        raise ProtocolError("not JSON") from None
    if not isinstance(msg, dict):
        raise ProtocolError("not a JSON object")
    return msg
