"""PostgreSQL under Trio: the one module that knows how psycopg is driven.

Two drivers implement the same narrow `Connection` surface:

* `DriverKind.NATIVE` (default): psycopg's `AsyncConnection` with its waits driven by
  `trio.lowlevel.wait_readable` / `wait_writable`. Fastest, and cancellation is real: a
  query interrupted by a Trio cancellation is cancelled server-side and drained, so the
  connection comes back IDLE. It overrides psycopg internals (`wait`, `_connect_gen`,
  `_cancel_gen`, `lock`), hence the pin to psycopg 3.3.x.
* `DriverKind.THREAD`: psycopg's public sync API in Trio worker threads. The fallback for
  a psycopg release that breaks the native path. A cancelled call is abandoned, the query
  is cancelled server-side and the call waits for the connection's lock to come free.

All connections run in autocommit mode; `Connection.transaction()` issues BEGIN/COMMIT,
and rolls back (shielded from cancellation) when its block raises or is cancelled.
psycopg errors are translated into the triobus hierarchy here and nowhere else.

`ConnectionPool` is bounded and hands out only healthy connections: a connection returns
to the pool only when it is open and IDLE; anything else is closed and replaced.
"""

from __future__ import annotations

import abc
import enum
import logging
import math
import random
import select
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any, Self, TypeVar

import attrs
import psycopg
import trio
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg._conninfo_attempts import conninfo_attempts
from psycopg.abc import PQGen, PQGenConn
from psycopg.conninfo import conninfo_to_dict, make_conninfo, timeout_from_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg.waiting import Ready, Wait

from triobus.persistence.errors import (
    DatabaseError,
    DatabaseUnavailableError,
    UniqueViolationError,
)

logger = logging.getLogger(__name__)

RV = TypeVar("RV")
Row = dict[str, Any]
ParamSet = Sequence[Any] | Mapping[str, Any]
Params = ParamSet | None

_ACTIVE = pq.TransactionStatus.ACTIVE
_IDLE = pq.TransactionStatus.IDLE
# How long a cancelled query may take to stop before its connection is closed instead.
_CANCEL_GRACE = 5.0
# The longest a thread-driver notification wait blocks its connection (see wait_notifications).
_THREAD_WAIT_SLICE = 0.2
_ROLLBACK_TIMEOUT = 10.0


class DriverKind(enum.StrEnum):
    """How psycopg is driven from Trio."""

    NATIVE = "native"
    THREAD = "thread"


@attrs.frozen
class Notification:
    """One NOTIFY received on a LISTENing connection."""

    channel: str
    payload: str
    pid: int


@contextmanager
def _translated_errors() -> Iterator[None]:
    """Re-raise psycopg errors as triobus errors (the only place that maps them)."""
    try:
        yield
    except pg_errors.UniqueViolation as ex:
        raise UniqueViolationError(str(ex), constraint=ex.diag.constraint_name) from ex
    except (psycopg.OperationalError, psycopg.InterfaceError) as ex:
        if isinstance(ex, pg_errors.QueryCanceled | pg_errors.LockNotAvailable):
            raise DatabaseError(str(ex), sqlstate=ex.sqlstate) from ex
        raise DatabaseUnavailableError(str(ex), sqlstate=ex.sqlstate) from ex
    except psycopg.Error as ex:
        raise DatabaseError(str(ex), sqlstate=ex.sqlstate) from ex
    except UnicodeError as ex:  # a str psycopg cannot encode, e.g. with a lone surrogate
        raise DatabaseError(f"a value cannot be encoded for PostgreSQL: {ex}") from ex


