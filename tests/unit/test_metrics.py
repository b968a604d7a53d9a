"""Metrics without a daemon: slot histograms and payload chunks, the master's running
totals, the exposition's names and labels (the contract), the HTTP listener's defences,
and what `sqsctl top` and `sqsctl wait` show."""

from __future__ import annotations

import selectors
import socket
import time
from dataclasses import dataclass

import pytest
from prometheus_client.exposition import generate_latest as prometheus_text
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_text
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from sqsd import metrics, scoreboard
from sqsd.control import http
from sqsd.states import Program, ProgramState, WorkerProcess
from sqsd.tools import progress, top

# -- the slot ---------------------------------------------------------------------------


def test_a_slot_is_1_kib_with_histograms_from_byte_640_after_64_counters():
    assert scoreboard.SLOT_SIZE == 1024
    assert scoreboard.HISTOGRAMS_AT == 640 >= 128 + 8 * 64
    assert len(scoreboard.COUNTERS) <= 64
    assert scoreboard.COUNTERS[9:12] == ("given_back", "dropped", "extra_chunks")


def test_observations_land_in_their_bucket_with_count_and_sum():
    slot = scoreboard.Scoreboard(2).allocate()
    for seconds in (0.0005, 0.005, 0.0051, 4000.0):
        slot.observe_handler(seconds)
    slot.observe_age(-2.0)  # a clock behind SQS's: counted as no wait at all
    slot.observe_age(None)  # no SentTimestamp: not counted
    handler = slot.read_histograms()["handler_seconds"]
    assert handler.count == 4 and handler.sum == pytest.approx(4000.0106)
    cumulative = dict(handler.cumulative())
    assert cumulative["0.005"] == 2  # a value on a bound counts in it (le)
    assert cumulative["0.01"] == 3
    assert cumulative["600.0"] == 3 and cumulative["+Inf"] == 4
    age = slot.read_histograms()["message_age_seconds"]
    assert age.count == 1 and age.sum == 0.0 and age.buckets[0] == 1


def test_a_reused_slot_starts_from_zero_and_neighbours_stay_apart():
    board = scoreboard.Scoreboard(2)
    first, second = board.allocate(), board.allocate()
    first.observe_handler(1.0)
    first.add(scoreboard.EXTRA_CHUNKS, 3)
    assert second.read_histograms()["handler_seconds"].count == 0
    board.release(first)
    again = board.allocate()
    assert again.read_histograms()["handler_seconds"].count == 0
    assert again.read().counters["extra_chunks"] == 0


def test_the_benchmark_baseline_slot_observes_nothing(monkeypatch):
    monkeypatch.setenv("SQSD_BENCH_NO_OBSERVE", "1")
    slot = scoreboard.Scoreboard(1).allocate()
    slot.observe_handler(1.0)
    slot.observe_age(1.0)
    slot.count_payload([{"Body": "x" * 200_000}])
    assert slot.read_histograms()["handler_seconds"].count == 0
    assert slot.read().counters["extra_chunks"] == 0


def test_payloads_are_billed_by_64_kib_chunk():
    kib = 1024
    assert scoreboard.extra_chunks([]) == 0
    assert scoreboard.extra_chunks([{"Body": "a" * 64 * kib}]) == 0
    assert scoreboard.extra_chunks([{"Body": "a" * (64 * kib + 1)}]) == 1
    assert scoreboard.extra_chunks([{"Body": "é" * 40 * kib}]) == 1  # 80 KiB of UTF-8
    ten = [{"Body": "a" * 60 * kib} for _ in range(10)]  # one receive of ten messages
    assert scoreboard.extra_chunks(ten) == 9
    sent = {"MessageBody": "a" * 60 * kib,
            "MessageAttributes": {"note": {"DataType": "String", "StringValue": "b" * 8 * kib}}}
    assert scoreboard.extra_chunks([sent]) == 1


def test_message_age_comes_from_sqs_sent_timestamp():
    assert scoreboard.message_age({"SentTimestamp": "1000000"}, now=1003.5) == 3.5
    assert scoreboard.message_age({}) is None
    assert scoreboard.message_age({"SentTimestamp": "soon"}) is None


# -- the master's totals -----------------------------------------------------------------


@dataclass(frozen=True)
class Queue:
    name: str


