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

For integration tests, ``sqsd_daemon`` starts a real ``sqsd run`` against moto's server
(``sqsd[local]``) on loopback and proves at teardown that no process of it is left::

    def test_email_is_sent(sqsd_daemon):
        daemon = sqsd_daemon(imports=["myapp.receivers"])
        sqsd.configure(daemon.config_path)
        send_email("ann@example.com")
        daemon.wait_idle()
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # imported in the fixture, so loading the plugin stays cheap
    from sqsd.testing import Queues
    from sqsd.testing_daemon import LocalDaemon


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


@pytest.fixture(scope="session")
def sqsd_endpoint() -> Iterator[str]:
    """URL of moto's SQS server, started once per test session on a free loopback port."""
    from sqsd.local import LocalEndpoint, use_local_credentials

    use_local_credentials()
    endpoint = LocalEndpoint.start()
    try:
        yield endpoint.url
    finally:
        endpoint.stop()


@pytest.fixture
def sqsd_daemon(
    sqsd_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., LocalDaemon]]:
    """Start real daemons: ``sqsd_daemon(imports=[...], queues={...}, defaults={...})``.
    Each is stopped at teardown, which fails if any of its processes is left."""
    from sqsd.testing_daemon import LocalDaemon

    started: list[LocalDaemon] = []

    def start(**options: Any) -> LocalDaemon:
        directory = tmp_path_factory.mktemp("sqsd")
        daemon = LocalDaemon.start(directory, sqsd_endpoint, **options)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