class Connection(abc.ABC):
    """The narrow surface every driver offers. Rows are dicts keyed by column name."""

    backend_pid: int
    opened_at: float  # time.monotonic() when connected

    @abc.abstractmethod
    async def execute(self, sql: str, params: Params = None) -> int:
        """Run one statement; return the number of rows it affected."""

    @abc.abstractmethod
    async def fetch_all(self, sql: str, params: Params = None) -> list[Row]:
        """Run one query; return all its rows."""

    async def fetch_one(self, sql: str, params: Params = None) -> Row | None:
        """The first row of the query, or None."""
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    @abc.abstractmethod
    async def execute_many(self, sql: str, params_seq: Iterable[ParamSet]) -> None:
        """Run one statement once per parameter set."""

    @abc.abstractmethod
    async def copy_rows(
        self, sql: str, rows: Iterable[Sequence[Any]], *, types: Sequence[str] | None = None
    ) -> None:
        """Stream rows through `COPY ... FROM STDIN` given in `sql`; with the column
        `types` the `sql` says `(FORMAT BINARY)`, which costs both sides less."""

    @abc.abstractmethod
    async def wait_notifications(self, timeout: float) -> list[Notification]:
        """Wait up to `timeout` seconds for notifications; return all that arrived."""

    @abc.abstractmethod
    def is_reusable(self) -> bool:
        """True when the connection is open with no transaction or query in flight."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection; closing twice is harmless."""

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Self]:
        """BEGIN ... COMMIT; ROLLBACK (shielded) when the block raises or is cancelled."""
        await self.execute("BEGIN")
        try:
            yield self
        except BaseException:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(_ROLLBACK_TIMEOUT) as rollback:
                    await self._rollback_quietly()
                if rollback.cancelled_caught:
                    logger.warning(
                        "ROLLBACK took over %.0f s: closing the connection", _ROLLBACK_TIMEOUT
                    )
                    await self.close()
            raise
        await self.execute("COMMIT")

    async def _rollback_quietly(self) -> None:
        try:
            await self.execute("ROLLBACK")
        except DatabaseError:
            logger.debug("rollback failed; the connection will be discarded", exc_info=True)


# ---------------------------------------------------------------------------------------
# Native driver: psycopg's AsyncConnection with Trio waits.


def _ready_now(fileno: int, wait: int) -> int:
    """Zero-timeout readiness poll (cheaper than a trip through the scheduler)."""
    rd, wr, _ = select.select(
        [fileno] if wait & Wait.R else [], [fileno] if wait & Wait.W else [], [], 0
    )
    return (Ready.R if rd else 0) | (Ready.W if wr else 0)


async def _wait_socket(fileno: int, wait: int) -> int:
    """Block until the socket is ready for what libpq asked; return the readiness."""
    if wait == Wait.R:
        await trio.lowlevel.wait_readable(fileno)
        return int(Ready.R)
    if wait == Wait.W:
        await trio.lowlevel.wait_writable(fileno)
        return int(Ready.W)
    # RW: libpq is flushing a large send buffer and wants to read meanwhile.
    ready = 0

    async def wait_for(waiter: Callable[[int], Any], flag: int) -> None:
        nonlocal ready
        await waiter(fileno)
        ready |= flag
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for, trio.lowlevel.wait_readable, Ready.R)
        nursery.start_soon(wait_for, trio.lowlevel.wait_writable, Ready.W)
    return ready


async def _drive(gen: PQGen[RV], fileno: int) -> RV:
    """Run a psycopg generator to completion, waiting on its socket with Trio."""
    try:
        wait = next(gen)
        while True:
            ready = _ready_now(fileno, wait) if wait & Wait.W else 0
            if not ready:
                ready = await _wait_socket(fileno, wait)
            wait = gen.send(ready)
    except StopIteration as ex:
        result: RV = ex.value
        return result
    except OSError as ex:
        raise psycopg.OperationalError("connection socket closed") from ex


async def _drive_conn(gen: PQGenConn[RV]) -> RV:
    """Like `_drive`, for generators that name their socket at each step (connect, cancel)."""
    try:
        fileno, wait = next(gen)
        while True:
            ready = await _wait_socket(fileno, wait)
            fileno, wait = gen.send(ready)
    except StopIteration as ex:
        result: RV = ex.value
        return result
    except OSError as ex:
        raise psycopg.OperationalError("connection socket closed") from ex


class _TrioLock:
    """A lock that, like asyncio.Lock, does not checkpoint when it is free.

    psycopg awaits its lock during clean-up that runs after a cancellation (rollback,
    cancel-and-drain); a checkpoint there would be cancelled again and leave the
    connection in a failed transaction.
    """

    def __init__(self) -> None:
        self._lock = trio.Lock()

    async def __aenter__(self) -> None:
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()


