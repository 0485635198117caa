"""Transactional handlers: an attempt's writes, follow-ups and completion commit together,
only while the lease is held; any other ending rolls them back and takes the usual path."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import attrs
import pytest
import trio

from tests.integration.batch_work import Calls
from triobus.actors import (
    BatchCommand,
    BusinessRuleError,
    Command,
    CommandMetadata,
    CommandStatus,
    DatabaseError,
    HandlerContext,
    HandlerRegistry,
    RetryPolicy,
    Runtime,
    Transaction,
    ValidationError,
    handler,
    open_runtime,
)
from triobus.persistence.driver import DriverConnection, connect

Eventually = Callable[..., Awaitable[Any]]


@pytest.fixture
async def observer(triobus_runtime: Runtime, triobus_dsn: str) -> AsyncIterator[DriverConnection]:
    """Another session, and the application's table of effects."""
    conn = await connect(triobus_dsn)
    await conn.execute("CREATE TABLE effect (command_id uuid PRIMARY KEY, note text)")
    yield conn
    await conn.close()


async def effects(observer: DriverConnection) -> list[uuid.UUID]:
    """The committed effect rows."""
    return [r["command_id"] for r in await observer.fetch_all("SELECT command_id FROM effect")]


async def write_effect(conn: Transaction | None, command: Command) -> None:
    assert conn is not None
    await conn.execute("INSERT INTO effect VALUES (%s, %s)", (command.command_id, "done"))


async def status_of(runtime: Runtime, command_id: uuid.UUID) -> CommandStatus | None:
    command = await runtime.bus.get_command("d", command_id)
    return None if command is None else command.status


async def settled(
    runtime: Runtime, eventually: Eventually, command_id: uuid.UUID, status: CommandStatus
) -> None:
    async def reached() -> bool:
        return await status_of(runtime, command_id) is status

    await eventually(reached)


@attrs.define
class Gate:
    """Holds a handler until `release`; `entered` is set once it is inside."""

    entered: trio.Event = attrs.field(factory=trio.Event)
    release: trio.Event = attrs.field(factory=trio.Event)

    async def hold(self) -> None:
        self.entered.set()
        with trio.fail_after(30):
            await self.release.wait()


def gated_effect(runtime: Runtime) -> Gate:
    """A transactional "Effect" handler that writes its effect row, then waits at a gate."""
    gate = Gate()

    @runtime.registry.handler("d", "Effect", transactional=True)
    async def effect(command: Command, ctx: HandlerContext) -> None:
        await write_effect(ctx.conn, command)
        await gate.hold()

    return gate


async def test_a_completed_attempt_commits_its_writes_with_the_completion(
    triobus_runtime: Runtime, observer: DriverConnection, eventually: Eventually
) -> None:
    runtime = triobus_runtime
    gate = Gate()
    seen: list[HandlerContext] = []

    @runtime.registry.handler("d", "Effect", transactional=True)
    async def effect(command: Command, ctx: HandlerContext) -> dict[str, str]:
        seen.append(ctx)
        await write_effect(ctx.conn, command)
        await gate.hold()
        return {"written": "yes"}

    worker = await runtime.start_worker("d")
    sent = await runtime.bus.send("d", "Effect", uuid.uuid4(), {}, reply_to="q")
    command_id = sent.command_id
    await gate.entered.wait()
    assert await effects(observer) == []  # written, not committed
    gate.release.set()
    await settled(runtime, eventually, command_id, CommandStatus.COMPLETED)
    assert await effects(observer) == [command_id]
    [reply] = await runtime.bus.read_replies("q")
    assert (reply.command_id, reply.outcome, reply.data) == (
        command_id,
        "SUCCESS",
        {"written": "yes"},
    )
    command = await runtime.bus.get_command("d", command_id)
    assert command is not None and command.result == {"written": "yes"}
    trail = [e.event_type for e in await runtime.bus.get_audit_trail(command_id, "d")]
    assert trail == ["SENT", "RECEIVED", "COMPLETED"]
    assert isinstance(seen[0].conn, Transaction) and seen[0].bus is runtime.bus
    statistics = worker.statistics()
    assert (statistics.completed, statistics.in_flight, statistics.ack_batches) == (1, 0, 0)


