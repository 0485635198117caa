"""Outage: one log line when the database becomes unreachable and one when it is back,
however many tasks meet it, with both drivers."""

from __future__ import annotations

import time
from collections.abc import Callable

from triobus.persistence.driver import DriverKind, connect
from triobus.persistence.errors import DatabaseUnavailableError
from triobus.persistence.pool import ConnectionPool


async def test_a_loss_met_late_on_a_connection_from_before_the_recovery_is_not_a_new_outage(
    pool: ConnectionPool, triobus_dsn: str, driver: DriverKind
) -> None:
    """Another task (the notifier, say) saw the outage and its end first: a worker that
    only now fails on a connection from before the recovery must not log a second one."""

    async def lost_in_pool(first: Callable[[], None]) -> DatabaseUnavailableError:
        """The error met on a pooled connection whose backend is terminated after `first`."""
        try:
            async with pool.connection() as conn:
                first()
                killer = await connect(triobus_dsn, driver)
                try:
                    await killer.execute("SELECT pg_terminate_backend(%s)", (conn.backend_pid,))
                finally:
                    await killer.close()
                await conn.execute("SELECT 1")
        except DatabaseUnavailableError as ex:
            return ex
        raise AssertionError("the connection survived its backend")

    def outage_seen_and_over_elsewhere() -> None:
        pool.outage.report(DatabaseUnavailableError("seen by another task"), "elsewhere")
        pool.outage.recovered(time.monotonic())  # proven by a connection opened now

    late = await lost_in_pool(outage_seen_and_over_elsewhere)
    pool.outage.report(late, "writing results")
    assert (late.stale, pool.outage.count, pool.outage.since) == (True, 1, None)

    fresh = await lost_in_pool(lambda: None)  # a connection opened after the recovery
    pool.outage.report(fresh, "writing results")
    assert (fresh.stale, pool.outage.count) == (False, 2)
