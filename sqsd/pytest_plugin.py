"""pytest plugin (entry point ``pytest11: sqsd``): the ``sqsd_queues`` fixture.

    def test_signup_sends_a_welcome_email(sqsd_queues):
        signup("ann@example.com")
        assert sqsd_queues["emails"].bodies == ["ann@example.com"]

    @pytest.mark.sqsd(eager=True)
    def test_welcome_email_is_handled(sqsd_queues):
        signup("ann@example.com")
        assert sqsd_queues["emails"].messages == []

The ``sqsd`` marker passes its keyword arguments (``eager``, ``silent``, ``config``) to
``sqsd.testing.queues()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # imported in the fixture, so loading the plugin stays cheap
    from sqsd.testing import Queues


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sqsd(eager=False, silent=False, config=None): options for the sqsd_queues fixture",
    )


@pytest.fixture
def sqsd_queues(request: pytest.FixtureRequest) -> Iterator[Queues]:
    """In-memory SQS queues for one test: sends are recorded, receivers run on demand
    (``sqsd_queues.run_pending()``) or, with ``@pytest.mark.sqsd(eager=True)``, at once."""
    from sqsd import testing

    marker = request.node.get_closest_marker("sqsd")
    options = dict(marker.kwargs) if marker is not None else {}
    with testing.queues(**options) as queues:
        yield queues