@pytest.mark.parametrize(
    ("outcome", "status", "error"),
    [
        ("raise", CommandStatus.PENDING, ("RuntimeError", "the handler failed after writing")),
        ("timeout", CommandStatus.PENDING, ("HandlerTimeout", "handler timed out")),
        ("rule", CommandStatus.FAILED, ("BusinessRuleError", "refused")),
        ("invalid", CommandStatus.IN_TROUBLESHOOTING_QUEUE, ("InvalidResult", "JSON object")),
        ("swallowed", CommandStatus.PENDING, ("ValidationError", "a statement in it failed")),
        ("ended", CommandStatus.PENDING, ("ValidationError", "rolled back by hand")),
    ],
)
async def test_an_attempt_that_does_not_complete_rolls_its_writes_back(
    triobus_runtime: Runtime,
    observer: DriverConnection,
    eventually: Eventually,
    outcome: str,
    status: CommandStatus,
    error: tuple[str, str],
) -> None:
    runtime = triobus_runtime
    swallowed: list[DatabaseError] = []

    @runtime.registry.handler("d", "Effect", transactional=True)
    async def effect(command: Command, ctx: HandlerContext) -> object:
        assert ctx.conn is not None
        await write_effect(ctx.conn, command)
        await ctx.send("d", "FollowUp", uuid.uuid4(), {})
        if outcome == "raise":
            raise RuntimeError("the handler failed after writing")
        if outcome == "timeout":
            await trio.sleep_forever()
        if outcome == "rule":
            raise BusinessRuleError("RULE", "refused")
        if outcome == "invalid":
            return ["not", "an", "object"]
        if outcome == "swallowed":  # a failed statement, caught: the transaction is lost
            try:
                await write_effect(ctx.conn, command)
            except DatabaseError as ex:
                swallowed.append(ex)
        if outcome == "ended":  # by hand: its writes are no longer the attempt's
            await ctx.conn.execute("ROLLBACK")
        return {}

    worker = await runtime.start_worker(
        "d", handler_timeout=0.5, retry_policy=RetryPolicy(backoff=(3600.0,))
    )
    command_id = (await runtime.bus.send("d", "Effect", uuid.uuid4(), {})).command_id

    async def failed() -> CommandMetadata | None:
        command = await runtime.bus.get_command("d", command_id)
        return command if command and command.last_error and command.status is status else None

    command = await eventually(failed)
    assert command.last_error is not None
    error_type, message = error
    assert command.last_error.type == error_type
    assert message in (command.last_error.message or "")
    assert len(swallowed) == (outcome == "swallowed")
    assert await effects(observer) == []
    assert [c.command_type for c in await runtime.bus.query_commands(domain="d")] == ["Effect"]

    async def acked() -> bool:
        return worker.statistics().in_flight == 0

    await eventually(acked)
    assert runtime.pool.statistics().discarded == 0  # every connection came back clean


async def test_a_result_whose_lease_was_lost_commits_nothing(
    triobus_runtime: Runtime, observer: DriverConnection, eventually: Eventually
) -> None:
    runtime = triobus_runtime
    gate = Gate()

    @runtime.registry.handler("d", "Effect", transactional=True)
    async def effect(command: Command, ctx: HandlerContext) -> None:
        await write_effect(ctx.conn, command)
        await ctx.send("d", "FollowUp", uuid.uuid4(), {})
        await gate.hold()

    worker = await runtime.start_worker("d")
    command_id = (await runtime.bus.send("d", "Effect", uuid.uuid4(), {})).command_id
    await gate.entered.wait()
    # Another worker claimed it meanwhile (its lease had expired): a new lease token.
    await observer.execute(
        "UPDATE triobus.command SET lease_token = gen_random_uuid() WHERE command_id = %s",
        (command_id,),
    )
    gate.release.set()

    async def discarded() -> bool:
        return worker.statistics().discarded == 1

    await eventually(discarded)
    assert await status_of(runtime, command_id) is CommandStatus.IN_PROGRESS
    assert await effects(observer) == []
    assert len(await runtime.bus.query_commands(domain="d")) == 1  # no follow-up
    assert worker.statistics().completed == 0


async def test_follow_ups_commit_with_the_completion_and_a_batch_callback_starts_after_it(
    triobus_runtime: Runtime, observer: DriverConnection, eventually: Eventually
) -> None:
    runtime = triobus_runtime
    calls = Calls()
    follow_up = uuid.uuid4()

    @runtime.registry.handler("d", "Effect", transactional=True)
    async def effect(command: Command, ctx: HandlerContext) -> None:
        await ctx.send("d", "FollowUp", follow_up, {"after": str(command.command_id)})
        await ctx.create_batch(
            "d",
            [BatchCommand(command_type="Part", command_id=uuid.uuid4(), data={})],
            on_complete=calls,
        )
        assert runtime.statistics().batches == ()  # not watched before the commit

    @runtime.registry.handler("d", "FollowUp")
    async def noted(command: Command, ctx: HandlerContext) -> None:
        pass

    @runtime.registry.handler("d", "Part")
    async def part(command: Command, ctx: HandlerContext) -> None:
        pass

    await runtime.start_worker("d")
    command_id = (await runtime.bus.send("d", "Effect", uuid.uuid4(), {})).command_id
    final = await calls.wait()
    assert final.completed_count == 1
    await settled(runtime, eventually, follow_up, CommandStatus.COMPLETED)
    assert await status_of(runtime, command_id) is CommandStatus.COMPLETED
    sent = await runtime.bus.get_command("d", follow_up)
    assert sent is not None and sent.data == {"after": str(command_id)}


