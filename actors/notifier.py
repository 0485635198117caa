"""The notifier actor: the runtime's one LISTEN connection, fanned out to subscribers.

A notification is a hint to look at the database, never the data itself, so delivery is
coalescing: each subscription is a memory channel with a buffer of one, and a hint that
finds the buffer full is dropped (the subscriber has not yet looked since the last one).

Under connection loss the notifier reconnects with back-off and jitter, logging one
line per outage, and then wakes every subscriber, because notifications sent while it
was away are lost. Subscribers must still poll now and then: PostgreSQL does not promise
delivery to a session that is not connected.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from triobus.persistence.backoff import backoff_delays
from triobus.persistence.driver import DriverConnection, connect
from triobus.persistence.errors import DatabaseUnavailableError
from triobus.persistence.notifications import Channel
from triobus.persistence.pool import ConnectionPool

logger = logging.getLogger(__name__)

# An idle LISTEN connection wakes this often, only to notice a dead socket sooner.
_IDLE_WAIT = 30.0


class Notifier:
    """Owns one LISTEN connection (to the pool's database, outside the pool); fans
    (channel, payload) hints out to subscribers."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._outage = pool.outage
        # Keyed by (channel name, payload): a Channel is its name as a str.
        self._subscribers: dict[tuple[str, str], set[trio.MemorySendChannel[None]]] = {}
        self.reconnects = 0

    @contextmanager
    def subscribe(
        self, channel: Channel, payload: str
    ) -> Iterator[trio.MemoryReceiveChannel[None]]:
        """A channel that receives a `None` hint after each matching notification."""
        send, receive = trio.open_memory_channel[None](1)
        key = (channel, payload)
        self._subscribers.setdefault(key, set()).add(send)
        try:
            yield receive
        finally:
            subscribers = self._subscribers[key]
            subscribers.discard(send)
            if not subscribers:
                del self._subscribers[key]
            send.close()

    def wake(self, channel: Channel, payload: str) -> None:
        """Deliver a hint to the subscribers of (channel, payload), as a notification would."""
        self._deliver(channel, payload)

    def _deliver(self, channel: str, payload: str) -> None:
        for send in self._subscribers.get((channel, payload), ()):
            _hint(send)

    def _wake_everyone(self) -> None:
        for subscribers in self._subscribers.values():
            for send in subscribers:
                _hint(send)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """LISTEN until cancelled. The first connection's failure is raised to the starter."""
        conn = await self._listen()
        task_status.started()
        while True:
            try:
                while True:
                    for note in await conn.wait_notifications(_IDLE_WAIT):
                        self._deliver(note.channel, note.payload)
            except DatabaseUnavailableError as ex:
                self._outage.lost(ex, conn)
                self._outage.report(ex, "the notifier lost its connection")
            finally:
                with trio.CancelScope(shield=True):
                    await conn.close()
            conn = await self._reconnect()
            self.reconnects += 1
            self._outage.recovered(conn.opened_at)
            logger.info("notifier reconnected; waking every subscriber")
            self._wake_everyone()

    async def _listen(self) -> DriverConnection:
        pool = self._pool
        conn = await connect(pool.dsn, pool.driver, pool.options)
        try:
            for channel in Channel:  # constants, never input
                await conn.execute(f"LISTEN {channel}")
        except BaseException:
            with trio.CancelScope(shield=True):
                await conn.close()
            raise
        return conn

    async def _reconnect(self) -> DriverConnection:
        delays = backoff_delays()
        while True:
            await trio.sleep(next(delays))
            try:
                return await self._listen()
            except DatabaseUnavailableError as ex:
                self._outage.report(ex, "the notifier could not reconnect")


def _hint(send: trio.MemorySendChannel[None]) -> None:
    with contextlib.suppress(trio.WouldBlock):  # a hint is already waiting: coalesce
        send.send_nowait(None)
