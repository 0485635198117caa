"""Driver contract suite: every test runs against both drivers (native Trio and threads)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from psycopg.types.json import Jsonb

from triobus.persistence.connection import TransactionState
from triobus.persistence.driver import (
    DriverConnection,
    DriverKind,
    DriverOptions,
    ThreadConnection,
    connect,
)
from triobus.persistence.errors import (
    DatabaseError,
    UniqueViolationError,
)
from triobus.persistence.pool import ConnectionPool

if TYPE_CHECKING:
    from tests.conftest import Proxy


async def count_rows(pool: ConnectionPool) -> int:
    async with pool.connection() as conn:
        row = await conn.fetch_one("SELECT count(*) AS n FROM t")
    assert row is not None
    return int(row["n"])


async def running_sleeps(pool: ConnectionPool) -> int:
    async with pool.connection() as conn:
        row = await conn.fetch_one(
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(%%'"
        )
    assert row is not None
    return int(row["n"])


async def test_queries_return_dict_rows_and_rowcounts(pool: ConnectionPool) -> None:
    async with pool.connection() as conn:
        assert await conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')") == 2
        rows = await conn.fetch_all("SELECT id, note FROM t ORDER BY id")
        assert rows == [{"id": 1, "note": "a"}, {"id": 2, "note": "b"}]
        assert await conn.fetch_one("SELECT note FROM t WHERE id = %s", (2,)) == {"note": "b"}
        assert await conn.fetch_one("SELECT note FROM t WHERE id = %s", (3,)) is None
        await conn.execute_many("INSERT INTO t VALUES (%s, %s)", [(3, "c"), (4, "d")])
    assert await count_rows(pool) == 4


async def test_transaction_commits_on_success_and_rolls_back_on_error(
    pool: ConnectionPool,
) -> None:
    async with pool.transaction() as conn:
        await conn.execute("INSERT INTO t VALUES (1, 'kept')")

    async def insert_then_fail() -> None:
        async with pool.transaction() as conn:
            await conn.execute("INSERT INTO t VALUES (2, 'rolled back')")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await insert_then_fail()
    assert await count_rows(pool) == 1


async def test_fetch_all_and_commit_runs_a_statement_and_commits_in_one_round_trip(
    pool: ConnectionPool,
) -> None:
    async with pool.transaction() as conn:
        await conn.execute("INSERT INTO t VALUES (1, 'mine')")
        rows = await conn.fetch_all_and_commit("SELECT count(*) AS n FROM t WHERE id = %s", (1,))
        assert rows == [{"n": 1}]
        assert conn.transaction_state() is TransactionState.IDLE  # committed: the block ends
    assert await count_rows(pool) == 1


async def test_fetch_all_and_commit_that_fails_commits_nothing_and_leaves_the_transaction_failed(
    pool: ConnectionPool,
) -> None:
    states = []

    async def fail_then_roll_back() -> None:
        async with pool.transaction() as conn:
            await conn.execute("INSERT INTO t VALUES (1, 'rolled back')")
            try:
                await conn.fetch_all_and_commit("SELECT 1 / %s AS n", (0,))
            finally:
                states.append(conn.transaction_state())

    with pytest.raises(DatabaseError, match="division by zero"):
        await fail_then_roll_back()
    assert states == [TransactionState.FAILED]  # the COMMIT after the failure did not run
    assert await count_rows(pool) == 0
    async with pool.connection() as conn:
        assert conn.transaction_state() is TransactionState.IDLE  # back in the pool clean


async def test_cancel_mid_query_in_transaction_rolls_back_and_pool_stays_healthy(
    pool: ConnectionPool,
) -> None:
    with trio.move_on_after(0.3) as scope:
        async with pool.transaction() as conn:
            await conn.execute("INSERT INTO t VALUES (1, 'never committed')")
            await conn.execute("SELECT pg_sleep(30)")
    assert scope.cancelled_caught
    assert await running_sleeps(pool) == 0  # cancelled server-side, not left running
    assert await count_rows(pool) == 0
    stats = pool.statistics()
    assert stats.open <= stats.max_size
    async with pool.connection() as conn:
        assert await conn.fetch_one("SELECT 42 AS answer") == {"answer": 42}


async def test_mass_cancellation_leaves_every_connection_reusable(pool: ConnectionPool) -> None:
    async def sleeper() -> None:
        async with pool.connection() as conn:
            await conn.execute("SELECT pg_sleep(30)")

    with trio.move_on_after(0.5):
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(sleeper)
    assert await running_sleeps(pool) == 0
    for _ in range(pool.max_size):
        async with pool.connection() as conn:
            assert await conn.fetch_one("SELECT 1 AS one") == {"one": 1}


async def test_listen_notify(pool: ConnectionPool) -> None:
    async with pool.connection() as listener:
        await listener.execute("LISTEN triobus_test")
        assert await listener.wait_notifications(0.05) == []
        async with pool.connection() as sender:
            await sender.execute(
                "SELECT pg_notify('triobus_test', 'one'), pg_notify('triobus_test', 'two')"
            )
        got = await listener.wait_notifications(5.0)
        assert [(n.channel, n.payload) for n in got] == [
            ("triobus_test", "one"),
            ("triobus_test", "two"),
        ]
        await listener.execute("UNLISTEN *")


async def test_cancelled_notification_wait_frees_the_connection_at_once(
    pool: ConnectionPool,
) -> None:
    """Stopping a listener must not stall on its wait (the thread driver once held the
    connection for the rest of a 30 s wait, and then closed it)."""
    async with pool.connection() as listener:
        await listener.execute("LISTEN triobus_test")
        with trio.fail_after(3):  # far below the 30 s wait and the 10 s cancel grace
            async with trio.open_nursery() as nursery:
                nursery.start_soon(listener.wait_notifications, 30.0)
                await trio.testing.wait_all_tasks_blocked()  # the wait is under way
                nursery.cancel_scope.cancel()
            async with pool.connection() as sender:
                await sender.execute("SELECT pg_notify('triobus_test', 'after')")
            got = await listener.wait_notifications(2.0)
        assert [n.payload for n in got] == ["after"]
        await listener.execute("UNLISTEN *")


async def test_a_thread_call_cancelled_before_its_thread_ran_never_runs(
    triobus_dsn: str,
) -> None:
    """Under load a worker thread can start after its call was cancelled and the
    connection handed on; the statement must then not run late, out of order. The test
    holds the thread driver's running lock to stand for a thread that has not started."""
    conn = await connect(triobus_dsn, DriverKind.THREAD)
    assert isinstance(conn, ThreadConnection)
    try:
        await conn.execute("CREATE TEMP TABLE late (id int)")
        insert_scope = trio.CancelScope()

        async def insert() -> None:
            with insert_scope:
                await conn.execute("INSERT INTO late VALUES (1)")

        conn._running.acquire()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(insert)
            await trio.testing.wait_all_tasks_blocked()  # its thread waits on the lock
            insert_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()  # the cancellation waits too
            conn._running.release()
        with trio.fail_after(5):
            row = await conn.fetch_one("SELECT count(*) AS n FROM late")
        assert row == {"n": 0}
    finally:
        await conn.close()