class _TrioAsyncConnection(psycopg.AsyncConnection[DictRow]):
    """psycopg's AsyncConnection with every wait driven by Trio instead of asyncio."""

    def __init__(self, pgconn: Any, row_factory: Any = dict_row) -> None:
        super().__init__(pgconn, row_factory)
        self.lock = _TrioLock()  # type: ignore[assignment]

    @classmethod
    async def connect_trio(cls, conninfo: str) -> _TrioAsyncConnection:
        params = conninfo_to_dict(conninfo)
        timeout = timeout_from_conninfo(params)
        attempts = await trio.to_thread.run_sync(conninfo_attempts, params)  # may resolve DNS
        last_error: Exception | None = None
        for attempt in attempts:
            try:
                with trio.fail_after(timeout):
                    conn = await _drive_conn(cls._connect_gen(make_conninfo("", **attempt)))
            except trio.TooSlowError:
                last_error = pg_errors.ConnectionTimeout("connection timeout expired")
            except psycopg.Error as ex:
                last_error = ex
            else:
                conn._autocommit = True
                conn.row_factory = dict_row
                return conn
        assert last_error is not None
        raise last_error

    async def wait(self, gen: PQGen[RV], interval: float = 0.0, timeout: float | None = None) -> RV:
        try:
            if timeout is None:
                return await _drive(gen, self.pgconn.socket)
            with trio.move_on_after(timeout):
                return await _drive(gen, self.pgconn.socket)
            raise pg_errors._WaitTimeout("wait timeout expired")
        except BaseException:
            if pq.TransactionStatus(self.pgconn.transaction_status) == _ACTIVE:
                with trio.CancelScope(shield=True):
                    await self._cancel_and_drain(gen)
            raise

    async def _cancel_and_drain(self, gen: PQGen[Any]) -> None:
        """Cancel the query in flight server-side and consume its end, or close."""
        with trio.move_on_after(_CANCEL_GRACE) as scope:
            try:
                await self.cancel_safe(timeout=_CANCEL_GRACE)
                await _drive(gen, self.pgconn.socket)
            except pg_errors.QueryCanceled:
                pass
            except Exception:
                logger.warning("query cancellation failed: closing connection", exc_info=True)
                self.pgconn.finish()
        if scope.cancelled_caught:
            logger.warning("query not stopped %.0f s after cancellation: closing", _CANCEL_GRACE)
            self.pgconn.finish()

    async def cancel_safe(self, *, timeout: float = 30.0) -> None:
        if not self._should_cancel():
            return
        with trio.move_on_after(timeout) as scope:
            await _drive_conn(self._cancel_gen())
        if scope.cancelled_caught:
            raise pg_errors.CancellationTimeout("cancellation timeout expired")


class NativeConnection(Connection):
    """`Connection` over psycopg's AsyncConnection driven natively by Trio."""

    def __init__(self, conn: _TrioAsyncConnection) -> None:
        self._conn = conn
        self.backend_pid = conn.info.backend_pid
        self.opened_at = time.monotonic()

    @classmethod
    async def connect(cls, dsn: str) -> NativeConnection:
        with _translated_errors():
            return cls(await _TrioAsyncConnection.connect_trio(dsn))

    async def execute(self, sql: str, params: Params = None) -> int:
        with _translated_errors():
            cur = self._conn.cursor()
            await cur.execute(sql, params)
            return cur.rowcount

    async def fetch_all(self, sql: str, params: Params = None) -> list[Row]:
        with _translated_errors():
            cur = self._conn.cursor()
            await cur.execute(sql, params)
            return await cur.fetchall()

    async def execute_many(self, sql: str, params_seq: Iterable[ParamSet]) -> None:
        with _translated_errors():
            await self._conn.cursor().executemany(sql, params_seq)

    async def copy_rows(
        self, sql: str, rows: Iterable[Sequence[Any]], *, types: Sequence[str] | None = None
    ) -> None:
        with _translated_errors():
            async with self._conn.cursor().copy(sql) as copy:
                if types is not None:
                    copy.set_types(list(types))
                for row in rows:
                    await copy.write_row(row)

    async def wait_notifications(self, timeout: float) -> list[Notification]:
        with _translated_errors():
            found = [n async for n in self._conn.notifies(timeout=timeout, stop_after=1)]
            if found:
                found += [n async for n in self._conn.notifies(timeout=0)]
            return [Notification(n.channel, n.payload, n.pid) for n in found]

    def is_reusable(self) -> bool:
        return not self._conn.closed and self._conn.info.transaction_status == _IDLE

    async def close(self) -> None:
        await self._conn.close()


