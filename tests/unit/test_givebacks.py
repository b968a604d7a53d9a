"""The shared give-back table that keeps graceful stops from using up max_retries."""

from __future__ import annotations

import os
import uuid

from sqsd.givebacks import GiveBacks


def test_counts_give_backs_per_message_and_forgets_finished_ones():
    table = GiveBacks()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    table.add(first)
    table.add(first)
    table.add(second)
    assert (table.count(first), table.count(second), table.count("unknown")) == (2, 1, 0)
    table.forget(first)
    assert (table.count(first), table.count(second)) == (0, 1)


def test_a_full_table_drops_new_entries_but_keeps_old_ones():
    table = GiveBacks(slots=8)
    ids = [str(uuid.uuid4()) for _ in range(12)]
    for message_id in ids:
        table.add(message_id)
    assert sum(table.count(message_id) for message_id in ids) == 8


def test_entries_written_by_a_forked_child_are_seen_by_the_parent():
    table = GiveBacks()
    message_id = str(uuid.uuid4())
    pid = os.fork()
    if pid == 0:
        table.add(message_id)
        os._exit(0)
    os.waitpid(pid, 0)
    assert table.count(message_id) == 1
