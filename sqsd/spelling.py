"""Suggestions for mistyped names: queues, commands and configuration keys."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def nearest(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to ``word``, or None when nothing is close enough to suggest."""
    choices = list(choices)
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not matches:  # a prefix or a different case is a strong hint too
        lowered = word.lower()
        matches = [c for c in choices if c.lower() == lowered or c.startswith(word)][:1]
    return matches[0] if matches and word else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` to append to an error, or "" when nothing is close."""
    match = nearest(word, choices)
    return f" (did you mean {match!r}?)" if match is not None else ""
