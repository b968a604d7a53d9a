"""Fixtures of the unit tests."""

from collections.abc import Iterator

import pytest

from sqsd.registry import REGISTRY


@pytest.fixture
def fresh_registry() -> Iterator[None]:
    """Each test registers its own receivers; the registry is restored afterwards."""
    saved = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)
