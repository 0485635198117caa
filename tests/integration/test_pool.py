"""The connection pool, with both drivers: bounded, healthy connections, replaced when lost."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from triobus.persistence.driver import DriverKind, DriverOptions, connect
from triobus.persistence.errors import DatabaseUnavailableError
from triobus.persistence.pool import ConnectionPool, open_pool

if TYPE_CHECKING:
    from tests.conftest import Proxy

# Shorter waits for a hung server, so a test takes a second, not twenty.
SHORT_GRACE = DriverOptions(rollback_timeout=0.3, cancel_grace=0.3)


async def test_connection_loss_is_reported_and_the_pool_replaces_the_connection(
    pool: ConnectionPool, triobus_dsn: str, driver: DriverKind
) -> None:
    async with pool.connection() as victim:
        pid = victim.backend_pid
    killer = await connect(triobus_dsn, driver)
    try:
        await killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        await killer.close()
    async with pool.connection() as conn:
        assert conn.backend_pid == pid  # the idle stack hands back the same connection
        with pytest.raises(DatabaseUnavailableError):
            await conn.execute("SELECT 1")
    async with pool.connection() as conn:
        assert conn.backend_pid != pid
        assert await conn.fetch_one("SELECT 1 AS one") == {"one": 1}


async def test_health_check_discards_dead_idle_connections(
    triobus_dsn: str, driver: DriverKind
) -> None:
    async with open_pool(triobus_dsn, driver=driver, check_after=0.0) as pool:
        async with pool.connection() as conn:
            pid = conn.backend_pid
        killer = await connect(triobus_dsn, driver)
        await killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        await killer.close()
        async with pool.connection() as conn:
            assert conn.backend_pid != pid
            assert await conn.fetch_one("SELECT 1 AS one") == {"one": 1}
        assert pool.statistics().discarded == 1


async def test_pool_is_bounded(triobus_dsn: str, driver: DriverKind) -> None:
    async with open_pool(triobus_dsn, driver=driver, max_size=2) as pool:
        holding = 0
        all_in = trio.Event()
        release = trio.Event()
        peak = 0

        async def hold() -> None:
            nonlocal holding, peak
            async with pool.connection():
                holding += 1
                peak = max(peak, pool.statistics().open)
                if holding == 2:
                    all_in.set()
                await release.wait()

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(hold)
            await all_in.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert holding == 2  # the other three wait for a free slot
            release.set()
        assert holding == 5
        assert peak == 2


async def test_connect_gives_up_after_backoff(driver: DriverKind, tmp_path: object) -> None:
    missing = f"postgresql://postgres@/postgres?host={tmp_path}&connect_timeout=2"
    async with open_pool(missing, driver=driver, connect_timeout=0.3) as pool:
        with pytest.raises(DatabaseUnavailableError, match="attempts"):
            async with pool.connection():
                pass
        assert pool.statistics().open == 0


async def test_closed_pool_refuses(triobus_dsn: str, driver: DriverKind) -> None:
    pool = ConnectionPool(triobus_dsn, driver=driver)
    await pool.aclose()
    with pytest.raises(DatabaseUnavailableError, match="closed"):
        async with pool.connection():
            pass


async def test_health_check_cancelled_on_a_hung_server_does_not_leak_the_connection(
    proxy: Proxy, driver: DriverKind
) -> None:
    async with open_pool(proxy.dsn, driver=driver, check_after=0.0, options=SHORT_GRACE) as pool:
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
        proxy.freeze()
        with trio.fail_after(5), trio.move_on_after(0.2) as waited:
            async with pool.connection():
                pass
        assert waited.cancelled_caught
        assert pool.statistics().open == 0
        assert pool.statistics().discarded == 1