# ---------------------------------------------------------------------------------------
# Thread driver: psycopg's public sync API in Trio worker threads.


class _AbandonedCallError(Exception):
    """A call cancelled before its thread started: it is not run."""


class ThreadConnection(Connection):
    """`Connection` over sync psycopg, each call in a Trio worker thread.

    On cancellation the thread is abandoned, the query is cancelled server-side and the
    caller waits (shielded, bounded) until the abandoned call has released the connection.
    An abandoned call whose thread had not started yet never runs: it would otherwise run
    later, out of order, on a connection already given to someone else.
    """

    def __init__(self, conn: psycopg.Connection[DictRow]) -> None:
        self._conn = conn
        self._running = threading.Lock()  # held by the thread running a call
        self.backend_pid = conn.info.backend_pid
        self.opened_at = time.monotonic()

    @classmethod
    async def connect(cls, dsn: str) -> ThreadConnection:
        def connect() -> psycopg.Connection[DictRow]:
            with _translated_errors():
                return psycopg.connect(dsn, autocommit=True, row_factory=dict_row)

        return cls(await trio.to_thread.run_sync(connect, abandon_on_cancel=True))

    async def _call(self, fn: Callable[[], RV]) -> RV:
        abandoned = threading.Event()

        def translated() -> RV:
            with self._running, _translated_errors():
                if abandoned.is_set():
                    raise _AbandonedCallError  # nobody waits for it any more
                return fn()

        try:
            return await trio.to_thread.run_sync(translated, abandon_on_cancel=True)
        except trio.Cancelled:
            abandoned.set()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._stop_abandoned_call)
            raise

    def _stop_abandoned_call(self) -> None:
        conn = self._conn
        if conn.info.transaction_status == _ACTIVE:
            try:
                conn.cancel_safe(timeout=_CANCEL_GRACE)
            except psycopg.Error:
                logger.warning("query cancellation failed", exc_info=True)
        if self._running.acquire(timeout=_CANCEL_GRACE * 2):
            self._running.release()
        else:
            logger.warning("abandoned query still running: closing its connection")
            conn.pgconn.finish()

    async def execute(self, sql: str, params: Params = None) -> int:
        def run() -> int:
            return self._conn.execute(sql, params).rowcount

        return await self._call(run)

    async def fetch_all(self, sql: str, params: Params = None) -> list[Row]:
        def run() -> list[Row]:
            return self._conn.execute(sql, params).fetchall()

        return await self._call(run)

    async def execute_many(self, sql: str, params_seq: Iterable[ParamSet]) -> None:
        def run() -> None:
            self._conn.cursor().executemany(sql, params_seq)

        await self._call(run)

    async def copy_rows(
        self, sql: str, rows: Iterable[Sequence[Any]], *, types: Sequence[str] | None = None
    ) -> None:
        def run() -> None:
            with self._conn.cursor().copy(sql) as copy:
                if types is not None:
                    copy.set_types(list(types))
                for row in rows:
                    copy.write_row(row)

        await self._call(run)

    async def wait_notifications(self, timeout: float) -> list[Notification]:
        """Waits in slices of at most `_THREAD_WAIT_SLICE`: a thread blocked in psycopg
        holds the connection until its wait ends, so cancelling a long wait would stall."""

        def run(wait: float) -> list[Notification]:
            found = list(self._conn.notifies(timeout=wait, stop_after=1))
            if found:
                found += list(self._conn.notifies(timeout=0))
            return [Notification(n.channel, n.payload, n.pid) for n in found]

        deadline = trio.current_time() + timeout
        while True:
            wait = min(_THREAD_WAIT_SLICE, max(0.0, deadline - trio.current_time()))
            found = await self._call(partial(run, wait))
            if found or trio.current_time() >= deadline:
                return found

    def is_reusable(self) -> bool:
        return not self._conn.closed and self._conn.info.transaction_status == _IDLE

    async def close(self) -> None:
        self._conn.close()


async def connect(dsn: str, driver: DriverKind = DriverKind.NATIVE) -> Connection:
    """Open one autocommit connection with the chosen driver."""
    if driver is DriverKind.NATIVE:
        return await NativeConnection.connect(dsn)
    return await ThreadConnection.connect(dsn)


