"""`sqsctl status` for people: 100 columns whatever the names, workers grouped by queue and
suffix, dead-letter queues in the depth table; and the status data those come from."""

from __future__ import annotations

from sqsd import config, plan, scaling
from sqsd.control.render import render_status
from sqsd.control.status import status_reply
from sqsd.states import Program

LONG = "reports_of_the_billing_department_for_the_whole_financial_year"


def handle(message):
    """The queues' handler."""


def worker(queue: str, suffix: str = "", index: int = 0, **fields) -> dict:
    entry = {"queue": queue, "suffix": suffix, "index": index, "pid": 31000 + index,
             "state": "polling", "state_seconds": 3.0, "restarts": 0, "failures": 0,
             "last_exit": None, "processed": 1043, "failed": 2, "retried": 5,
             "dead_lettered": 1, "rss": 48_000_000}
    entry.update(fields)
    return entry


def queue(name: str, suffix: str = "", dead_letter: str | None = None, visible: int = 0) -> dict:
    url_name = f"prod_{name}" + (f"__{suffix}" if suffix else "")
    return {"queue": name, "suffix": suffix, "url_name": url_name, "processes": 1,
            "dead_letter": dead_letter, "visible": visible, "in_flight": 0, "delayed": 0,
            "depth_error": None, "depth_age": 0.4}


STATUS = {
    "ok": True, "pid": 18322, "uptime": 8.0, "config": "/etc/sqsd/sqsd.toml", "stopping": False,
    "workers": [
        worker("emails"),
        worker(LONG, "quarterly", last_exit="killed by SIGABRT (message 97ad897e ran 301s, "
               "past hard_timeout)"),
        worker("emails", "big", state="busy", message_id="97ad897e-0000-4000-8000-000000000000"),
        worker(LONG),
        worker("emails", index=1, state="idle", idle_seconds=12.0),  # added by `sqsctl scale`
    ],
    "queues": [
        queue("emails", dead_letter="prod_emails_failed"),
        queue("emails", "big", dead_letter="prod_emails_failed"),
        queue(LONG),
        queue(LONG, "quarterly"),
    ],
    "dead_letters": [{"url_name": "prod_emails_failed", "queues": ["emails", "emails:big"],
                      "visible": 12, "in_flight": 0, "delayed": 0, "depth_error": None,
                      "depth_age": 0.4}],
}


def test_the_table_fits_100_columns_and_shortens_long_names_with_an_ellipsis():
    text = render_status(STATUS)
    assert max(len(line) for line in text.splitlines()) <= 100, text
    assert LONG not in text and "…" in text
    assert "…:quarterly" in text  # a shortened name keeps its suffix
    wide = render_status(STATUS, width=None)
    assert f"{LONG}:quarterly" in wide and f"prod_{LONG}__quarterly" in wide
    assert "past hard_timeout)" in wide


def test_workers_are_grouped_by_queue_and_suffix_with_scaled_ones_beside_their_queue():
    lines = render_status(STATUS, width=None).splitlines()
    first_table = lines[lines.index("") + 1 : lines.index("", lines.index("") + 1)]
    labels = [line.split()[0] for line in first_table[1:]]
    assert labels == ["emails", "emails", "emails:big", LONG, f"{LONG}:quarterly"]
    assert "idle 12s left" in first_table[2] and "busy 97ad897e" in first_table[3]


def test_dead_letter_queues_show_their_depth_after_the_queues_that_use_them():
    lines = render_status(STATUS).splitlines()
    dead = [line for line in lines if line.startswith("emails DLQ")]
    assert len(dead) == 1
    assert dead[0].split()[2:5] == ["prod_emails_failed", "-", "12"]
    assert lines.index(dead[0]) == next(i for i, line in enumerate(lines)
                                        if line.startswith("emails:big ")
                                        and "prod_emails__big" in line) + 1


def test_colour_marks_dead_letters_and_crashes_without_breaking_alignment():
    painted = render_status(STATUS, paint=lambda text, colour: f"<{text}>" if colour else text)
    assert "<12>" in painted.replace(" ", "")


def test_status_data_lists_each_dead_letter_queue_with_its_depth():
    settings = config.parse({"sqsd": {"queue_prefix": "p_"}, "queues": {
        "a": {"receiver": f"{__name__}:handle", "suffixes": ["", "big"],
              "dead_letter_queue": "a_dead"},
        "b": {"receiver": f"{__name__}:handle"},
    }})
    queues = plan.queue_settings(settings)
    programs = [Program(spec) for spec in plan.wanted(settings, queues).values()]
    reply = status_reply(
        pid=1, config_path="x.toml", uptime=1.0, stopping=False, settings=settings,
        programs=programs, sizes=scaling.Sizing(queues).sizes(),
        depths={"p_a_dead": {"visible": 3, "in_flight": 1, "delayed": 0}, "p_a": {"visible": 0}},
        depths_age=0.5, now=0.0, queue_settings=queues,
    )
    assert [q["dead_letter"] for q in reply["queues"]] == ["p_a_dead", "p_a_dead", None]
    [dead] = reply["dead_letters"]
    assert (dead["url_name"], dead["queues"], dead["visible"], dead["in_flight"]) == (
        "p_a_dead", ["a", "a:big"], 3, 1)
