"""The container suite's fixtures: one booted container for the whole session.

Collected only under `make systemd-test` (SQSD_SYSTEMD_TEST=1, set by ``container.py
test``), so that the plain `make test` never spends time here.
"""

import os
import time

import pytest

if not os.environ.get("SQSD_SYSTEMD_TEST"):
    collect_ignore_glob = ["test_*.py"]

# (check, figure) lines for the closing summary, in the order they were measured.
FIGURES: list[tuple[str, str]] = []


def report(check: str, figure: str) -> None:
    FIGURES.append((check, figure))


@pytest.fixture(scope="session")
def machine():
    from .container import CACHE, layers, why_not
    from .machine import Machine

    reason = why_not()
    if reason:
        pytest.skip(reason)
    lowers = layers()  # built beforehand by `container.py test`: here only reused
    machine = Machine(CACHE / f"run-{os.getpid()}", lowers)
    try:
        started = time.monotonic()
        machine.install()
        report("install", f"checkout, units and configuration installed in "
                          f"{time.monotonic() - started:.1f} s")
        seconds = machine.boot()
        analyze = machine.sh(["systemd-analyze", "time"], check=False).stdout.strip()
        report("boot time", f"container booted, sqsd.service active in {seconds:.1f} s "
                       f"({analyze.splitlines()[0] if analyze else 'systemd-analyze: ?'})")
        machine.first_boot_seconds = seconds
        yield machine
    finally:
        machine.destroy()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the units' journal from inside the container."""
    report_ = yield
    machine = item.funcargs.get("machine") if hasattr(item, "funcargs") else None
    if machine is not None and report_.failed and machine.pid1:
        try:
            journal = machine.sh(["journalctl", "--no-pager", "-n", "150", "-o", "short-monotonic",
                                  "-u", "sqsd*", "-u", "moto-sqs.service"], check=False).stdout
        except Exception as exc:  # the container itself may be gone
            journal = f"(no journal: {exc})"
        report_.sections.append(("journal inside the container", journal))
    return report_


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("sqsd under systemd: figures")
        for check, figure in FIGURES:
            terminalreporter.write_line(f"{check:<18} {figure}")