@dataclass(frozen=True)
class Spec:
    queue: Queue
    suffix: str = ""
    index: int = 0

    @property
    def key(self):
        return (self.queue.name, self.suffix, self.index)


def program_with_worker(board, queue="emails", suffix="", processed=0) -> Program:
    slot = board.allocate()
    slot.add(scoreboard.PROCESSED, processed)
    for _ in range(processed):
        slot.observe_handler(0.01)
    program = Program(Spec(Queue(queue), suffix), ProgramState.RUNNING)  # type: ignore[arg-type]
    program.worker = WorkerProcess(pid=100 + slot.index, slot=slot, wake_fd=-1, started=0.0)
    return program


def test_totals_never_go_backwards_when_workers_exit_or_programs_leave():
    board, totals = scoreboard.Scoreboard(8), metrics.Totals()
    program = program_with_worker(board, processed=5)
    before = totals.now([program])[("emails", "")]
    assert before.counters["processed"] == 5

    finished = totals.reap(program, program.worker.slot)  # the worker exits
    board.release(program.worker.slot)
    program.worker, program.restarts = None, 1
    assert finished == 5
    replacement = program_with_worker(board, processed=2)
    replacement.restarts = 1
    now = totals.now([replacement])[("emails", "")]
    assert now.counters["processed"] == 7
    assert now.histograms["handler_seconds"].count == 7
    assert now.restarts == 1

    totals.reap(replacement, replacement.worker.slot)  # scaled away: the program leaves
    totals.forget(replacement)
    gone = totals.now([])[("emails", "")]
    assert (gone.counters["processed"], gone.restarts) == (7, 1)


def test_depth_queries_are_counted_and_their_urls_kept():
    totals, urls = metrics.Totals(), {"p_gone": "http://old"}
    depths = {
        "p_emails": {"visible": 1, "url": "http://q/p_emails",
                     "requests": {"GetQueueUrl": 1, "GetQueueAttributes": 1}},
        "p_gone": {"error": "queue does not exist", "requests": {"GetQueueAttributes": 1}},
    }  # fmt: skip
    totals.depth_query_done(depths, {"p_emails": ("emails", ""), "p_gone": ("gone", "")}, urls)
    assert urls == {"p_emails": "http://q/p_emails"}
    assert depths["p_emails"] == {"visible": 1}  # as status shows it
    assert totals.tally(("emails", "")).requests()["GetQueueUrl"] == 1
    assert totals.tally(("gone", "")).billed() == 1


def test_cost_is_requests_and_extra_chunks_at_the_configured_price():
    tally = metrics.Tally()
    tally.counters.update(receives=100, deletes=50, sends=10, extra_chunks=40)
    tally.master_requests["GetQueueAttributes"] = 200
    assert tally.requests()["GetQueueAttributes"] == 200
    assert tally.billed() == 400
    assert tally.cost(0.40) == pytest.approx(400 * 0.40 / 1e6)


def snapshot(**changes) -> metrics.Snapshot:
    board, totals = scoreboard.Scoreboard(4), metrics.Totals()
    programs = [program_with_worker(board, "emails", "", 3),
                program_with_worker(board, "emails", "big", 1)]
    totals.woken(("emails", "big"))
    values = dict(
        tallies=totals.now(programs),
        states=metrics.worker_states(programs),
        depths={("emails", ""): {"visible": 4, "in_flight": 1, "delayed": 0},
                ("emails_failed", ""): {"visible": 2, "in_flight": 0, "delayed": 0}},
        depths_age=1.5,
        price_per_million=0.40,
        start_time=1.8e9,
        version="9.9.9",
    )
    return metrics.Snapshot(**{**values, **changes})


