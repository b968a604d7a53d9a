"""Redaction: the one function every text leaving the daemon goes through (control replies,
log lines from structlog and the standard library, sd_notify STATUS=, error lines).

It masks the credentials of URLs (``http://user:password@host`` → ``http://***@host``),
AWS access key ids, secret keys and session tokens, and any secret registered with
``remember()`` (the password of the configured ``endpoint_url``, which botocore may repeat
without its URL). Message bodies in the ``failed_log`` file are data, not text about the
daemon: they are written as they are.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

MASK = "***"

# The userinfo of a URL: up to the last "@" before the path; never across quotes or spaces,
# so JSON and logfmt lines are masked field by field.
_URL_CREDENTIALS = r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^\s/?#\"'<>]+@"
# AWS access key ids (AKIA..., ASIA... for temporary ones, and the other documented kinds).
_ACCESS_KEY_ID = r"\b(?P<kind>AKIA|ASIA|AIDA|AROA|AIPA|ANPA|ANVA|AGPA|ABIA|ACCA)[A-Z0-9]{16}\b"
# A value after a name that says it is a secret: aws_secret_access_key=..., "SessionToken":
# "...", X-Amz-Security-Token=..., password=... (query strings, headers, JSON, logfmt).
_NAMED_SECRET = (
    r"(?P<name>(?i:aws_secret_access_key|secret_access_key|secretaccesskey|aws_session_token"
    r"|session_token|sessiontoken|x-amz-security-token|x-amz-signature|x-amz-credential"
    r"|password|passwd))"
    r"(?P<sep>\\?[\"']?\s*[=:]\s*\\?[\"']?)(?P<value>[^\s\"'&,;\\]+)"
)
# A bare secret access key: 40 characters of base64 with upper and lower case and a digit
# (a hexadecimal hash, all one case, is left alone).
_SECRET_KEY = (
    r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[A-Z])"
    r"(?=[A-Za-z0-9/+]*[0-9])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
)
_PATTERN = re.compile(
    "|".join(f"(?:{p})" for p in (_URL_CREDENTIALS, _ACCESS_KEY_ID, _NAMED_SECRET, _SECRET_KEY))
)
# Cheap test first: most texts (a wake reply, a "handled" log line) contain none of these.
_HINT_WORDS = ("secret", "token", "passw", "x-amz")
_HINT_KEYS = re.compile(r"A[A-Z]{3}[A-Z0-9]{16}|[A-Za-z0-9/+]{40}")

_remembered: set[str] = set()


def redact(text: str) -> str:
    """``text`` with every credential masked."""
    if _remembered:
        for secret in _remembered:
            if secret in text:
                text = text.replace(secret, MASK)
    if "@" not in text and not _HINT_KEYS.search(text):
        lowered = text.lower()
        if not any(word in lowered for word in _HINT_WORDS):
            return text
    return _PATTERN.sub(_mask, text)


def remember(url: str) -> None:
    """Mask the password (and user) of ``url`` wherever they appear, even without the URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    for secret in (parts.password, parts.username):
        # Short strings ("a", "user") would mask ordinary words: the URL rule covers them.
        if secret and len(secret) >= 6:
            _remembered.update({secret, unquote(secret)})


def _mask(match: re.Match[str]) -> str:
    if match.group("scheme"):
        return f"{match.group('scheme')}{MASK}@"
    if match.group("kind"):
        return f"{match.group('kind')}{MASK}"
    if match.group("name"):
        return f"{match.group('name')}{match.group('sep')}{MASK}"
    return MASK
