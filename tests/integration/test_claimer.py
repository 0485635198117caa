"""The claimer: claims within the room its worker leaves, wakes on NOTIFY, and stops."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import pytest
import trio

from tests.integration.roles import send, statuses
from triobus.actors.claimer import Claimer
from triobus.actors.in_flight import InFlight
from triobus.actors.notifier import Notifier
from triobus.persistence.pool import ConnectionPool
from triobus.persistence.queue import ClaimedCommand


@attrs.define
class Claiming:
    claimer: Claimer
    in_flight: InFlight
    work: trio.MemoryReceiveChannel[ClaimedCommand]


@pytest.fixture
async def claiming(queue_pool: ConnectionPool, nursery: trio.Nursery) -> AsyncIterator[Claiming]:
    """A claimer for 2 handlers and 1 prefetched command, polling only once an hour."""
    notifier = Notifier(queue_pool)
    await nursery.start(notifier.run)
    in_flight = InFlight(concurrency=2, prefetch=1)
    claimer = Claimer(
        domain="d",
        pool=queue_pool,
        notifier=notifier,
        in_flight=in_flight,
        visibility_timeout=30.0,
        default_max_attempts=3,
        poll_interval=3600.0,
        claim_batch=1,
        note_error=lambda error: None,
    )
    work_send, work_receive = trio.open_memory_channel[ClaimedCommand](100)
    await nursery.start(claimer.run, work_send)
    yield Claiming(claimer, in_flight, work_receive)
    nursery.cancel_scope.cancel()


async def in_progress(pool: ConnectionPool) -> int:
    return sum(status == "IN_PROGRESS" for status, _ in (await statuses(pool)).values())


async def test_it_claims_only_the_room_its_handlers_leave_and_wakes_on_notify(
    claiming: Claiming, queue_pool: ConnectionPool, eventually: Callable[..., Awaitable[object]]
) -> None:
    await send(queue_pool, 10)  # NOTIFY: the claimer wakes although it polls hourly
    await eventually(lambda: claimed(claiming, 3))  # 2 handlers + 1 prefetched
    assert await in_progress(queue_pool) == 3
    assert claiming.work.statistics().current_buffer_used == 3
    claiming.in_flight.started()  # a handler takes one and finishes it: one more fits
    claiming.in_flight.finished()
    await eventually(lambda: claimed(claiming, 4))
    assert await in_progress(queue_pool) == 4


async def claimed(claiming: Claiming, count: int) -> bool:
    return claiming.claimer.claimed == count


async def test_stopping_ends_the_work_channel(
    claiming: Claiming, queue_pool: ConnectionPool, eventually: Callable[..., Awaitable[object]]
) -> None:
    await send(queue_pool, 1)
    await eventually(lambda: claimed(claiming, 1))
    claiming.claimer.stop()
    with trio.fail_after(10):
        handed = [claim async for claim in claiming.work]  # ends: the claimer closed it
    assert len(handed) == 1
