"""A bounded pool of healthy connections for one DSN, and its record of outages."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from triobus.persistence.backoff import backoff_delays
from triobus.persistence.driver import DriverConnection, DriverKind, DriverOptions, connect
from triobus.persistence.errors import DatabaseError, DatabaseUnavailableError
from triobus.persistence.outage import Outage
from triobus.persistence.validation import check_enum, check_int_in_range, check_seconds

logger = logging.getLogger(__name__)

HEALTH_CHECK = "SELECT 1"


@attrs.frozen
class PoolStatistics:
    """A snapshot of a pool. `open` counts idle and in-use connections; `outages` counts
    the times the database became unreachable (see `Outage`)."""

    max_size: int
    open: int
    idle: int
    connects: int
    discarded: int
    outages: int


@attrs.frozen
class _Idle:
    conn: DriverConnection
    released: float


class ConnectionPool:
    """A bounded pool of healthy connections for one DSN.

    Invariants: at most `max_size` connections are open; a connection goes back to the
    idle stack only if it is open and IDLE, otherwise it is closed; a connection idle for
    longer than `check_after` seconds is checked with `SELECT 1` before it is handed out;
    connections older than `max_lifetime`, or opened before an ongoing outage began, are
    replaced. Connecting retries with exponential back-off and jitter until
    `connect_timeout`, then raises `DatabaseUnavailableError`.
    """

    def __init__(
        self,
        dsn: str,
        *,
        driver: DriverKind = DriverKind.NATIVE,
        max_size: int = 8,
        connect_timeout: float = 30.0,
        check_after: float = 30.0,
        max_lifetime: float = 3600.0,
        options: DriverOptions | None = None,
    ) -> None:
        self.dsn = dsn
        self.driver = check_enum("driver", DriverKind, driver)
        self.options = options or DriverOptions()
        self.max_size = check_int_in_range("max_size", max_size, limit=10_000)
        self.connect_timeout = check_seconds("connect_timeout", connect_timeout)
        self.check_after = check_seconds("check_after", check_after, allow_zero=True)
        self.max_lifetime = check_seconds("max_lifetime", max_lifetime)
        self._slots = trio.Semaphore(max_size)
        self._idle: list[_Idle] = []
        self._open = 0
        self._connects = 0
        self._discarded = 0
        self._closed = False
        self.outage = Outage()

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            max_size=self.max_size,
            open=self._open,
            idle=len(self._idle),
            connects=self._connects,
            discarded=self._discarded,
            outages=self.outage.count,
        )

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[DriverConnection]:
        """Lend a connection for the block; it is returned clean or discarded."""
        if self._closed:
            raise DatabaseUnavailableError("the connection pool is closed")
        async with self._slots:
            conn = await self._take()
            try:
                yield conn
            except DatabaseUnavailableError as ex:
                self.outage.lost(ex, conn)
                await self._discard_idle()  # opened before the loss: most likely lost too
                raise
            finally:
                await self._give_back(conn)
            self.outage.recovered(conn.opened_at)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[DriverConnection]:
        """Lend a connection inside BEGIN ... COMMIT."""
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def aclose(self) -> None:
        """Close idle connections; connections still lent are closed when returned."""
        self._closed = True
        await self._discard_idle()

    async def _discard_idle(self) -> None:
        with trio.CancelScope(shield=True):
            while self._idle:
                await self._discard(self._idle.pop().conn)

    async def _take(self) -> DriverConnection:
        now = time.monotonic()
        while self._idle:
            idle = self._idle.pop()
            try:
                usable = not self._retired(idle.conn, now) and (
                    now - idle.released <= self.check_after or await self._healthy(idle.conn)
                )
            except BaseException:  # cancelled during the health check: never lose the slot
                with trio.CancelScope(shield=True):
                    await self._discard(idle.conn)
                raise
            if usable:
                return idle.conn
            await self._discard(idle.conn)
        return await self._connect_with_backoff()

    async def _healthy(self, conn: DriverConnection) -> bool:
        try:
            with trio.fail_after(self.connect_timeout):
                await conn.execute(HEALTH_CHECK)
        except (DatabaseError, trio.TooSlowError):
            return False
        return True

    async def _connect_with_backoff(self) -> DriverConnection:
        deadline = trio.current_time() + self.connect_timeout
        delays = backoff_delays(maximum=2.0)
        attempt = 0
        while True:
            attempt += 1
            try:
                conn = await connect(self.dsn, self.driver, self.options)
            except DatabaseUnavailableError as ex:
                delay = next(delays)
                if trio.current_time() + delay > deadline:
                    raise DatabaseUnavailableError(
                        f"could not connect after {attempt} attempts: {ex}", sqlstate=ex.sqlstate
                    ) from ex
                self.outage.report(ex, "connecting")
                await trio.sleep(delay)
            else:
                self._connects += 1
                self._open += 1
                return conn

    def _retired(self, conn: DriverConnection, now: float) -> bool:
        """Too old to reuse: past `max_lifetime`, or opened before an ongoing outage."""
        return now - conn.opened_at > self.max_lifetime or self.outage.predates(conn)

    async def _give_back(self, conn: DriverConnection) -> None:
        now = time.monotonic()
        if self._closed or not conn.is_reusable() or self._retired(conn, now):
            with trio.CancelScope(shield=True):
                await self._discard(conn)
        else:
            self._idle.append(_Idle(conn, now))

    async def _discard(self, conn: DriverConnection) -> None:
        self._open -= 1
        self._discarded += 1
        try:
            await conn.close()
        except Exception:
            logger.debug("error closing a discarded connection", exc_info=True)


@asynccontextmanager
async def open_pool(
    dsn: str, *, driver: DriverKind = DriverKind.NATIVE, max_size: int = 8, **settings: Any
) -> AsyncIterator[ConnectionPool]:
    """A `ConnectionPool` closed on exit."""
    pool = ConnectionPool(dsn, driver=driver, max_size=max_size, **settings)
    try:
        yield pool
    finally:
        with trio.CancelScope(shield=True):
            await pool.aclose()
