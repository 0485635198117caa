"""Troubleshooting queue operations against a real PostgreSQL, including the operator race."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import trio

from triobus.actors import (
    AuditEventType,
    Command,
    CommandNotFoundError,
    CommandStatus,
    HandlerContext,
    InvalidOperationError,
    PermanentCommandError,
    ReplyOutcome,
    Runtime,
    ValidationError,
)

E = AuditEventType


@pytest.fixture
async def park(triobus_runtime: Runtime, eventually: Callable[..., Any]) -> Callable[..., Any]:
    """Returns `park(command_type="Broken", reply_to=None)`: sends a command that a worker
    moves to the TSQ, and waits until it is there."""
    fail_permanently = True

    async def broken(command: Command, ctx: HandlerContext) -> dict[str, int]:
        if fail_permanently:
            raise PermanentCommandError("BROKEN", "cannot do it", {"hint": "fix config"})
        return {"attempt": ctx.attempt}

    for command_type in ("Broken", "AlsoBroken"):
        triobus_runtime.registry.register("d", command_type, broken)
    await triobus_runtime.start_worker("d", poll_interval=0.05)

    async def park(command_type: str = "Broken", reply_to: str | None = None) -> uuid.UUID:
        sent = await triobus_runtime.bus.send(
            "d", command_type, uuid.uuid4(), {"x": 1}, reply_to=reply_to
        )

        async def parked() -> bool:
            command = await triobus_runtime.bus.get_command("d", sent.command_id)
            return command is not None and command.status == CommandStatus.IN_TROUBLESHOOTING_QUEUE

        await eventually(parked)
        return sent.command_id

    def heal() -> None:
        nonlocal fail_permanently
        fail_permanently = False

    park.heal = heal  # type: ignore[attr-defined]
    return park


async def events(runtime: Runtime, command_id: uuid.UUID) -> list[AuditEventType]:
    return [e.event_type for e in await runtime.bus.get_audit_trail(command_id)]


async def test_list_and_count(triobus_runtime: Runtime, park: Callable[..., Any]) -> None:
    first = await park()
    second = await park("AlsoBroken", reply_to="q")
    tsq = triobus_runtime.tsq
    items = await tsq.list_troubleshooting("d")
    assert [i.command_id for i in items] == [first, second]  # longest waiting first
    item = items[1]
    assert (item.command_type, item.data, item.reply_to) == ("AlsoBroken", {"x": 1}, "q")
    assert (item.error_type, item.error_code, item.error_message) == (
        "PermanentCommandError",
        "BROKEN",
        "cannot do it",
    )
    assert item.error_details == {"hint": "fix config"} and item.attempts == 1
    assert [i.command_id for i in await tsq.list_troubleshooting("d", command_type="Broken")] == [
        first
    ]
    assert [i.command_id for i in await tsq.list_troubleshooting("d", limit=1, offset=1)] == [
        second
    ]
    assert await tsq.count_troubleshooting("d") == 2
    assert await tsq.count_troubleshooting("d", command_type="AlsoBroken") == 1
    assert await tsq.count_troubleshooting("other") == 0


async def test_operator_retry_runs_the_command_again(
    triobus_runtime: Runtime, park: Callable[..., Any], eventually: Callable[..., Any]
) -> None:
    command_id = await park()
    park.heal()  # type: ignore[attr-defined]
    await triobus_runtime.tsq.operator_retry("d", command_id, operator="alice")

    async def completed() -> bool:
        command = await triobus_runtime.bus.get_command("d", command_id)
        return command is not None and command.status == CommandStatus.COMPLETED

    await eventually(completed)
    command = await triobus_runtime.bus.get_command("d", command_id)
    assert command is not None and command.result == {"attempt": 1}  # attempts were reset
    trail = await triobus_runtime.bus.get_audit_trail(command_id)
    assert [e.event_type for e in trail] == [
        E.SENT,
        E.RECEIVED,
        E.MOVED_TO_TSQ,
        E.OPERATOR_RETRY,
        E.RECEIVED,
        E.COMPLETED,
    ]
    assert trail[3].details == {"operator": "alice"}
    assert await triobus_runtime.tsq.count_troubleshooting("d") == 0


async def test_operator_retry_with_corrected_data_runs_on_it_and_records_the_old(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    runtime = triobus_runtime

    @runtime.registry.handler("d", "Bill")
    async def bill(command: Command, ctx: HandlerContext) -> dict[str, object]:
        if command.data["amount"] <= 0:
            raise PermanentCommandError("BAD_AMOUNT", "an amount must be positive")
        return {"billed": command.data["amount"]}

    await runtime.start_worker("d", poll_interval=0.05)
    command_id = (await runtime.bus.send("d", "Bill", uuid.uuid4(), {"amount": -5})).command_id

    async def status_is(status: CommandStatus) -> bool:
        command = await runtime.bus.get_command("d", command_id)
        return command is not None and command.status is status

    await eventually(lambda: status_is(CommandStatus.IN_TROUBLESHOOTING_QUEUE))
    bad_data: list[tuple[Any, str]] = [
        ([1], "data must be a JSON object"),
        ({"amount": float("nan")}, "Out of range float values"),
    ]
    for bad, message in bad_data:
        with pytest.raises(ValidationError, match=message):
            await runtime.tsq.operator_retry("d", command_id, data=bad, operator="alice")
    assert await status_is(CommandStatus.IN_TROUBLESHOOTING_QUEUE)  # nothing written
    await runtime.tsq.operator_retry("d", command_id, data={"amount": 5}, operator="alice")
    await eventually(lambda: status_is(CommandStatus.COMPLETED))
    command = await runtime.bus.get_command("d", command_id)
    assert command is not None
    assert (command.data, command.result) == ({"amount": 5}, {"billed": 5})
    [retry] = [
        e for e in await runtime.bus.get_audit_trail(command_id) if e.event_type is E.OPERATOR_RETRY
    ]
    assert retry.details == {
        "operator": "alice",
        "data_changed": True,
        "previous_data": {"amount": -5},
    }


async def test_operator_cancel_writes_a_canceled_reply(
    triobus_runtime: Runtime, park: Callable[..., Any]
) -> None:
    command_id = await park(reply_to="q")
    await triobus_runtime.tsq.operator_cancel("d", command_id, "customer withdrew", operator="bob")
    command = await triobus_runtime.bus.get_command("d", command_id)
    assert command is not None and command.status is CommandStatus.CANCELED
    trail = await triobus_runtime.bus.get_audit_trail(command_id)
    assert trail[-1].event_type is E.OPERATOR_CANCEL
    assert trail[-1].details == {"operator": "bob", "reason": "customer withdrew"}
    (reply,) = await triobus_runtime.bus.read_replies("q")
    assert reply.outcome is ReplyOutcome.CANCELED and reply.data == {"reason": "customer withdrew"}


async def test_operator_complete_stores_result_and_success_reply(
    triobus_runtime: Runtime, park: Callable[..., Any]
) -> None:
    command_id = await park(reply_to="q")
    await triobus_runtime.tsq.operator_complete("d", command_id, result_data={"manual": True})
    command = await triobus_runtime.bus.get_command("d", command_id)
    assert command is not None and command.status is CommandStatus.COMPLETED
    assert command.result == {"manual": True}
    trail = await triobus_runtime.bus.get_audit_trail(command_id)
    assert trail[-1].event_type is E.OPERATOR_COMPLETE
    assert trail[-1].details == {"operator": None}
    (reply,) = await triobus_runtime.bus.read_replies("q")
    assert reply.outcome is ReplyOutcome.SUCCESS and reply.data == {"manual": True}


async def test_two_concurrent_cancels_exactly_one_wins(
    triobus_runtime: Runtime, park: Callable[..., Any]
) -> None:
    command_id = await park(reply_to="q")
    outcomes: list[object] = []
    go = trio.Event()

    async def cancel(operator: str) -> None:
        await go.wait()
        try:
            await triobus_runtime.tsq.operator_cancel("d", command_id, "dup", operator=operator)
            outcomes.append("ok")
        except InvalidOperationError as ex:
            outcomes.append(ex)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel, "alice")
        nursery.start_soon(cancel, "bob")
        await trio.testing.wait_all_tasks_blocked()
        go.set()

    assert outcomes.count("ok") == 1
    (error,) = [o for o in outcomes if o != "ok"]
    assert "CANCELED" in str(error) and str(command_id) in str(error)
    assert (await events(triobus_runtime, command_id)).count(E.OPERATOR_CANCEL) == 1
    assert len(await triobus_runtime.bus.read_replies("q")) == 1


async def test_actions_on_unknown_or_non_tsq_commands(
    triobus_runtime: Runtime, park: Callable[..., Any]
) -> None:
    tsq = triobus_runtime.tsq
    unknown = uuid.uuid4()
    with pytest.raises(CommandNotFoundError, match=str(unknown)):
        await tsq.operator_retry("d", unknown)
    pending = await triobus_runtime.bus.send("quiet", "T", uuid.uuid4(), {})
    with pytest.raises(InvalidOperationError, match="is PENDING"):
        await tsq.operator_complete("quiet", pending.command_id)
    command_id = await park()
    with pytest.raises(CommandNotFoundError):  # the right id in the wrong domain
        await tsq.operator_cancel("other", command_id, "wrong domain")
    assert await tsq.count_troubleshooting("d") == 1


async def test_bulk_retry_and_cancel(triobus_runtime: Runtime, park: Callable[..., Any]) -> None:
    tsq = triobus_runtime.tsq
    broken = [await park() for _ in range(2)]
    also = await park("AlsoBroken", reply_to="q")
    assert await tsq.cancel_all("d", "obsolete", command_type="AlsoBroken") == 1
    (reply,) = await triobus_runtime.bus.read_replies("q")
    assert (reply.command_id, reply.outcome) == (also, ReplyOutcome.CANCELED)
    # The worker puts them straight back in the TSQ, so wait for neither outcome: count.
    assert await tsq.retry_all("d", operator="ops") == 2
    for command_id in broken:
        assert E.OPERATOR_RETRY in await events(triobus_runtime, command_id)
    assert await tsq.cancel_all("nothing-here", "none") == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda tsq: tsq.operator_retry("d", "nope"), "command_id must be a UUID"),
        (lambda tsq: tsq.operator_cancel("d", uuid.uuid4(), "  "), "reason must not be empty"),
        (lambda tsq: tsq.operator_cancel("d", uuid.uuid4(), "x\x00"), "control characters"),
        (
            lambda tsq: tsq.operator_complete("d", uuid.uuid4(), result_data={"x": {1}}),
            "not JSON-serialisable",
        ),
        (lambda tsq: tsq.list_troubleshooting("d", limit=0), "limit"),
        (lambda tsq: tsq.retry_all("d", operator="\n"), "operator"),
    ],
)
async def test_bad_input_is_rejected(
    triobus_runtime: Runtime, call: Callable[..., Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        await call(triobus_runtime.tsq)