# ---------------------------------------------------------------------------------------
# Pool.


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
    conn: Connection
    released: float


class Outage:
    """Whether the database is reachable, shared by everything that uses one pool, so an
    outage is logged once when it starts and once when it ends, however many tasks meet it.

    Only a connection opened after an outage began proves it over: a statement that
    still succeeds on an older one (the server is shutting down but has not reached
    that backend yet) does not; and a loss met late on a connection from before the
    last recovery (`DatabaseUnavailableError.stale`) belongs to the outage already logged.
    Times are `time.monotonic()`, like `Connection.opened_at`.
    """

    def __init__(self) -> None:
        self.since: float | None = None  # when the current outage began
        self.ended_at = -math.inf  # when the last outage ended
        self.count = 0

    def report(self, error: DatabaseError, doing: str) -> None:
        """Log `error`, met while `doing`: an unreachable database once per outage,
        any other error every time."""
        if not isinstance(error, DatabaseUnavailableError):
            logger.warning("%s: %s", doing, error)
        elif self.since is None and not error.stale:
            self.since = time.monotonic()
            self.count += 1
            logger.warning(
                "database unavailable (%s: %s); retrying with back-off and jitter", doing, error
            )
        else:
            logger.debug("%s: %s", doing, error)

    def lost(self, error: DatabaseUnavailableError, conn: Connection) -> None:
        """`error` was met on `conn`: mark it stale if `conn` predates the last recovery."""
        error.stale = conn.opened_at < self.ended_at

    def predates(self, conn: Connection) -> bool:
        """Whether `conn` was opened before the current outage began (likely lost too)."""
        return self.since is not None and conn.opened_at < self.since

    def recovered(self, connected_at: float) -> None:
        """A statement succeeded on a connection opened at `connected_at`."""
        if self.since is not None and connected_at >= self.since:
            self.ended_at = time.monotonic()
            logger.warning("database reachable again after %.1f s", self.ended_at - self.since)
            self.since = None


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
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        self.dsn = dsn
        self.driver = DriverKind(driver)
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.check_after = check_after
        self.max_lifetime = max_lifetime
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
    async def connection(self) -> AsyncIterator[Connection]:
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
    async def transaction(self) -> AsyncIterator[Connection]:
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

    async def _take(self) -> Connection:
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

    async def _healthy(self, conn: Connection) -> bool:
        try:
            with trio.fail_after(self.connect_timeout):
                await conn.execute("SELECT 1")
        except (DatabaseError, trio.TooSlowError):
            return False
        return True

    async def _connect_with_backoff(self) -> Connection:
        deadline = trio.current_time() + self.connect_timeout
        delay = 0.05
        attempt = 0
        while True:
            attempt += 1
            try:
                conn = await connect(self.dsn, self.driver)
            except DatabaseUnavailableError as ex:
                if trio.current_time() + delay > deadline:
                    raise DatabaseUnavailableError(
                        f"could not connect after {attempt} attempts: {ex}", sqlstate=ex.sqlstate
                    ) from ex
                self.outage.report(ex, "connecting")
                await trio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 2.0)
            else:
                self._connects += 1
                self._open += 1
                return conn

    def _retired(self, conn: Connection, now: float) -> bool:
        """Too old to reuse: past `max_lifetime`, or opened before an ongoing outage."""
        return now - conn.opened_at > self.max_lifetime or self.outage.predates(conn)

    async def _give_back(self, conn: Connection) -> None:
        now = time.monotonic()
        if self._closed or not conn.is_reusable() or self._retired(conn, now):
            with trio.CancelScope(shield=True):
                await self._discard(conn)
        else:
            self._idle.append(_Idle(conn, now))

    async def _discard(self, conn: Connection) -> None:
        self._open -= 1
        self._discarded += 1
        try:
            await conn.close()
        except Exception:
            logger.debug("error closing a discarded connection", exc_info=True)


@asynccontextmanager
async def open_pool(
    dsn: str, *, driver: DriverKind = DriverKind.NATIVE, max_size: int = 8, **options: Any
) -> AsyncIterator[ConnectionPool]:
    """A `ConnectionPool` closed on exit."""
    pool = ConnectionPool(dsn, driver=driver, max_size=max_size, **options)
    try:
        yield pool
    finally:
        with trio.CancelScope(shield=True):
            await pool.aclose()