def test_the_exposition_has_the_documented_names_and_labels():
    text, content_type = metrics.exposition(snapshot())
    assert content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    expected = {
        "sqsd": "info", "sqsd_start_time_seconds": "gauge",
        "sqsd_messages": "counter", "sqsd_handler_seconds": "histogram",
        "sqsd_message_age_seconds": "histogram", "sqsd_sqs_requests": "counter",
        "sqsd_sqs_empty_receives": "counter", "sqsd_sqs_cost_dollars": "counter",
        "sqsd_workers": "gauge", "sqsd_worker_restarts": "counter",
        "sqsd_wakeups": "counter", "sqsd_queue_messages": "gauge",
        "sqsd_queue_messages_age_seconds": "gauge",
    }  # fmt: skip
    assert {name: f.type for name, f in families.items()} == expected
    labels = {name: {tuple(sorted(s.labels)) for s in f.samples} for name, f in families.items()}
    assert labels["sqsd_messages"] == {("outcome", "queue", "suffix")}
    assert labels["sqsd_sqs_requests"] == {("action", "queue", "suffix")}
    assert labels["sqsd_workers"] == {("queue", "state", "suffix")}
    assert labels["sqsd_queue_messages"] == {("queue", "state", "suffix")}
    assert labels["sqsd"] == {("version",)}
    outcomes = {s.labels["outcome"] for s in families["sqsd_messages"].samples}
    assert outcomes == set(metrics.OUTCOMES)
    assert {"processed", "failed", "retried", "dead_lettered", "dropped",
            "given_back"} == outcomes  # fmt: skip
    states = {(s.labels["suffix"], s.labels["state"]): s.value
              for s in families["sqsd_workers"].samples}
    assert states == {("", "starting"): 1, ("big", "starting"): 1}  # no series for empty states
    count = [s for s in families["sqsd_handler_seconds"].samples
             if s.name == "sqsd_handler_seconds_count" and s.labels["suffix"] == "big"]
    assert [s.value for s in count] == [1]
    woken = {s.labels["suffix"]: s.value for s in families["sqsd_wakeups"].samples}
    assert woken == {"": 0, "big": 1}
    dead = [s for s in families["sqsd_queue_messages"].samples
            if s.labels["queue"] == "emails_failed" and s.labels["state"] == "visible"]
    assert [s.value for s in dead] == [2]


def test_rendering_in_turns_gives_the_same_text_a_slice_a_turn(monkeypatch):
    monkeypatch.setattr(metrics, "SLICE", 5)
    snap = snapshot()
    whole, _ = metrics.exposition(snap)
    # Slices add up to what prometheus_client writes for the whole collector, with its
    # default escaping too.
    assert whole == openmetrics_text(metrics.Collector(snap))
    assert metrics.exposition(snap, openmetrics=False)[0] == prometheus_text(
        metrics.Collector(snap))
    turns, got = [], []
    metrics.exposition_in_turns(
        snap, openmetrics=True, later=turns.append, done=lambda text, kind: got.append(text)
    )
    steps = 0
    while turns:
        turns.pop(0)()
        steps += 1
    assert got == [whole] and whole.endswith(b"# EOF\n") and whole.count(b"# EOF") == 1
    assert whole.count(b"# TYPE sqsd_handler_seconds histogram") == 1
    parsed = list(text_string_to_metric_families(whole.decode()))
    assert len(parsed) == 13
    families = list(metrics.Collector(snap).collect())
    assert len(families) == 13 and steps > 14  # the histograms take several turns


def test_prometheus_text_for_scrapers_that_do_not_ask_for_openmetrics():
    assert metrics.wants_openmetrics("application/openmetrics-text; version=1.0.0,text/plain")
    assert not metrics.wants_openmetrics("text/plain")
    text, content_type = metrics.exposition(snapshot(), openmetrics=False)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"# EOF" not in text and b"sqsd_messages_total{" in text


def test_status_gets_totals_requests_and_cost_per_queue():
    snap = snapshot()
    reply = {"queues": [{"queue": "emails", "suffix": "big"}, {"queue": "new", "suffix": ""}]}
    metrics.annotate_status(reply, snap.tallies, 0.40)
    assert reply["sqs_price_per_million"] == 0.40
    big, new = reply["queues"]
    assert big["totals"]["processed"] == 1 and new["totals"]["processed"] == 0
    assert set(big["sqs_requests"]) >= {"ReceiveMessage", "DeleteMessageBatch"}
    assert new["cost"] == 0


# -- the HTTP listener -------------------------------------------------------------------


