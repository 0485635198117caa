"""CommandBus against a real PostgreSQL: sends, idempotency, queries, the audit trail and
replies."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from triobus.actors import (
    AuditEventType,
    Command,
    CommandStatus,
    DuplicateCommandError,
    HandlerContext,
    Runtime,
    ValidationError,
)


async def test_send_stores_command_and_sent_audit_event(triobus_runtime: Runtime) -> None:
    bus = triobus_runtime.bus
    command_id = uuid.uuid4()
    result = await bus.send(
        "payments",
        "Debit",
        command_id,
        {"amount": 10},
        reply_to="payments.replies",
        max_attempts=5,
    )
    assert (result.domain, result.command_id) == ("payments", command_id)

    command = await bus.get_command("payments", command_id)
    assert command is not None
    assert command.status is CommandStatus.PENDING
    assert command.command_type == "Debit"
    assert command.data == {"amount": 10}
    assert command.correlation_id == result.correlation_id
    assert command.reply_to == "payments.replies"
    assert (command.attempts, command.max_attempts) == (0, 5)
    assert command.batch_id is None and command.last_error is None

    trail = await bus.get_audit_trail(command_id, domain="payments")
    assert [e.event_type for e in trail] == [AuditEventType.SENT]
    assert trail[0].details is not None
    assert trail[0].details.keys() == {
        "command_type",
        "correlation_id",
        "reply_to",
        "max_attempts",
        "visible_at",
    }
    assert trail[0].details["correlation_id"] == str(result.correlation_id)
    assert (trail[0].details["reply_to"], trail[0].details["max_attempts"]) == (
        "payments.replies",
        5,
    )


async def test_given_correlation_id_is_stored_and_string_ids_accepted(
    triobus_runtime: Runtime,
) -> None:
    correlation_id = uuid.uuid4()
    command_id = uuid.uuid4()
    result = await triobus_runtime.bus.send(
        "orders", "Ship", str(command_id), {}, correlation_id=str(correlation_id)
    )
    assert result.correlation_id == correlation_id
    command = await triobus_runtime.bus.get_command("orders", str(command_id))
    assert command is not None and command.correlation_id == correlation_id
    assert command.max_attempts is None  # left to the worker's retry policy


async def test_duplicate_send_raises_and_writes_nothing(triobus_runtime: Runtime) -> None:
    bus = triobus_runtime.bus
    command_id = uuid.uuid4()
    await bus.send("orders", "Ship", command_id, {"n": 1})
    with pytest.raises(DuplicateCommandError) as info:
        await bus.send("orders", "Ship", command_id, {"n": 2})
    assert "orders" in str(info.value) and str(command_id) in str(info.value)
    assert (info.value.domain, info.value.command_id) == ("orders", command_id)

    command = await bus.get_command("orders", command_id)
    assert command is not None and command.data == {"n": 1}
    assert len(await bus.get_audit_trail(command_id)) == 1


async def test_same_id_in_another_domain_is_a_different_command(
    triobus_runtime: Runtime,
) -> None:
    command_id = uuid.uuid4()
    await triobus_runtime.bus.send("a", "X", command_id, {})
    await triobus_runtime.bus.send("b", "X", command_id, {})
    assert len(await triobus_runtime.bus.query_commands()) == 2
    assert len(await triobus_runtime.bus.get_audit_trail(command_id, domain="a")) == 1


async def test_concurrent_duplicate_sends_exactly_one_wins(triobus_runtime: Runtime) -> None:
    bus = triobus_runtime.bus
    command_id = uuid.uuid4()
    outcomes: list[object] = []
    start = trio.Event()

    async def send(n: int) -> None:
        await start.wait()
        try:
            outcomes.append(await bus.send("race", "Go", command_id, {"n": n}))
        except DuplicateCommandError as ex:
            outcomes.append(ex)

    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(send, n)
        await trio.testing.wait_all_tasks_blocked()
        start.set()

    winners = [o for o in outcomes if not isinstance(o, DuplicateCommandError)]
    assert len(winners) == 1 and len(outcomes) == 8
    assert len(await bus.query_commands(domain="race")) == 1
    assert len(await bus.get_audit_trail(command_id)) == 1


async def test_get_command_unknown_is_none(triobus_runtime: Runtime) -> None:
    assert await triobus_runtime.bus.get_command("payments", uuid.uuid4()) is None


async def test_query_commands_filters_newest_first_and_pages(triobus_runtime: Runtime) -> None:
    bus = triobus_runtime.bus
    correlation_id = uuid.uuid4()
    sent = []
    for n in range(5):
        result = await bus.send(
            "shop",
            "Order" if n % 2 == 0 else "Refund",
            uuid.uuid4(),
            {"n": n},
            correlation_id=correlation_id if n < 3 else None,
        )
        sent.append(result.command_id)
    await bus.send("other", "Order", uuid.uuid4(), {})

    newest_first = [c.command_id for c in await bus.query_commands(domain="shop")]
    assert newest_first == list(reversed(sent))
    orders = await bus.query_commands(domain="shop", command_type="Order")
    assert [c.data["n"] for c in orders] == [4, 2, 0]
    correlated = await bus.query_commands(correlation_id=correlation_id)
    assert {c.command_id for c in correlated} == set(sent[:3])
    page = await bus.query_commands(domain="shop", limit=2, offset=2)
    assert [c.command_id for c in page] == [sent[2], sent[1]]
    assert len(await bus.query_commands(status="PENDING")) == 6
    assert await bus.query_commands(status=CommandStatus.COMPLETED) == []
    future = datetime.now(UTC) + timedelta(hours=1)
    assert await bus.query_commands(created_after=future) == []
    assert len(await bus.query_commands(created_before=future)) == 6


async def test_audit_trail_is_in_sequence_order(triobus_runtime: Runtime) -> None:
    trail = []
    for _ in range(3):
        command_id = uuid.uuid4()
        await triobus_runtime.bus.send("d", "T", command_id, {})
        trail.append(command_id)
    events = await triobus_runtime.bus.get_audit_trail(trail[1])
    assert [e.subject_id for e in events] == [trail[1]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"domain": " "}, "domain must not be empty"),
        ({"command_type": ""}, "command_type must not be empty"),
        ({"domain": "x" * 101}, "limit is 100"),
        ({"command_type": "bad type"}, "may only contain"),
        ({"command_id": "not-a-uuid"}, "command_id must be a UUID"),
        ({"data": [1, 2]}, "must be a JSON object"),
        ({"data": {"when": object()}}, "not JSON-serialisable"),
        ({"data": {"tags": {1, 2}}}, "not JSON-serialisable"),
        ({"data": {"x": float("nan")}}, "not JSON-serialisable"),
        ({"data": {"big": "x" * 2_000_000}}, "limit is 1048576"),
        ({"max_attempts": 0}, "max_attempts must be between 1"),
        ({"reply_to": "replies; DROP TABLE x"}, "reply_to"),
        ({"correlation_id": 42}, "correlation_id must be a UUID"),
    ],
)
async def test_bad_input_is_rejected_and_writes_nothing(
    triobus_runtime: Runtime, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {
        "domain": "payments",
        "command_type": "Debit",
        "command_id": uuid.uuid4(),
        "data": {},
    }
    args.update(kwargs)
    with pytest.raises(ValidationError, match=message):
        await triobus_runtime.bus.send(**args)  # type: ignore[arg-type]
    assert await triobus_runtime.bus.query_commands() == []


async def test_bad_query_arguments_are_rejected(triobus_runtime: Runtime) -> None:
    bus = triobus_runtime.bus
    with pytest.raises(ValidationError, match="status 'DONE'"):
        await bus.query_commands(status="DONE")
    with pytest.raises(ValidationError, match="timezone-aware"):
        await bus.query_commands(created_after=datetime(2026, 1, 1))
    with pytest.raises(ValidationError, match="limit"):
        await bus.query_commands(limit=0)
    with pytest.raises(ValidationError, match="domain 'payments'"):
        await bus.get_command("payments", "nope")


# -- replies ---------------------------------------------------------------------------


async def test_replies_can_be_iterated_and_acknowledged(
    triobus_runtime: Runtime,
) -> None:
    @triobus_runtime.registry.handler("d", "Echo")
    async def echo(command: Command, ctx: HandlerContext) -> dict[str, Any]:
        return dict(command.data)

    await triobus_runtime.start_worker("d")
    bus = triobus_runtime.bus
    got = []
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:

            async def send_later() -> None:
                for n in range(3):
                    await bus.send("d", "Echo", uuid.uuid4(), {"n": n}, reply_to="echoes")

            nursery.start_soon(send_later)
            async for reply in bus.iter_replies("echoes", poll_interval=30):
                got.append(reply)
                if len(got) == 3:
                    break
    assert sorted(r.data["n"] for r in got if r.data) == [0, 1, 2]
    assert await bus.ack_replies("echoes", [got[0].reply_id]) == 1
    assert await bus.ack_replies("other-queue", [got[1].reply_id]) == 0
    assert len(await bus.read_replies("echoes")) == 2


async def test_iter_replies_yields_a_reply_whose_lower_id_commits_last(
    triobus_runtime: Runtime,
) -> None:
    insert = (
        "WITH r AS (INSERT INTO triobus.reply (queue, domain, command_id, correlation_id,"
        " outcome) VALUES ('late', 'd', %s, %s, 'SUCCESS'))"
        " SELECT pg_notify('triobus_reply', 'late')"
    )
    bus = triobus_runtime.bus
    with trio.fail_after(15):
        replies = bus.iter_replies("late", poll_interval=30)
        async with triobus_runtime.pool.connection() as slow, slow.transaction():
            await slow.execute(insert, (uuid.uuid4(), uuid.uuid4()))  # takes the lower id
            async with triobus_runtime.pool.connection() as fast:
                await fast.execute(insert, (late := uuid.uuid4(), uuid.uuid4()))
            first = await anext(replies)
            assert first.command_id == late
        second = await anext(replies)  # committed after a higher id was yielded
        assert second.reply_id < first.reply_id
        await replies.aclose()  # type: ignore[attr-defined]