async def test_a_normal_handler_sends_its_follow_ups_at_once(
    triobus_runtime: Runtime, eventually: Eventually
) -> None:
    runtime = triobus_runtime
    follow_up = uuid.uuid4()

    @runtime.registry.handler("d", "Send")
    async def send(command: Command, ctx: HandlerContext) -> None:
        assert ctx.conn is None
        await ctx.send("e", "FollowUp", follow_up, {})  # a domain no worker runs
        raise BusinessRuleError("RULE", "refused after sending")

    await runtime.start_worker("d")
    command_id = (await runtime.bus.send("d", "Send", uuid.uuid4(), {})).command_id
    await settled(runtime, eventually, command_id, CommandStatus.FAILED)
    sent = await runtime.bus.get_command("e", follow_up)
    assert sent is not None and sent.status is CommandStatus.PENDING  # sent, not undone


async def test_the_last_command_of_a_batch_completes_it_in_its_transaction(
    triobus_runtime: Runtime, observer: DriverConnection
) -> None:
    runtime = triobus_runtime

    @runtime.registry.handler("d", "Effect", transactional=True)
    async def effect(command: Command, ctx: HandlerContext) -> None:
        await write_effect(ctx.conn, command)

    await runtime.start_worker("d", concurrency=4)
    calls = Calls()
    members = [BatchCommand(command_type="Effect", command_id=uuid.uuid4(), data={}) for _ in "abc"]
    batch_id = await runtime.bus.create_batch("d", members, on_complete=calls)
    final = await calls.wait()
    assert (final.batch_id, final.completed_count, final.status) == (batch_id, 3, "COMPLETED")
    assert sorted(await effects(observer)) == sorted(m.command_id for m in members)
    assert [e.event_type for e in await runtime.bus.get_audit_trail(batch_id, "d")] == [
        "BATCH_STARTED",
        "BATCH_COMPLETED",
    ]


async def test_heartbeats_keep_the_lease_while_the_handler_holds_its_transaction(
    triobus_runtime: Runtime, observer: DriverConnection, eventually: Eventually
) -> None:
    runtime = triobus_runtime
    gate = gated_effect(runtime)
    await runtime.start_worker("d", visibility_timeout=1.0, heartbeat_interval=0.1)
    command_id = (await runtime.bus.send("d", "Effect", uuid.uuid4(), {})).command_id
    await gate.entered.wait()

    async def lease_ends() -> Any:
        row = await observer.fetch_one(
            "SELECT visible_at FROM triobus.command WHERE command_id = %s", (command_id,)
        )
        assert row is not None
        return row["visible_at"]

    first = await lease_ends()

    async def extended_beyond_first_lease() -> bool:
        row = await observer.fetch_one(
            "SELECT visible_at > %s + interval '1.5 seconds' AS later"
            " FROM triobus.command WHERE command_id = %s",
            (first, command_id),
        )
        return bool(row and row["later"])

    await eventually(extended_beyond_first_lease)  # heartbeats went on, several times
    gate.release.set()
    await settled(runtime, eventually, command_id, CommandStatus.COMPLETED)
    command = await runtime.bus.get_command("d", command_id)
    assert command is not None and command.attempts == 1  # never claimed again


async def test_a_stop_cancels_an_overrunning_transactional_handler_and_releases_its_command(
    triobus_runtime: Runtime, observer: DriverConnection, eventually: Eventually
) -> None:
    runtime = triobus_runtime
    gate = gated_effect(runtime)
    worker = await runtime.start_worker("d", grace_period=0.2)
    command_id = (await runtime.bus.send("d", "Effect", uuid.uuid4(), {})).command_id
    await gate.entered.wait()
    with trio.fail_after(15):
        await worker.stop()
    command = await runtime.bus.get_command("d", command_id)
    assert command is not None
    assert (command.status, command.attempts) == (CommandStatus.PENDING, 0)
    assert await effects(observer) == []
    assert runtime.pool.statistics().discarded == 0