class Served:
    """A listener on a loopback port, served by hand."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.rendered = 0
        self.listener = http.MetricsListener("127.0.0.1:0", self.selector, self.render)

    def render(self, accept: str, done) -> None:
        self.rendered += 1
        done(f"sqsd_up 1\n# {accept}\n".encode(), "text/plain")

    def serve(self, seconds: float = 0.2) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for key, _ in self.selector.select(0.02):
                key.data()

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.listener.port))
        sock.settimeout(2)
        return sock

    def ask(self, request: bytes) -> bytes:
        with self.connect() as sock:
            sock.sendall(request)
            self.serve()
            return b"".join(iter(lambda: sock.recv(65536), b""))


@pytest.fixture
def served():
    server = Served()
    yield server
    server.listener.close()
    server.selector.close()


def test_get_metrics_is_answered_and_everything_else_is_404(served):
    reply = served.ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in head
    assert body == b"sqsd_up 1\n# text/plain\n"
    assert served.ask(b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert served.ask(b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert served.ask(b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert served.ask(b"GET /metrics HTTP/1.1\r\nX: " + b"y" * 9000).startswith(b"HTTP/1.1 431")
    assert served.rendered == 1


def test_slow_and_piling_clients_are_closed_and_the_listener_keeps_serving(served):
    silent = [served.connect() for _ in range(http.MAX_CONNECTIONS + 5)]
    served.serve()
    assert len(served.listener._connections) == http.MAX_CONNECTIONS
    # The oldest silent ones made room; the newest are still waiting.
    assert silent[0].recv(10) == b""
    served.listener.tick(time.monotonic() + http.TIMEOUT + 1)
    assert not served.listener._connections
    assert served.ask(b"GET /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200")
    for sock in silent:
        sock.close()


def test_an_address_that_cannot_be_listened_on_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(http.ListenError, match=f"cannot listen on 127.0.0.1:{port}: "):
            http.MetricsListener(f"127.0.0.1:{port}", selectors.DefaultSelector(), None)
    assert http.split_address("[::1]:9640") == ("::1", 9640)


# -- what the live views show ------------------------------------------------------------


def status_reply(processed: int, visible: int, cost: float = 0.0) -> dict:
    return {
        "pid": 7, "uptime": 30.0, "sqs_price_per_million": 0.40, "dead_letters": [],
        "queues": [{"queue": "emails", "suffix": "", "processes": 1, "visible": visible,
                    "in_flight": 1, "delayed": 0, "depth_age": 0.5,
                    "totals": {"processed": processed, "failed": 1},
                    "sqs_requests": {"ReceiveMessage": processed}, "cost": cost},
                   {"queue": "other", "suffix": "", "processes": 1, "visible": 50,
                    "in_flight": 0, "delayed": 0, "depth_age": 0.5}],
        "workers": [{"queue": "emails", "suffix": "", "index": 0, "pid": 11, "state": "busy",
                     "state_seconds": 2.0, "message_id": "abcdef123456", "message_seconds": 1.5,
                     "processed": processed, "failed": 1, "restarts": 0,
                     "api": {"receive": processed}}],
    }  # fmt: skip


def test_wait_progress_says_what_is_left_the_rate_and_the_eta():
    line = progress.Progress(["emails"])
    first = line.update(status_reply(0, 99), now=100.0)
    assert first.startswith("waiting: 100 left (99 visible, 1 in flight, 0 delayed)  ? msg/s")
    second = line.update(status_reply(20, 79), now=102.0)
    assert "80 left" in second and "10.0 msg/s" in second and "ETA 8s" in second
    done = line.update(status_reply(100, 0), now=110.0)
    assert "1 left" in done
    unknown = progress.Progress([]).update({"queues": [{"queue": "a", "suffix": ""}]})
    assert "not known yet" in unknown


def test_top_shows_queues_workers_rates_and_cost_per_hour():
    rates = top.Rates()
    rates.add(status_reply(0, 10, cost=0.0), at=0.0)
    rates.add(status_reply(10, 5, cost=0.00036), at=2.0)
    lines = [text for text, _ in top.render(status_reply(10, 5, 0.00036), rates, 100)]
    assert lines[0].startswith("sqsd pid 7  up 30s  1 worker  depths 0s old")
    assert lines[1] == "5.0 msg/s  18,000 SQS calls/h  $0.6480/h  $0.000360 since start"
    emails = [line for line in lines if line.startswith("emails ")][0]  # then its worker
    assert emails.split() == ["emails", "1", "5.0", "10", "1", "-", "5", "1", "0", "18,000",
                              "0.6480"]  # fmt: skip
    [worker] = [line for line in lines if " busy " in line]
    assert worker.split()[:8] == ["emails", "11", "busy", "2s", "abcdef12", "1.5s", "5.0", "10"]
    assert all(len(line) <= 100 for line in lines)
