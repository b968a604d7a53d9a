"""``sqsctl send`` and ``sqsctl dlq`` replies for people (``--json`` prints the data)."""

from __future__ import annotations

import time
from typing import Any

from sqsd.control.render import WIDTH, Column, Paint, shorten, table
from sqsd.tools.dlq import DeadLetter

LIST_COLUMNS = (
    Column("ID"),
    Column("DEAD-LETTERED"),
    Column("FROM", shrink_to=8),
    Column("ERROR", shrink_to=12, middle=False),
    Column("BODY", shrink_to=12, middle=False, first=True),
)


def render_sent(reply: dict[str, Any]) -> str:
    text = f"sent {reply['message_id']} to {reply['url_name']}"
    if reply.get("delay"):
        text += f", visible in {reply['delay']:g}s"
    elif reply.get("woken"):
        text += f", woke {reply['woken']} worker(s)"
    return text


def render_list(
    url_name: str, approximate: int, messages: list[DeadLetter], paint: Paint, width: int | None
) -> str:
    """One row per message: short id, when it was dead-lettered, from where, why, its body."""
    header = f"{url_name}: about {approximate} message(s), {len(messages)} listed"
    if not messages:
        return header
    rows = [
        [
            m.id[:8],
            _when(m.sent_at),
            m.source or "-",
            (m.note("sqsd_error").partition("\n")[0] or "-", "red"),
            " ".join(m.body.split()),
        ]
        for m in messages
    ]
    return f"{header}\n\n" + table(LIST_COLUMNS, rows, width, paint)


def render_message(message: DeadLetter) -> str:
    """Everything about one message, its body last and in full."""
    entry = message.summary()
    lines = [
        f"id             {entry['id']}",
        f"dead-lettered  {_when(entry['sent'])}",
        f"from           {entry['source'] or '-'}",
        f"receives       {entry['receive_count'] or '-'}",
        f"error          {entry['error'] or '-'}",
    ]
    if "group" in entry:
        lines.append(f"group          {entry['group']}")
    for name, value in entry["attributes"].items():
        lines.append(f"attribute      {name} = {value!r}")
    return "\n".join([*lines, "", entry["body"]])


def render_redrive(source: str, reply: dict[str, Any], width: int | None = WIDTH) -> str:
    how = "SQS message-move task" if reply["method"] == "move-task" else "receive, send, delete"
    moved = ", ".join(f"{count} to {name}" for name, count in reply["moved"].items())
    lines = [f"moved {reply['total']} message(s) from {source}" + (f": {moved}" if moved else "")]
    lines.append(f"  by {how}" + (f" ({reply['note']})" if reply.get("note") else ""))
    if reply["left_newer"]:
        lines.append(f"  left {reply['left_newer']} dead-lettered after the redrive began")
    if reply["left_other"]:
        lines.append(
            f"  left {reply['left_other']} of other queues or suffixes (--to sends them anyway)"
        )
    for message_id, reason in reply["failed"].items():
        lines.append(shorten(f"  not moved {message_id}: {reason}", width or 10**6, False))
    if reply["undeleted"]:
        lines.append(
            f"  {len(reply['undeleted'])} copied but still in {source} (delete failed; a later "
            "redrive sends them again): " + ", ".join(reply["undeleted"])
        )
    if reply["interrupted"]:
        lines.append("  interrupted: the rest is still in the dead-letter queue")
    return "\n".join(lines)


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "-"
