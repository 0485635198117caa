"""Producers outside Trio: sends and batches on the application's own psycopg connection,
sync and asyncio, committed (or not) with the application's transaction."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest
import trio

from triobus.actors import Command, HandlerContext, InvalidOperationError, Runtime, open_runtime
from triobus.persistence import producer
from triobus.persistence.producer import BatchCommand, DuplicateCommandError, ValidationError


@pytest.fixture
def app(triobus_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """The application's connection (not autocommit, psycopg's default), and its table."""
    with psycopg.connect(triobus_dsn) as conn:
        conn.execute("CREATE TABLE app_order (id uuid PRIMARY KEY)")
        conn.commit()
        yield conn


@pytest.fixture
def other(triobus_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """Another session, in autocommit: it sees only what is committed."""
    with psycopg.connect(triobus_dsn, autocommit=True) as conn:
        yield conn


def count(conn: psycopg.Connection[Any], sql: str) -> int:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def commands_seen(conn: psycopg.Connection[Any]) -> int:
    return count(conn, "SELECT count(*) FROM triobus.command")


def test_a_send_commits_with_the_applications_transaction(
    app: psycopg.Connection[Any], other: psycopg.Connection[Any]
) -> None:
    other.execute("LISTEN triobus_command")
    with app.transaction():
        app.execute("INSERT INTO app_order VALUES (%s)", (uuid.uuid4(),))
        sent = producer.send(app, "shop", "Ship", uuid.uuid4(), {"n": 1}, reply_to="q")
        assert commands_seen(other) == 0 and not list(other.notifies(timeout=0))
    assert commands_seen(other) == 1
    assert [n.payload for n in other.notifies(timeout=5, stop_after=1)] == ["shop"]
    row = other.execute(
        "SELECT event_type, details->>'correlation_id' FROM triobus.audit WHERE subject_id = %s",
        (sent.command_id,),
    ).fetchone()
    assert row == ("SENT", str(sent.correlation_id))


def test_a_rolled_back_transaction_leaves_no_command(
    app: psycopg.Connection[Any], other: psycopg.Connection[Any]
) -> None:
    producer.send(app, "shop", "Ship", uuid.uuid4(), {})
    app.rollback()  # psycopg began a transaction: the caller decides, not triobus
    assert commands_seen(other) == 0


def test_in_autocommit_mode_a_send_and_a_batch_commit_at_once(
    triobus_dsn: str, other: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(triobus_dsn, autocommit=True) as conn:
        producer.send(conn, "shop", "Ship", uuid.uuid4(), {})
        batch_id = producer.create_batch(
            conn, "shop", [BatchCommand("Ship", uuid.uuid4(), {}) for _ in range(3)], name="b"
        )
    assert commands_seen(other) == 4
    assert count(other, f"SELECT total_count FROM triobus.batch WHERE batch_id = '{batch_id}'") == 3


def test_a_duplicate_leaves_the_applications_transaction_usable(
    app: psycopg.Connection[Any], other: psycopg.Connection[Any]
) -> None:
    taken = uuid.uuid4()
    with app.transaction():
        producer.send(app, "shop", "Ship", taken, {})
        with pytest.raises(DuplicateCommandError, match=str(taken)):
            producer.send(app, "shop", "Ship", taken, {})
        clash = [BatchCommand("Ship", uuid.uuid4(), {}), BatchCommand("Ship", taken, {})]
        with pytest.raises(DuplicateCommandError, match=str(taken)):
            producer.create_batch(app, "shop", clash)
        app.execute("INSERT INTO app_order VALUES (%s)", (uuid.uuid4(),))
    assert commands_seen(other) == 1
    assert count(other, "SELECT count(*) FROM app_order") == 1
    assert count(other, "SELECT count(*) FROM triobus.batch") == 0


def test_a_connection_it_cannot_use_is_refused_before_anything_is_written(
    app: psycopg.Connection[Any], other: psycopg.Connection[Any], triobus_dsn: str
) -> None:
    with pytest.raises(psycopg.errors.UndefinedColumn):
        app.execute("SELECT no_such_column FROM app_order")
    with pytest.raises(ValidationError, match=r"in a failed transaction.*domain 'shop'"):
        producer.send(app, "shop", "Ship", uuid.uuid4(), {})
    app.rollback()
    with pytest.raises(ValidationError, match=r"must be a psycopg\.Connection, got str"):
        producer.send("dsn", "shop", "Ship", uuid.uuid4(), {})  # type: ignore[arg-type]
    closed = psycopg.connect(triobus_dsn)
    closed.close()
    with pytest.raises(ValidationError, match=r"conn is closed \(domain 'shop', batch"):
        producer.create_batch(closed, "shop", [BatchCommand("Ship", uuid.uuid4(), {})])
    with pytest.raises(ValidationError, match="domain"):
        producer.send(app, "", "Ship", uuid.uuid4(), {})
    assert commands_seen(other) == 0


def test_the_asyncio_producer_sends_and_creates_batches(
    triobus_dsn: str, other: psycopg.Connection[Any]
) -> None:
    async def produce() -> uuid.UUID:
        async with await psycopg.AsyncConnection.connect(triobus_dsn) as conn:
            async with conn.transaction():
                await producer.send_async(conn, "shop", "Ship", uuid.uuid4(), {"n": 1})
                batch_id = await producer.create_batch_async(
                    conn, "shop", [BatchCommand("Ship", uuid.uuid4(), {}) for _ in range(2)]
                )
                assert commands_seen(other) == 0
            with pytest.raises(ValidationError, match=r"psycopg\.AsyncConnection"):
                await producer.send_async(other, "shop", "Ship", uuid.uuid4(), {})  # type: ignore[arg-type]
            return batch_id

    batch_id = asyncio.run(produce())
    assert commands_seen(other) == 3
    assert count(other, f"SELECT total_count FROM triobus.batch WHERE batch_id = '{batch_id}'") == 2


REPORT = producer.FollowUpCommand(domain="reports", command_type="Report", data={"k": 1})


def reports_seen(conn: psycopg.Connection[Any]) -> int:
    return count(conn, "SELECT count(*) FROM triobus.command WHERE domain = 'reports'")


def test_a_sync_producer_fills_an_open_batch_and_closes_it(
    app: psycopg.Connection[Any], other: psycopg.Connection[Any]
) -> None:
    with app.transaction():
        batch_id = producer.create_batch(app, "shop", [], open=True, on_complete_command=REPORT)
        producer.add_to_batch(app, "shop", batch_id, [BatchCommand("Ship", uuid.uuid4(), {})])
        assert commands_seen(other) == 0
    assert commands_seen(other) == 1
    assert producer.close_batch(app, "shop", batch_id) is False  # its member is open
    with pytest.raises(InvalidOperationError, match="is closed: adding commands"):
        producer.add_to_batch(app, "shop", batch_id, [BatchCommand("Ship", uuid.uuid4(), {})])
    assert commands_seen(other) == 1 and reports_seen(other) == 0


def test_an_asyncio_producer_closes_an_empty_open_batch_and_its_follow_up_is_sent(
    triobus_dsn: str, other: psycopg.Connection[Any]
) -> None:
    async def produce() -> bool:
        async with await psycopg.AsyncConnection.connect(triobus_dsn) as conn:
            batch_id = await producer.create_batch_async(
                conn, "shop", [], open=True, on_success_command=REPORT
            )
            with pytest.raises(ValidationError, match="a batch needs at least one command"):
                await producer.add_to_batch_async(conn, "shop", batch_id, [])
            return await producer.close_batch_async(conn, "shop", batch_id)

    assert asyncio.run(produce()) is True
    assert reports_seen(other) == 1


async def test_a_trio_worker_runs_what_a_sync_producer_sent(
    triobus_runtime: Runtime, triobus_dsn: str, eventually: Callable[..., Awaitable[object]]
) -> None:
    ran: list[uuid.UUID] = []

    @triobus_runtime.registry.handler("shop", "Ship")
    async def ship(command: Command, ctx: HandlerContext) -> None:
        ran.append(command.command_id)

    await triobus_runtime.start_worker("shop", poll_interval=3600)  # woken only by NOTIFY

    def produce() -> uuid.UUID:
        with psycopg.connect(triobus_dsn) as conn, conn.transaction():
            return producer.send(conn, "shop", "Ship", uuid.uuid4(), {}).command_id

    command_id = await trio.to_thread.run_sync(produce)

    async def shipped() -> bool:
        return ran == [command_id]

    await eventually(shipped)


def test_the_trio_runtime_called_from_asyncio_names_the_producer(triobus_dsn: str) -> None:
    async def open_it() -> None:
        async with open_runtime(triobus_dsn, migrate=False):
            pass

    with pytest.raises(InvalidOperationError, match=r"runs on Trio, not on asyncio.*producer"):
        asyncio.run(open_it())