async def test_at_most_pool_size_less_two_transactional_handlers_run_at_once(
    triobus_dsn: str, caplog: pytest.LogCaptureFixture, eventually: Eventually
) -> None:
    registry = HandlerRegistry()
    running: set[uuid.UUID] = set()
    most = 0
    release = trio.Event()

    @registry.handler("d", "Hold", transactional=True)
    async def hold(command: Command, ctx: HandlerContext) -> None:
        nonlocal most
        running.add(command.command_id)
        most = max(most, len(running))
        with trio.fail_after(30):
            await release.wait()
        running.discard(command.command_id)

    async with open_runtime(triobus_dsn, migrate=False, registry=registry, pool_size=4) as runtime:
        with caplog.at_level(logging.WARNING, "triobus.actors.runtime"):
            worker = await runtime.start_worker("d", concurrency=4, poll_interval=0.05)
        assert "pool_size >= 6" in caplog.text
        ids = [(await runtime.bus.send("d", "Hold", uuid.uuid4(), {})).command_id for _ in "abcd"]

        async def two_running() -> bool:
            return len(running) == 2

        await eventually(two_running)
        # Two connections stay free: the bus still answers while the handlers hold theirs.
        assert await runtime.bus.get_command("d", ids[0]) is not None
        assert worker.statistics().in_flight == 4
        release.set()

        async def all_completed() -> bool:
            return worker.statistics().completed == 4

        await eventually(all_completed)
    assert most == 2


def test_asyncio_and_transactional_together_are_refused_in_every_form() -> None:
    registry = HandlerRegistry()

    async def fn(command: Command, ctx: HandlerContext) -> Mapping[str, Any] | None:
        return None

    message = r"both asyncio=True and transactional=True.*'d'/'T'"
    with pytest.raises(ValidationError, match=message):
        registry.register("d", "T", fn, asyncio=True, transactional=True)
    with pytest.raises(ValidationError, match=message):
        registry.handler("d", "T", asyncio=True, transactional=True)
    with pytest.raises(ValidationError, match=message):
        handler("d", "T", asyncio=True, transactional=True)
    with pytest.raises(ValidationError, match=r"transactional must be a bool.*'d'/'T'"):
        registry.register("d", "T", fn, transactional="yes")  # type: ignore[arg-type]
    assert registry.get("d", "T") is None


def test_the_three_ways_of_registering_mark_a_handler_transactional() -> None:
    registry = HandlerRegistry()

    async def fn(command: Command, ctx: HandlerContext) -> None:
        return None

    class Handlers:
        @handler("d", "Marked", transactional=True)
        async def marked(self, command: Command, ctx: HandlerContext) -> None:
            return None

    registry.register("d", "Registered", fn, transactional=True)
    registry.handler("d", "Decorated", transactional=True)(fn)
    registry.register("d", "Plain", fn)
    registry.register_instance(Handlers())
    registered = {t: registry.get("d", t) for t in ("Registered", "Decorated", "Marked", "Plain")}
    flags = {t: h.transactional for t, h in registered.items() if h is not None}
    assert flags == {"Registered": True, "Decorated": True, "Marked": True, "Plain": False}
    assert registry.has_transactional("d") and not registry.has_transactional("e")


async def test_a_transactional_completion_writes_what_the_acker_writes(
    triobus_runtime: Runtime, observer: DriverConnection
) -> None:
    """The same command row, audit event, reply and batch counts as a normal handler's."""
    runtime = triobus_runtime

    @runtime.registry.handler("d", "Plain")
    async def plain(command: Command, ctx: HandlerContext) -> dict[str, int]:
        return {"n": 1}

    @runtime.registry.handler("d", "Transactional", transactional=True)
    async def transactional(command: Command, ctx: HandlerContext) -> dict[str, int]:
        return {"n": 1}

    await runtime.start_worker("d")
    calls = Calls()
    members = [
        BatchCommand(command_type=kind, command_id=uuid.uuid4(), data={}, reply_to="q")
        for kind in ("Plain", "Transactional")
    ]
    await runtime.bus.create_batch("d", members, on_complete=calls)
    final = await calls.wait()
    assert (final.completed_count, final.status) == (2, "COMPLETED")

    async def written(command_id: uuid.UUID | str) -> tuple[object, ...]:
        command = await runtime.bus.get_command("d", command_id)
        assert command is not None
        trail = await runtime.bus.get_audit_trail(command_id, "d")
        replies = [r for r in await runtime.bus.read_replies("q") if r.command_id == command_id]
        return (
            command.status,
            command.result,
            command.last_error,
            command.attempts,
            command.visible_at == command.created_at,
            [(e.event_type, e.details) for e in trail[1:]],  # after SENT
            [(r.outcome, r.data, r.correlation_id == command.correlation_id) for r in replies],
        )

    plain_row, transactional_row = [await written(m.command_id) for m in members]
    assert transactional_row == plain_row
