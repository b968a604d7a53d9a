"""The worker: one process, one SQS queue URL, one handler.

The main thread long-polls, calls the handler and decides each message's outcome. Two
helper threads (sqsd.housekeeping) delete finished messages in batches off the handler
path and extend the visibility of messages still in hand (the one running and those
waiting in its batch). What else the worker does to a message in SQS (re-delay, give
up, dead-letter, give back) is sqsd.message_actions', a mixin of the Worker.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import select
import signal
import threading
import time
from typing import Any

import setproctitle

from sqsd import engine, logs, outcome, scoreboard
from sqsd.attempts import AttemptTable
from sqsd.config import Settings
from sqsd.errors import (
    EXIT_CONFIG,
    EXIT_DONE,
    EXIT_OK,
    EXIT_RECYCLE,
    MissingQueue,
    QuickStop,
    RestartLater,
)
from sqsd.housekeeping import Housekeeper
from sqsd.message import Message
from sqsd.message_actions import MessageActions
from sqsd.outcome import Action
from sqsd.plan import WorkerSpec  # re-exported: its home was here
from sqsd.prefetch import Prefetch
from sqsd.sqs import ensure_queue, is_missing_queue, make_client, oldest_age
from sqsd.states import WorkerState

ERROR_BACKOFF_MAX = 30.0

_forks = 0  # os.fork() calls made by this process (a handler's, or the master's)


def _count_fork() -> None:
    global _forks
    _forks += 1


# subprocess starts its children without these hooks: only os.fork() (and multiprocessing's
# fork, which calls it) counts, so only then does the worker reap children it never made.
os.register_at_fork(after_in_parent=_count_fork)


class StopReceiving(BaseException):  # noqa: N818 - a control-flow signal, not an error
    """Raised from the SIGTERM handler to abandon a long poll or idle sleep in progress.
    A BaseException, so botocore's retry logic (``except Exception``) lets it through."""


