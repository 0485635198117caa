"""The application's transaction: what triobus writes with `conn=` commits or rolls back
with the application's own writes, and nothing is seen or run before the commit."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from tests.integration.batch_work import Calls, commands, register_work
from triobus.actors import (
    BatchCommand,
    Command,
    CommandNotFoundError,
    CommandStatus,
    DatabaseError,
    DuplicateCommandError,
    HandlerContext,
    InvalidOperationError,
    PermanentCommandError,
    Runtime,
    Transaction,
    ValidationError,
    open_runtime,
)
from triobus.persistence.driver import DriverConnection, connect


@pytest.fixture
async def observer(triobus_runtime: Runtime, triobus_dsn: str) -> AsyncIterator[DriverConnection]:
    """Another session, and the application's own table."""
    conn = await connect(triobus_dsn)
    await conn.execute("CREATE TABLE app_order (id uuid PRIMARY KEY, note text)")
    yield conn
    await conn.close()


async def stored(observer: DriverConnection) -> tuple[int, int]:
    """(orders, commands) as another session sees them: committed rows only."""
    row = await observer.fetch_one(
        "SELECT (SELECT count(*) FROM app_order) AS orders,"
        " (SELECT count(*) FROM triobus.command) AS commands"
    )
    assert row is not None
    return row["orders"], row["commands"]


async def place_order(conn: Transaction, note: str = "order") -> uuid.UUID:
    order_id = uuid.uuid4()
    await conn.execute("INSERT INTO app_order VALUES (%s, %s)", (order_id, note))
    return order_id


class Undo(Exception):
    """The application's own failure, which rolls its transaction back."""


async def rolled_back(runtime: Runtime, write: Callable[[Transaction], Awaitable[object]]) -> None:
    """Run `write` in a transaction whose block then fails."""

    async def block() -> None:
        async with runtime.transaction() as conn:
            await write(conn)
            raise Undo

    with pytest.raises(Undo):
        await block()


def count_runs(runtime: Runtime) -> list[uuid.UUID]:
    ran: list[uuid.UUID] = []

    @runtime.registry.handler("d", "Ship")
    async def ship(command: Command, ctx: HandlerContext) -> None:
        ran.append(command.command_id)

    return ran


async def test_a_send_commits_with_the_applications_row_and_wakes_the_worker_on_commit(
    triobus_runtime: Runtime,
    observer: DriverConnection,
    eventually: Callable[..., Awaitable[object]],
) -> None:
    runtime = triobus_runtime
    ran = count_runs(runtime)
    await runtime.start_worker("d", poll_interval=3600)  # only a NOTIFY wakes it
    command_id = uuid.uuid4()
    async with runtime.transaction() as conn:
        await place_order(conn)
        await runtime.bus.send("d", "Ship", command_id, {}, conn=conn)
        row = await conn.fetch_one("SELECT status FROM triobus.command")
        assert row == {"status": "PENDING"}  # the transaction sees its own writes
        assert await stored(observer) == (0, 0)  # nobody else does
        assert await runtime.bus.get_command("d", command_id) is None
        await trio.testing.wait_all_tasks_blocked()
        assert ran == []

    async def shipped() -> bool:
        return ran == [command_id]

    await eventually(shipped)  # woken by the commit's NOTIFY, an hour before its poll
    assert await stored(observer) == (1, 1)


async def test_an_error_in_the_block_rolls_everything_back_and_the_pool_stays_healthy(
    triobus_runtime: Runtime, observer: DriverConnection
) -> None:
    runtime = triobus_runtime

    async def write(conn: Transaction) -> None:
        await place_order(conn)
        await runtime.bus.send("d", "Ship", uuid.uuid4(), {}, conn=conn)

    await rolled_back(runtime, write)
    assert await stored(observer) == (0, 0)
    pool = runtime.pool.statistics()
    assert (pool.open, pool.idle, pool.discarded) == (pool.idle, pool.idle, 0)
    async with runtime.transaction() as conn:  # the connection came back clean
        await place_order(conn)
    assert await stored(observer) == (1, 0)


async def test_a_cancellation_in_the_block_rolls_everything_back(
    triobus_runtime: Runtime, observer: DriverConnection
) -> None:
    runtime = triobus_runtime
    with trio.CancelScope() as scope:
        async with runtime.transaction() as conn:
            await place_order(conn)
            await runtime.bus.send("d", "Ship", uuid.uuid4(), {}, conn=conn)
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert await stored(observer) == (0, 0)
    assert runtime.pool.statistics().discarded == 0


