"""Forking the master's children (workers and one-shot query processes).

A child never returns into master code: it undoes what it inherited from the master
(signal handling, descriptors, systemd's variables), runs its ``main`` and exits with what
that returns. It dies with the master (PR_SET_PDEATHSIG), and one forked just as the master
died exits at once.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from sqsd import logs
from sqsd.errors import EXIT_FAILED, EXIT_OK
from sqsd.notify import set_parent_death_signal


def fork(main: Callable[[], int], *, undo: Callable[[], None]) -> int:
    """Fork; in the child run ``undo()`` (close what belongs to the master), then ``main()``.
    Returns the child's pid in the parent."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        run_child(main, undo, parent)
    return pid


def run_child(main: Callable[[], int], undo: Callable[[], None], parent: int) -> NoReturn:
    code = EXIT_FAILED
    try:
        undo()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the master's to handle
        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(EXIT_OK)
        os.environ.pop("NOTIFY_SOCKET", None)
        os.environ.pop("WATCHDOG_USEC", None)
        faulthandler.enable()
        code = main()
    except SystemExit as exc:
        code = EXIT_OK if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        logs.print_exception()
        code = EXIT_FAILED
    finally:
        for stream in (sys.stdout, sys.stderr):  # a broken pipe must not skip _exit
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
