"""The lease keeper: extends the leases its worker holds, and releases them at the end
without waiting on rows another transaction has locked."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
import trio

from tests.integration.roles import claim, send, statuses
from triobus.actors.in_flight import InFlight
from triobus.actors.lease_keeper import LeaseKeeper
from triobus.persistence.pool import ConnectionPool
from triobus.persistence.queue import ClaimedCommand


def keeper_of(
    pool: ConnectionPool, claims: list[ClaimedCommand], *, heartbeat_interval: float = 3000.0
) -> tuple[LeaseKeeper, InFlight]:
    in_flight = InFlight(concurrency=8, prefetch=0)
    in_flight.hold(claims)
    keeper = LeaseKeeper(
        domain="d",
        pool=pool,
        in_flight=in_flight,
        visibility_timeout=3600.0,
        heartbeat_interval=heartbeat_interval,
        note_error=lambda error: None,
    )
    return keeper, in_flight


async def seconds_of_lease_left(pool: ConnectionPool) -> list[float]:
    async with pool.connection() as conn:
        rows = await conn.fetch_all(
            "SELECT extract(epoch FROM visible_at - now())::float8 AS left FROM triobus.command"
        )
    return [row["left"] for row in rows]


async def test_the_heartbeat_extends_every_held_lease(
    queue_pool: ConnectionPool, eventually: Callable[..., Awaitable[object]]
) -> None:
    await send(queue_pool, 2)
    claims = await claim(queue_pool, 2, visibility_timeout=30.0)
    keeper, _ = keeper_of(queue_pool, claims, heartbeat_interval=0.05)

    async def extended() -> bool:
        return all(left > 3000 for left in await seconds_of_lease_left(queue_pool))

    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        await eventually(extended)  # from 30 s to about an hour
        nursery.cancel_scope.cancel()


async def test_release_gives_back_what_is_held_and_skips_a_row_locked_elsewhere(
    queue_pool: ConnectionPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="triobus")
    await send(queue_pool, 3)
    claims = await claim(queue_pool, 3)
    keeper, in_flight = keeper_of(queue_pool, claims)
    locked = claims[0].command.command_id
    async with queue_pool.connection() as other, other.transaction():
        await other.execute(
            "SELECT 1 FROM triobus.command WHERE command_id = %s FOR UPDATE", (locked,)
        )
        with trio.fail_after(5):  # SKIP LOCKED: it never waits for the other transaction
            await keeper.release_all()
    stored = await statuses(queue_pool)
    assert stored.pop(locked) == ("IN_PROGRESS", 1)  # left to its lease
    assert set(stored.values()) == {("PENDING", 0)}  # visible again, attempt not counted
    assert in_flight.held() == []
    assert any("released 2 unacknowledged" in r.getMessage() for r in caplog.records)
