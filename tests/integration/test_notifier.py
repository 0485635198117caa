"""The notifier: one LISTEN connection, hints fanned out to subscribers, coalesced, and
every subscriber woken after a reconnection (notifications sent meanwhile are lost)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from triobus.actors.notifier import Notifier
from triobus.persistence.driver import DriverConnection, connect
from triobus.persistence.notifications import Channel
from triobus.persistence.pool import open_pool


@pytest.fixture
async def notifier(triobus_dsn: str, nursery: trio.Nursery) -> AsyncIterator[Notifier]:
    async with open_pool(triobus_dsn, max_size=2) as pool:
        notifier = Notifier(pool)
        await nursery.start(notifier.run)
        yield notifier
        nursery.cancel_scope.cancel()


@pytest.fixture
async def sender(triobus_dsn: str) -> AsyncIterator[DriverConnection]:
    conn = await connect(triobus_dsn)
    yield conn
    await conn.close()


async def notify(conn: DriverConnection, channel: Channel, payload: str) -> None:
    await conn.execute("SELECT pg_notify(%s, %s)", (channel.value, payload))


def pending(hints: trio.MemoryReceiveChannel[None]) -> int:
    return hints.statistics().current_buffer_used


async def test_a_notification_wakes_the_subscribers_of_its_channel_and_payload(
    notifier: Notifier, sender: DriverConnection
) -> None:
    with (
        notifier.subscribe(Channel.COMMAND, "a") as a,
        notifier.subscribe(Channel.COMMAND, "a") as also_a,
        notifier.subscribe(Channel.COMMAND, "b") as b,
        notifier.subscribe(Channel.REPLY, "a") as reply_a,
        notifier.subscribe(Channel.BATCH, "last") as last,
    ):
        await notify(sender, Channel.COMMAND, "a")
        await notify(sender, Channel.BATCH, "last")  # notifications arrive in order
        with trio.fail_after(10):
            await last.receive()
        assert (pending(a), pending(also_a)) == (1, 1)
        assert (pending(b), pending(reply_a)) == (0, 0)


async def test_hints_coalesce_until_the_subscriber_looks(
    notifier: Notifier, sender: DriverConnection
) -> None:
    with (
        notifier.subscribe(Channel.COMMAND, "busy") as busy,
        notifier.subscribe(Channel.BATCH, "last") as last,
    ):
        for _ in range(3):
            await notify(sender, Channel.COMMAND, "busy")
        await notify(sender, Channel.BATCH, "last")
        with trio.fail_after(10):
            await last.receive()
        assert pending(busy) == 1  # one hint: "look at the database", not one per NOTIFY
        await busy.receive()
        await notify(sender, Channel.COMMAND, "busy")
        with trio.fail_after(10):
            await busy.receive()  # a hint after the subscriber looked arrives again


async def test_a_subscription_ends_with_its_block(notifier: Notifier) -> None:
    with notifier.subscribe(Channel.REPLY, "q") as hints:
        notifier.wake(Channel.REPLY, "q")
        assert pending(hints) == 1
        hints.receive_nowait()
    notifier.wake(Channel.REPLY, "q")  # nobody subscribed: nothing to deliver, no error
    with pytest.raises(trio.EndOfChannel):
        hints.receive_nowait()  # ended, and nothing was delivered after the block


async def test_after_losing_its_connection_it_reconnects_and_wakes_every_subscriber(
    notifier: Notifier, sender: DriverConnection
) -> None:
    with (
        notifier.subscribe(Channel.COMMAND, "d") as commands,
        notifier.subscribe(Channel.BATCH, "d:x") as batch,
    ):
        await sender.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE query LIKE 'LISTEN%%' AND pid <> pg_backend_pid()"
        )
        with trio.fail_after(15):
            await commands.receive()  # woken: what was sent while away is lost
            await batch.receive()
        assert notifier.reconnects == 1
        await notify(sender, Channel.COMMAND, "d")  # listening again on the new connection
        with trio.fail_after(10):
            await commands.receive()
