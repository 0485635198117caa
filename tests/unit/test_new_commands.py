"""Commands as send and create_batch store them: checked, with their correlation ids."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest

from triobus.actors import BatchCommand, FollowUpCommand, FollowUpEvent
from triobus.persistence.errors import DuplicateCommandError, ValidationError
from triobus.persistence.new_commands import (
    follow_up_command_id,
    new_batch,
    new_batch_commands,
    new_command,
    new_command_id,
)
from triobus.persistence.validation import MAX_SECONDS


def test_error_messages_name_domain_and_id() -> None:
    command_id = uuid.uuid4()
    with pytest.raises(ValidationError) as info:
        new_command("payments", "Debit", command_id, {"x": float("inf")})
    assert "domain 'payments'" in str(info.value) and str(command_id) in str(info.value)


def test_max_attempts_must_be_a_positive_int() -> None:
    for bad in (0, -1, True, 2.5, "3", 1001):
        with pytest.raises(ValidationError, match="max_attempts"):
            new_command("d", "t", uuid.uuid4(), {}, max_attempts=bad)
    assert new_command("d", "t", uuid.uuid4(), {}, max_attempts=3).max_attempts == 3


def test_a_delay_over_ten_years_is_refused_naming_domain_and_command() -> None:
    with pytest.raises(ValidationError, match=r"delay.*domain 'd', command"):
        new_command("d", "T", uuid.uuid4(), {}, delay=MAX_SECONDS * 2)


def test_a_batch_is_checked_command_by_command_and_an_id_given_twice_is_refused() -> None:
    batch_id = uuid.uuid4()
    good = BatchCommand("T", uuid.uuid4(), {"n": 1}, reply_to="q")
    checked = new_batch_commands("d", batch_id, [good], max_payload_bytes=100, context="c")
    assert [(c.domain, c.command_id, c.reply_to) for c in checked] == [("d", good.command_id, "q")]
    bad = BatchCommand("T", uuid.uuid4(), {"x": "y" * 100})
    with pytest.raises(ValidationError, match=rf"commands\[1\] of batch {batch_id}: data is"):
        new_batch_commands("d", batch_id, [good, bad], max_payload_bytes=100, context="c")
    with pytest.raises(DuplicateCommandError, match=str(good.command_id)):
        new_batch_commands("d", batch_id, [good, good], max_payload_bytes=100, context="c")
    with pytest.raises(ValidationError, match=r"at least one command \(c\)"):
        new_batch_commands("d", batch_id, iter([]), max_payload_bytes=100, context="c")


# The 74 random bits of a UUIDv7: rand_a (12 bits above the variant) and rand_b (62).
RANDOM_BITS = (0xFFF << 64) | ((1 << 62) - 1)


def test_generated_correlation_ids_are_unique_and_not_repeated_after_fork() -> None:
    ids = {new_command("d", "T", uuid.uuid4(), {}).correlation_id for _ in range(1000)}
    assert len(ids) == 1000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports the id it generates next
        os.write(write, new_command("d", "T", uuid.uuid4(), {}).correlation_id.bytes)
        os._exit(0)
    os.close(write)
    child_id = uuid.UUID(bytes=os.read(read, 16))
    os.close(read)
    os.waitpid(pid, 0)
    parent_id = new_command("d", "T", uuid.uuid4(), {}).correlation_id
    # the random bits, not the whole id: the two may be made in different milliseconds
    assert child_id.int & RANDOM_BITS != parent_id.int & RANDOM_BITS


def test_the_ids_of_one_batch_are_distinct_and_not_those_of_another() -> None:
    def ids() -> set[int]:
        batch = [BatchCommand("T", uuid.uuid4(), {}) for _ in range(1000)]
        checked = new_batch_commands("d", uuid.uuid4(), batch, max_payload_bytes=10, context="c")
        return {c.correlation_id.int & RANDOM_BITS for c in checked}

    first, second = ids(), ids()
    assert len(first) == len(second) == 1000 and not first & second


def test_generated_correlation_ids_are_uuid7_ordered_by_their_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    first = new_command("d", "T", uuid.uuid4(), {}).correlation_id
    # until the millisecond after first's (which may already be later than `before`)
    while time.time_ns() // 1_000_000 <= first.int >> 80:
        pass
    later = [new_command("d", "T", uuid.uuid4(), {}).correlation_id for _ in range(100)]
    after = time.time_ns() // 1_000_000
    for made in [first, *later]:
        assert made.version == 7 and made.variant == uuid.RFC_4122, made
        assert before <= made.int >> 80 <= after, made
    assert all(first < made for made in later)
    # 74 random bits beside the time: ids of the same millisecond differ there
    assert len({made.int & RANDOM_BITS for made in later}) == len(later)


def test_new_command_ids_are_uuid7_of_this_millisecond_and_distinct() -> None:
    before = time.time_ns() // 1_000_000
    made = [new_command_id() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    assert all(m.version == 7 and before <= m.int >> 80 <= after for m in made)
    assert len(set(made)) == len(made)
    assert [m.int >> 80 for m in made] == sorted(m.int >> 80 for m in made)


def test_a_follow_up_id_is_its_batch_and_events_alone() -> None:
    batch_id = uuid.uuid4()
    ids = {
        (domain, batch, event): follow_up_command_id(domain, batch, event)
        for domain in ("d", "e")
        for batch in (batch_id, uuid.uuid4())
        for event in FollowUpEvent
    }
    assert len(set(ids.values())) == len(ids)  # one id per (domain, batch, event)
    again = follow_up_command_id("d", batch_id, FollowUpEvent.ON_FAILURE)
    assert again == ids["d", batch_id, FollowUpEvent.ON_FAILURE]  # stable: UUIDv5
    assert again.version == 5


def test_a_batch_stores_only_the_follow_ups_it_was_given() -> None:
    batch = new_batch(
        "d",
        [],
        open=True,
        on_failure_command=FollowUpCommand("alerts", "Page", {"who": "ops"}, max_attempts=2),
    )
    assert batch.follow_ups_json is not None
    assert json.loads(batch.follow_ups_json) == {
        "ON_FAILURE": {
            "domain": "alerts",
            "command_type": "Page",
            "command_id": str(follow_up_command_id("d", batch.batch_id, FollowUpEvent.ON_FAILURE)),
            "max_attempts": 2,
            "data": {"who": "ops"},
        }
    }
    assert new_batch("d", [], open=True).follow_ups_json is None