class Worker(MessageActions):
    """Runs the receive → handle → delete loop for one queue URL until told to stop."""

    def __init__(
        self,
        spec: WorkerSpec,
        settings: Settings,
        *,
        slot: scoreboard.Slot,
        attempts: AttemptTable,
        wake_fd: int,
        master_pid: int,
        message_limit: int = 0,
    ):
        self.spec = spec
        self.queue = spec.queue
        self.settings = settings
        self.slot = slot
        self.attempts = attempts  # handler starts per message id, shared by this host
        self.wake_fd = wake_fd
        self.master_pid = master_pid
        self.log = logs.get("sqsd.worker", queue=spec.queue.name, suffix=spec.suffix)
        self.failed_log = logs.FailedLog(settings.failed_log)
        self.client: Any = None
        self.url = ""
        self.dead_letter_url = ""
        self.housekeeper: Housekeeper | None = None
        self.stop_requested = False
        self.interruptible = False  # in a long poll or a sleep: stop at once
        self.title = ""
        self.idle_sleep = 0.0
        self.error_sleep = 0.0
        self.handled = 0
        self.handled_lock = threading.Lock()  # handler threads count too (concurrency > 1)
        self.engine: Any = None  # sqsd.engine's, for concurrency > 1 or async def handlers
        self.prefetch: Prefetch | None = None  # the single-threaded loop's next receive
        self.runner: asyncio.Runner | None = None  # async def handlers' event loop
        self.pid = os.getpid()  # a handler's fork returns in a child too: that is not us
        self.forks_seen = _forks  # forks made by handlers since: children to reap
        self.warned: set[str] = set()  # message ids whose bad attributes were logged
        self.broken: dict[str, Exception] = {}  # message id -> why message_class failed
        recycle_after = self.queue.max_messages
        if recycle_after:  # jitter, so sibling workers don't recycle at the same moment
            recycle_after += random.randint(0, recycle_after // 10)
        self.recycle_after = recycle_after
        self.message_limit = message_limit  # `sqsd run --message-limit`: exit for good
        self.receive_params: dict[str, Any] = {
            "MaxNumberOfMessages": self.queue.batch_size,
            # The heartbeat counts on this timeout, whatever the queue's own default is.
            "VisibilityTimeout": self.queue.visibility_timeout,
            "WaitTimeSeconds": self.queue.wait_time_seconds,
            "AttributeNames": ["All"],
            "MessageAttributeNames": ["All"],
        }

    # -- process life -------------------------------------------------------------------

    def run(self) -> int:
        """The worker's main loop; returns the process exit code."""
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGQUIT, self._on_quick_stop_signal)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the master, which stops us
        self.client = make_client(self.settings, wait_time_seconds=self.queue.wait_time_seconds)
        try:
            self._resolve_queues()
        except MissingQueue:
            return EXIT_CONFIG
        if self.stop_requested:
            return EXIT_OK
        self.housekeeper = Housekeeper(
            self.client,
            self.url,
            self.queue.visibility_timeout,
            self.slot,
            self.log,
        )
        self.housekeeper.start()
        self.log.info("worker started", pid=os.getpid(), url=self.url)
        self.engine = engine.make_engine(self)
        self.slot.set_slots(self.queue.concurrency, asyncio=isinstance(self.engine, engine.Tasks))
        if self.engine is None:
            self.prefetch = Prefetch(self)
        code = EXIT_OK
        try:
            code = self._loop() if self.engine is None else self.engine.run()
        finally:
            self._set_state(WorkerState.STOPPING)
            if self.engine is not None:
                self.engine.close()
            if self.prefetch is not None:
                self.prefetch.close()
            self.housekeeper.stop()
            if self.runner is not None:
                self.runner.close()
            self.log.info("worker stopped", pid=os.getpid(), handled=self.handled, code=code)
        return code

    def _loop(self) -> int:
        pending = None  # the next receive, already in flight (sqsd.prefetch)
        try:
            while not self.stop_requested:
                self._reap_forks()
                if self.master_gone():
                    self.log.warning("master is gone; stopping")
                    return EXIT_OK
                code = self._limit_reached()
                if code is not None:
                    return code
                if pending is not None:
                    messages, pending = pending.result(), None
                    if not messages:
                        continue  # the backlog is gone: a plain receive next
                else:
                    try:
                        messages = self._hold(self._receive())
                    except MissingQueue:
                        return EXIT_CONFIG
                if messages:
                    self.idle_sleep = 0.0
                    if self.prefetch is not None:
                        pending = self.prefetch.start(len(messages))
                    self._run_batch(messages)
                    self._reap_forks()
                elif not self.stop_requested and self.error_sleep == 0.0:
                    self._sleep_idle()
            return EXIT_OK
        finally:
            if pending is not None and self.prefetch is not None:
                self.prefetch.give_back(pending)

    def master_gone(self) -> bool:
        return os.getppid() != self.master_pid

    def _limit_reached(self) -> int | None:
        """The exit code when ``--message-limit`` or recycling ends this worker now."""
        if self.message_limit and self.handled >= self.message_limit:
            self.log.info("message limit reached", handled=self.handled)
            return EXIT_DONE
        recycle = self._recycle_reason()
        if recycle:
            self.log.info("recycling worker", reason=recycle)
            return EXIT_RECYCLE
        return None

    def _set_state(self, state: WorkerState, *, idle_until: float = 0.0) -> None:
        """Publish the state to the master's scoreboard and to the process title."""
        self.slot.set_state(state, idle_until=idle_until)
        self._set_title(state)

    def _set_title(self, state: WorkerState, busy: int | None = None) -> None:
        if busy is None and self.engine is not None:
            busy = self.engine.running.count()
        elif busy is None:
            busy = 1 if state is WorkerState.BUSY else 0
        slots = f"{busy}/{self.queue.concurrency} slots"
        title = f"sqsd: worker {self.spec.label} {state.label} {slots}, {self.handled} done"
        if title != self.title:
            self.title = title
            setproctitle.setproctitle(title)

    def _resolve_queues(self) -> None:
        """Find (or, with create_queues, create) the queue and its dead-letter queue,
        retrying with backoff while SQS is unreachable."""
        create = self.settings.create_queues
        while not self.stop_requested:
            try:
                self.url = ensure_queue(self.client, self.spec.url_name, self.queue, create=create)
                if self.spec.dead_letter_name:
                    self.dead_letter_url = ensure_queue(
                        self.client, self.spec.dead_letter_name, self.queue, create=create
                    )
                break
            except Exception as exc:
                if is_missing_queue(exc):
                    missing = self.spec.dead_letter_name if self.url else self.spec.url_name
                    self.log.error(
                        "queue does not exist; create it or set create_queues = true",
                        sqs_queue=missing,
                    )
                    raise MissingQueue from exc
                self._sleep_after_error(exc)
        self.error_sleep = 0.0
        self.receive_params["QueueUrl"] = self.url

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        self.stop_requested = True
        if self.interruptible:
            raise StopReceiving

    def _on_quick_stop_signal(self, signum: int, frame: Any) -> None:
        """Quick stop: abandon the handler; its message reappears after the visibility
        timeout. Pending deletes are still flushed on the way out."""
        self.stop_requested = True
        raise QuickStop(EXIT_OK)

    def _recycle_reason(self) -> str:
        if self.recycle_after and self.handled >= self.recycle_after:
            return f"handled {self.handled} messages (max_messages)"
        if self.queue.max_memory_mb:
            import psutil

            rss_mb = psutil.Process().memory_info().rss / 2**20
            if rss_mb > self.queue.max_memory_mb:
                return f"RSS {rss_mb:.0f} MiB above max_memory_mb {self.queue.max_memory_mb}"
        return ""

    # -- receiving and idling -----------------------------------------------------------

    def _receive(
        self, count: int = 0, wait: int | None = None, *, background: bool = False
    ) -> list[dict[str, Any]]:
        """One ReceiveMessage: ``count`` messages at most (0: batch_size), waiting ``wait``
        seconds (None: wait_time_seconds). ``background``: a prefetch while a batch runs,
        which leaves the worker's state alone and, on an error, returns nothing (the next
        plain receive backs off)."""
        params = self.receive_params
        if count or wait is not None:
            params = dict(params)
            if count:
                params["MaxNumberOfMessages"] = count
            if wait is not None:
                params["WaitTimeSeconds"] = wait
        if background:
            try:
                response = self.client.receive_message(**params)
            except Exception as exc:
                self.log.debug("prefetch receive failed", error=str(exc))
                return []
            return self._received(response)
        if self.engine is None or not self.engine.busy:
            self._set_state(WorkerState.POLLING)
        else:
            self.slot.beat()
        try:
            # Only the main thread's receive is abandoned by SIGTERM (an engine may
            # receive on a helper thread: the signal must not land in its event loop).
            self.interruptible = _on_main_thread()
            if self.stop_requested:
                return []
            response = self.client.receive_message(**params)
        except StopReceiving:
            return []
        except Exception as exc:
            if is_missing_queue(exc):
                self.log.error("queue does not exist", url=self.url)
                raise MissingQueue from exc
            self._sleep_after_error(exc)
            return []
        finally:
            self.interruptible = False
        self.error_sleep = 0.0
        return self._received(response)

    def _received(self, response: dict[str, Any]) -> list[dict[str, Any]]:
        self.slot.add(scoreboard.RECEIVES)
        messages = response.get("Messages", [])
        self.slot.received(len(messages), oldest_age(messages))  # autoscaling's signals
        if not messages:
            self.slot.add(scoreboard.EMPTY_RECEIVES)
        self.slot.count_payload(messages)
        return messages

    def _sleep_after_error(self, exc: Exception) -> None:
        self.error_sleep = min(ERROR_BACKOFF_MAX, max(1.0, self.error_sleep * 2))
        delay = self.error_sleep * random.uniform(0.5, 1.0)
        self.log.warning("SQS call failed; backing off", error=str(exc), seconds=round(delay, 2))
        self._set_state(WorkerState.RETRYING, idle_until=time.monotonic() + delay)
        self._wait_for_wake(delay)

    def _sleep_idle(self) -> None:
        """After an empty poll: sleep 1, 2, 4 ... up to idle_sleep_max (±10 %), unless woken."""
        if self.queue.idle_sleep_max <= 0:
            return
        self.idle_sleep = min(self.queue.idle_sleep_max, max(1.0, self.idle_sleep * 2))
        delay = self.idle_sleep * random.uniform(0.9, 1.1)
        self._set_state(WorkerState.IDLE, idle_until=time.monotonic() + delay)
        if self._wait_for_wake(delay):
            self.idle_sleep = 0.0

    def _wait_for_wake(self, timeout: float) -> bool:
        """Sleep until a wake-up byte arrives or ``timeout`` passes; True when woken.

        Bytes written while we were busy or polling are still in the pipe, so a wake-up
        that raced with an empty poll makes us poll again at once.
        """
        deadline = time.monotonic() + timeout
        while not self.stop_requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                self.interruptible = _on_main_thread()
                if self.stop_requested:
                    return False
                ready, _, _ = select.select([self.wake_fd], [], [], min(remaining, 1.0))
            except StopReceiving:
                return False
            finally:
                self.interruptible = False
            if ready:
                data = os.read(self.wake_fd, 4096)
                if not data:  # the master closed its end: it is gone
                    self.stop_requested = True
                    return False
                return True
            self.slot.beat()
            if os.getppid() != self.master_pid:
                self.stop_requested = True
        return False

    # -- handling -----------------------------------------------------------------------

    def _process_batch(self, raws: list[dict[str, Any]]) -> None:
        self._run_batch(self._hold(raws))

    def _hold(self, raws: list[dict[str, Any]]) -> list[Message]:
        """The handler's messages for what a receive returned, kept hidden from now on."""
        received_at = time.monotonic()
        queue_name, suffix = self.queue.name, self.spec.suffix
        messages = [self._message(raw, queue_name, suffix) for raw in raws]
        assert self.housekeeper is not None
        self.housekeeper.hold(messages, received_at)
        return messages

    def _run_batch(self, messages: list[Message]) -> None:
        housekeeper = self.housekeeper
        assert housekeeper is not None
        self._set_title(WorkerState.BUSY)  # once a batch: the scoreboard has the per-message detail
        blocked_groups: set[str] = set()
        for position, message in enumerate(messages):
            if self.stop_requested:
                self._give_back(messages[position:])
                break
            group = message.group_id
            if group is not None and group in blocked_groups:
                self._give_back([message])
                continue
            kept = self._process_guarded(message)
            if kept and group is not None:
                blocked_groups.add(group)
        for message in messages:  # those never handled (given back, re-delayed) come back anew
            self.broken.pop(message.id, None)
        housekeeper.flush(wait=self.queue.fifo)

    def _process_guarded(self, message: Message) -> bool:
        """``_process``, whatever happens outside the handler; True when it stays queued."""
        try:
            return self._process(message)
        except Exception:
            # Whatever a producer put in the message, the loop goes on; the message
            # stays in the queue and max_receives gives up on it in the end.
            self.log.exception("message not processed", message_id=message.id)
            assert self.housekeeper is not None
            self.housekeeper.release(message)
            return True

    def _message(self, raw: dict[str, Any], queue_name: str, suffix: str) -> Message:
        """The handler's message; a plain Message when the queue's message class fails on
        this one (its handler then fails with that error, under the on_error policy)."""
        try:
            return self.spec.message_class(raw, queue_name, suffix)
        except Exception as exc:
            message = Message(raw, queue_name, suffix)
            self.broken[message.id] = exc
            return message

    def _process(self, message: Message) -> bool:
        """Handle one message; True when it stays in the queue (FIFO order must wait)."""
        settled = self._settle_unhandled(message)
        if settled is not None:
            return settled
        return self._handle(message)

    def _handle(self, message: Message) -> bool:
        """Call the handler and act on its outcome; True when the message stays queued."""
        begun = self._begin(message)
        if begun is None:
            return True
        error: BaseException | None = None
        try:
            try:  # in this frame: a failure's traceback shows one line of sqsd, not two
                broken = self.broken.pop(message.id, None)
                if broken is not None:
                    raise broken
                self._run(self.spec.handler(message))
            finally:
                self._exit_if_forked()
        except QuickStop:
            self._end(message, begun)
            raise
        except BaseException as exc:  # noqa: BLE001 - sys.exit() and Ctrl-C in a handler too
            # A handler's SystemExit or KeyboardInterrupt is its failure, not the worker's
            # end: the queue's on_error policy applies, as for any exception.
            error = exc
        return self._conclude(message, begun, error)

    def _begin(self, message: Message) -> tuple[int, float] | None:
        """Just before the handler: the start recorded, the slot told. Returns the running
        token and the start time; None when delete_on_start could not delete it."""
        if self.queue.delete_on_start and not self._delete_now(message):
            return None
        if not self.queue.delete_on_start:
            # Recorded before the handler runs, so a crash inside it is charged to it alone.
            self.attempts.start(message.id)
        if self.engine is None:
            self.slot.start_message(message.id)
            token = 0
        else:
            token = self.engine.running.start(message.id)
        self.slot.observe_age(scoreboard.message_age(message.attributes))
        return token, time.monotonic()

    def _conclude(
        self,
        message: Message,
        begun: tuple[int, float],
        error: BaseException | None,
        *,
        after_hook: bool = True,
    ) -> bool:
        """Act on the handler's outcome (``error`` None: it returned); True when the
        message stays queued. ``after_hook``: run after_message here (else the caller
        awaits it)."""
        housekeeper = self.housekeeper
        assert housekeeper is not None
        started = begun[1]
        kept = False
        try:
            if error is None:
                self.slot.add(scoreboard.PROCESSED)
                decision = outcome.after_handler(
                    self._rules(), None, receive_count=message.receive_count, starts=None
                )
                if decision.action is Action.DELETE:
                    self.attempts.finish(message.id)
                    housekeeper.delete(message)
                self.log.info(
                    "handled",
                    message_id=message.id,
                    receive_count=message.receive_count,
                    duration=round(time.monotonic() - started, 4),
                )
            elif isinstance(error, RestartLater):
                kept = True
                self._restart_later(message, error, started)
            else:
                kept = self._fail(message, error, started)
        finally:
            self._end(message, begun, after_hook=after_hook)
        if kept or self.queue.delete_on_start:
            housekeeper.release(message)
        return kept

    def _end(self, message: Message, begun: tuple[int, float], *, after_hook: bool = True) -> None:
        token, started = begun
        with self.handled_lock:
            self.handled += 1
        seconds = time.monotonic() - started
        self.slot.observe_handler(seconds)
        if self.engine is None:
            self.slot.end_message()
            if self.prefetch is not None:
                self.prefetch.observe(seconds)
        else:
            self.engine.running.end(token, seconds)
        if after_hook:
            self._after_message(message)

    def _run(self, result: Any) -> Any:
        """An ``async def`` handler (or hook) returned an awaitable: run it to the end on
        the worker's one event loop, made at the first use and kept, so its outcome,
        heartbeat and hard_timeout are those of a plain function."""
        if not inspect.isawaitable(result):
            return result
        if self.runner is None:
            self.runner = asyncio.Runner()
        return self.runner.run(_awaited(result))

    def _after_message(self, message: Message) -> None:
        try:
            if self.spec.after_message is not None:
                self._run(self.spec.after_message(message))
        except QuickStop:
            raise
        except BaseException:  # noqa: BLE001 - a hook's sys.exit() does not end the worker
            self._exit_if_forked()
            self.log.exception("after_message hook failed", message_id=message.id)
        finally:
            self._exit_if_forked()

    def _exit_if_forked(self) -> None:
        """A handler (or hook) that forked returns in the child as well: the child must
        not go on with the batch, delete messages or log as the worker. It leaves at once."""
        if os.getpid() != self.pid:
            os._exit(0)

    def _reap_forks(self) -> None:
        """Reap the children a handler forked (no zombies), once they exit. Only after a
        handler called os.fork(): reaping any child (-1) would otherwise take the exit status
        a handler's own subprocess.Popen may still wait for."""
        while self.forks_seen < _forks:  # one child to reap per fork
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # none left (the handler waited for them itself)
                self.forks_seen = _forks
                return
            if pid == 0:  # still running: look again after the next batch
                return
            self.forks_seen += 1
            self.log.debug("reaped a child a handler forked", pid=pid)


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