async def test_a_duplicate_leaves_the_transaction_usable(
    triobus_runtime: Runtime, observer: DriverConnection
) -> None:
    bus = triobus_runtime.bus
    taken = (await bus.send("d", "Ship", uuid.uuid4(), {})).command_id
    later = uuid.uuid4()
    async with triobus_runtime.transaction() as conn:
        await place_order(conn)
        with pytest.raises(DuplicateCommandError, match=str(taken)):
            await bus.send("d", "Ship", taken, {}, conn=conn)
        clash = [*commands("ok"), BatchCommand(command_type="Work", command_id=taken, data={})]
        with pytest.raises(DuplicateCommandError, match=str(taken)):
            await bus.create_batch("d", clash, conn=conn)
        await place_order(conn, "after the duplicates")
        await bus.send("d", "Ship", later, {}, conn=conn)
    assert await stored(observer) == (2, 2)  # the first send, and the one sent later
    assert await bus.get_command("d", later) is not None
    assert await bus.list_batches("d") == []


async def test_a_batch_gets_its_callback_only_once_its_transaction_has_committed(
    triobus_runtime: Runtime, observer: DriverConnection
) -> None:
    runtime = triobus_runtime
    await register_work(runtime)
    await runtime.start_worker("d")
    undone = Calls()
    await rolled_back(
        runtime,
        lambda conn: runtime.bus.create_batch("d", commands("ok"), on_complete=undone, conn=conn),
    )
    assert runtime.statistics().batches == ()  # nothing watches a batch that never was
    assert await stored(observer) == (0, 0)

    committed = Calls()
    async with runtime.transaction() as conn:
        batch_id = await runtime.bus.create_batch(
            "d", commands("ok", "ok"), on_complete=committed, conn=conn
        )
        assert runtime.statistics().batches == ()  # not before the commit
    final = await committed.wait()
    assert (final.batch_id, final.completed_count) == (batch_id, 2)
    assert undone.calls == [] and len(committed.calls) == 1


async def park(runtime: Runtime, eventually: Callable[..., Awaitable[object]]) -> uuid.UUID:
    """A command in the troubleshooting queue, its worker stopped."""

    @runtime.registry.handler("d", "Broken")
    async def broken(command: Command, ctx: HandlerContext) -> None:
        raise PermanentCommandError("BROKEN", "needs an operator")

    worker = await runtime.start_worker("d")
    command_id = (await runtime.bus.send("d", "Broken", uuid.uuid4(), {})).command_id

    async def parked() -> bool:
        return await runtime.tsq.count_troubleshooting("d") == 1

    await eventually(parked)
    await worker.stop()
    return command_id


async def status_of(runtime: Runtime, command_id: uuid.UUID) -> CommandStatus:
    command = await runtime.bus.get_command("d", command_id)
    assert command is not None
    return command.status


async def test_operator_actions_join_the_transaction(
    triobus_runtime: Runtime, eventually: Callable[..., Awaitable[object]]
) -> None:
    runtime = triobus_runtime
    command_id = await park(runtime, eventually)
    await rolled_back(
        runtime, lambda conn: runtime.tsq.operator_cancel("d", command_id, "undo", conn=conn)
    )
    assert await status_of(runtime, command_id) is CommandStatus.IN_TROUBLESHOOTING_QUEUE
    async with runtime.transaction() as conn:
        with pytest.raises(CommandNotFoundError):  # a refused action: conn stays usable
            await runtime.tsq.operator_retry("d", uuid.uuid4(), conn=conn)
        assert await runtime.tsq.cancel_all("d", "tidy up", conn=conn) == 1
        assert await status_of(runtime, command_id) is CommandStatus.IN_TROUBLESHOOTING_QUEUE
    assert await status_of(runtime, command_id) is CommandStatus.CANCELED


async def test_a_connection_triobus_cannot_join_is_refused_and_nothing_is_written(
    triobus_runtime: Runtime, triobus_dsn: str, observer: DriverConnection
) -> None:
    runtime = triobus_runtime
    bus = runtime.bus

    async def refused(conn: Any, message: str) -> None:
        with pytest.raises(ValidationError, match=message):
            await bus.send("d", "Ship", uuid.uuid4(), {}, conn=conn)
        with pytest.raises(ValidationError, match=message):
            await bus.create_batch("d", commands("ok"), conn=conn)
        with pytest.raises(ValidationError, match=message):
            await runtime.tsq.retry_all("d", conn=conn)

    async with runtime.pool.connection() as plain:
        await refused(plain, r"conn must be a transaction from runtime\.transaction\(\)")
    async with open_runtime(triobus_dsn, migrate=False) as other, other.transaction() as foreign:
        await refused(foreign, "a transaction of another runtime")
    async with runtime.transaction() as ended:
        pass
    await refused(ended, "whose block has ended")
    with pytest.raises(ValidationError, match="block has ended"):
        await ended.execute("SELECT 1")

    async def fail_a_statement_and_go_on() -> None:
        async with runtime.transaction() as failed:
            await place_order(failed)
            with pytest.raises(DatabaseError):
                await failed.execute("SELECT no_such_column FROM app_order")
            await refused(failed, "in a failed transaction")

    with pytest.raises(InvalidOperationError, match="rolled back, not committed"):
        await fail_a_statement_and_go_on()
    assert await stored(observer) == (0, 0)