async def test_copy_rows(pool: ConnectionPool) -> None:
    async with pool.connection() as conn:
        await conn.copy_rows("COPY t (id, note) FROM STDIN", ((i, f"n{i}") for i in range(5000)))
    assert await count_rows(pool) == 5000


async def test_unique_violation_is_translated(pool: ConnectionPool) -> None:
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO t VALUES (1, 'a')")
        with pytest.raises(UniqueViolationError) as info:
            await conn.execute("INSERT INTO t VALUES (1, 'b')")
    assert info.value.constraint == "t_pkey"


async def test_syntax_error_is_a_database_error_and_connection_survives(
    pool: ConnectionPool,
) -> None:
    async with pool.connection() as conn:
        with pytest.raises(DatabaseError) as info:
            await conn.execute("SELEC 1")
        assert info.value.sqlstate == "42601"
        assert await conn.fetch_one("SELECT 1 AS one") == {"one": 1}


# Shorter waits for a hung server, so these tests take a second, not twenty.
SHORT_GRACE = DriverOptions(rollback_timeout=0.3, cancel_grace=0.3)


async def fail_in_a_transaction_while_the_server_hangs(
    conn: DriverConnection, proxy: Proxy
) -> None:
    async with conn.transaction():
        await conn.execute("SELECT 1")
        proxy.freeze()
        raise RuntimeError("boom")


async def test_rollback_on_a_hung_server_is_bounded_and_closes_the_connection(
    proxy: Proxy, driver: DriverKind
) -> None:
    conn = await connect(proxy.dsn, driver, SHORT_GRACE)
    failed = trio.Event()
    started = trio.current_time()

    async def fail_while_the_server_hangs() -> None:
        with pytest.raises(RuntimeError, match="boom"):
            await fail_in_a_transaction_while_the_server_hangs(conn, proxy)
        failed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fail_while_the_server_hangs)
        with trio.move_on_after(3.0):
            await failed.wait()
        took = trio.current_time() - started
        proxy.thaw()  # the rollback is shielded: were it hung, this ends it, and the test fails
    assert failed.is_set() and took < 3.0
    assert not conn.is_reusable()
    await conn.close()


async def test_copy_rows_in_binary_format_with_column_types(pool: ConnectionPool) -> None:
    async with pool.connection() as conn:
        await conn.execute("CREATE TABLE b (id int, doc jsonb, at timestamptz)")
        rows = [(1, Jsonb('{"a": [1, "é"]}', dumps=str), datetime(2026, 1, 1, tzinfo=UTC))]
        await conn.copy_rows(
            "COPY b (id, doc, at) FROM STDIN (FORMAT BINARY)",
            rows,
            types=["int4", "jsonb", "timestamptz"],
        )
        assert await conn.fetch_all("SELECT id, doc, at FROM b") == [
            {"id": 1, "doc": {"a": [1, "é"]}, "at": datetime(2026, 1, 1, tzinfo=UTC)}
        ]
