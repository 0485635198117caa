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

Both implement `DriverConnection`: the statements' `Connection` seam plus what the pool
and the notifier need. All connections run in autocommit mode; `transaction()` issues
BEGIN/COMMIT, and rolls back (shielded from cancellation, bounded by
`DriverOptions.rollback_timeout`) when its block raises or is cancelled. psycopg errors
become triobus errors through `connection.translated_errors`.
"""

from __future__ import annotations

import abc
import enum
import logging
import select
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, ClassVar, Self, TypeVar

import attrs
import psycopg
import trio
from psycopg import _queries, pq
from psycopg import errors as pg_errors
from psycopg._conninfo_attempts import conninfo_attempts
from psycopg.abc import PQGen, PQGenConn
from psycopg.conninfo import conninfo_to_dict, make_conninfo, timeout_from_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg.waiting import Ready, Wait

from triobus.persistence.connection import (
    AsyncPsycopgConnection,
    Connection,
    Params,
    ParamSet,
    Row,
    TransactionState,
    copy_rows_sync,
    execute_many_sync,
    execute_sync,
    fetch_all_sync,
    transaction_state_of,
    translated_errors,
)
from triobus.persistence.errors import (
    DatabaseError,
)
from triobus.persistence.validation import check_seconds, checked_by

logger = logging.getLogger(__name__)

# psycopg caches how it converts a query only up to 4,096 characters; the claim and the
# acks are longer, and converting them afresh costs about 60 us of CPU each time.
_queries.MAX_CACHED_STATEMENT_LENGTH = max(_queries.MAX_CACHED_STATEMENT_LENGTH, 16_384)

RV = TypeVar("RV")

_ACTIVE = pq.TransactionStatus.ACTIVE


class DriverKind(enum.StrEnum):
    """How psycopg is driven from Trio."""

    NATIVE = "native"
    THREAD = "thread"


@attrs.frozen(kw_only=True)
class DriverOptions:
    """How long a connection waits for a server that does not answer.

    `cancel_grace`: for a cancelled query to stop before its connection is closed instead;
    `rollback_timeout`: for the ROLLBACK of a failed transaction block, likewise;
    `thread_wait_slice`: the longest a thread-driver notification wait blocks its
    connection (a thread blocked in psycopg holds it until its wait ends).
    """

    validation_context: ClassVar[str] = "DriverOptions"

    cancel_grace: float = attrs.field(default=5.0, validator=checked_by(check_seconds))
    rollback_timeout: float = attrs.field(default=10.0, validator=checked_by(check_seconds))
    thread_wait_slice: float = attrs.field(default=0.2, validator=checked_by(check_seconds))


@attrs.frozen
class Notification:
    """One NOTIFY received on a LISTENing connection."""

    channel: str
    payload: str
    pid: int


class DriverConnection(Connection):
    """A `Connection` driven from Trio, with what the pool and the notifier need besides."""

    backend_pid: int
    opened_at: float  # time.monotonic() when connected
    options: DriverOptions

    @abc.abstractmethod
    async def wait_notifications(self, timeout: float) -> list[Notification]:
        """Wait up to `timeout` seconds for notifications; return all that arrived."""

    @abc.abstractmethod
    async def fetch_all_and_commit(self, sql: str, params: Params) -> list[Row]:
        """In the open transaction: `sql`, then COMMIT, sent together in one round trip
        (pipeline mode). If `sql` fails, COMMIT does not run and the transaction stays
        open, failed, for the caller to roll back."""

    @abc.abstractmethod
    def transaction_state(self) -> TransactionState:
        """Where the connection stands: idle, in a (failed) transaction, busy or closed."""

    def is_reusable(self) -> bool:
        """True when the connection is open with no transaction or query in flight."""
        return self.transaction_state() is TransactionState.IDLE

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection; closing twice is harmless."""

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Self]:
        """BEGIN ... COMMIT; ROLLBACK (shielded, bounded by `options.rollback_timeout`, else
        the connection is closed) when the block raises or is cancelled."""
        await self.execute("BEGIN")
        try:
            yield self
            if self.transaction_state() is TransactionState.IDLE:
                return  # the block has committed (`fetch_all_and_commit`) or rolled back
        except BaseException:
            timeout = self.options.rollback_timeout
            with trio.CancelScope(shield=True):
                with trio.move_on_after(timeout) as rollback:
                    await self._rollback_quietly()
                if rollback.cancelled_caught:
                    logger.warning("ROLLBACK took over %.1f s: closing the connection", timeout)
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

    cancel_grace: float  # how long a cancelled query may take to stop (DriverOptions)

    def __init__(self, pgconn: Any, row_factory: Any = dict_row) -> None:
        super().__init__(pgconn, row_factory)
        self.lock = _TrioLock()  # type: ignore[assignment]

    @classmethod
    async def connect_trio(cls, conninfo: str, *, cancel_grace: float) -> _TrioAsyncConnection:
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
                conn.cancel_grace = cancel_grace
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
        with trio.move_on_after(self.cancel_grace) as scope:
            try:
                await self.cancel_safe(timeout=self.cancel_grace)
                await _drive(gen, self.pgconn.socket)
            except pg_errors.QueryCanceled:
                pass
            except Exception:
                logger.warning("query cancellation failed: closing connection", exc_info=True)
                self.pgconn.finish()
        if scope.cancelled_caught:
            logger.warning(
                "query not stopped %.1f s after cancellation: closing", self.cancel_grace
            )
            self.pgconn.finish()

    async def cancel_safe(self, *, timeout: float = 30.0) -> None:
        if not self._should_cancel():
            return
        with trio.move_on_after(timeout) as scope:
            await _drive_conn(self._cancel_gen())
        if scope.cancelled_caught:
            raise pg_errors.CancellationTimeout("cancellation timeout expired")


class NativeConnection(AsyncPsycopgConnection, DriverConnection):
    """`DriverConnection` over psycopg's AsyncConnection driven natively by Trio."""

    def __init__(self, conn: _TrioAsyncConnection, options: DriverOptions) -> None:
        self._conn = conn
        self.options = options
        self.backend_pid = conn.info.backend_pid
        self.opened_at = time.monotonic()

    @classmethod
    async def connect(cls, dsn: str, options: DriverOptions) -> NativeConnection:
        with translated_errors():
            conn = await _TrioAsyncConnection.connect_trio(dsn, cancel_grace=options.cancel_grace)
            return cls(conn, options)

    async def wait_notifications(self, timeout: float) -> list[Notification]:
        with translated_errors():
            found = [n async for n in self._conn.notifies(timeout=timeout, stop_after=1)]
            if found:
                found += [n async for n in self._conn.notifies(timeout=0)]
            return [Notification(n.channel, n.payload, n.pid) for n in found]

    async def fetch_all_and_commit(self, sql: str, params: Params) -> list[Row]:
        conn = self._conn
        with translated_errors():
            async with conn.pipeline():
                cursor = await conn.cursor(row_factory=dict_row).execute(sql, params)
                await conn.execute("COMMIT")
            return await cursor.fetchall()

    def transaction_state(self) -> TransactionState:
        return transaction_state_of(self._conn)

    async def close(self) -> None:
        await self._conn.close()


# ---------------------------------------------------------------------------------------
# Thread driver: psycopg's public sync API in Trio worker threads.


class _AbandonedCallError(Exception):
    """A call cancelled before its thread started: it is not run."""


class ThreadConnection(DriverConnection):
    """`DriverConnection` over sync psycopg, each call in a Trio worker thread.

    On cancellation the thread is abandoned, the query is cancelled server-side and the
    caller waits (shielded, bounded) until the abandoned call has released the connection.
    An abandoned call whose thread had not started yet never runs: it would otherwise run
    later, out of order, on a connection already given to someone else.
    """

    def __init__(self, conn: psycopg.Connection[DictRow], options: DriverOptions) -> None:
        self._conn = conn
        self._running = threading.Lock()  # held by the thread running a call
        self.options = options
        self.backend_pid = conn.info.backend_pid
        self.opened_at = time.monotonic()

    @classmethod
    async def connect(cls, dsn: str, options: DriverOptions) -> ThreadConnection:
        def connect() -> psycopg.Connection[DictRow]:
            with translated_errors():
                return psycopg.connect(dsn, autocommit=True, row_factory=dict_row)

        return cls(await trio.to_thread.run_sync(connect, abandon_on_cancel=True), options)

    async def _call(self, fn: Callable[[], RV]) -> RV:
        abandoned = threading.Event()

        def translated() -> RV:
            with self._running, translated_errors():
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
        grace = self.options.cancel_grace
        if conn.info.transaction_status == _ACTIVE:
            try:
                conn.cancel_safe(timeout=grace)
            except psycopg.Error:
                logger.warning("query cancellation failed", exc_info=True)
        if self._running.acquire(timeout=grace * 2):
            self._running.release()
        else:
            logger.warning("abandoned query still running: closing its connection")
            conn.pgconn.finish()

    async def execute(self, sql: str, params: Params = None) -> int:
        return await self._call(partial(execute_sync, self._conn, sql, params))

    async def fetch_all(self, sql: str, params: Params = None) -> list[Row]:
        return await self._call(partial(fetch_all_sync, self._conn, sql, params))

    async def execute_many(self, sql: str, params_seq: Iterable[ParamSet]) -> None:
        await self._call(partial(execute_many_sync, self._conn, sql, params_seq))

    async def copy_rows(
        self, sql: str, rows: Iterable[Sequence[Any]], *, types: Sequence[str] | None = None
    ) -> None:
        await self._call(partial(copy_rows_sync, self._conn, sql, rows, types))

    async def fetch_all_and_commit(self, sql: str, params: Params) -> list[Row]:
        def run() -> list[Row]:
            conn = self._conn
            with conn.pipeline():
                cursor = conn.cursor(row_factory=dict_row).execute(sql, params)
                conn.execute("COMMIT")
            return cursor.fetchall()

        return await self._call(run)

    async def wait_notifications(self, timeout: float) -> list[Notification]:
        """Waits in slices of at most `options.thread_wait_slice`: a thread blocked in
        psycopg holds the connection until its wait ends, so cancelling a long wait would
        stall."""

        def run(wait: float) -> list[Notification]:
            found = list(self._conn.notifies(timeout=wait, stop_after=1))
            if found:
                found += list(self._conn.notifies(timeout=0))
            return [Notification(n.channel, n.payload, n.pid) for n in found]

        deadline = trio.current_time() + timeout
        while True:
            remaining = max(0.0, deadline - trio.current_time())
            wait = min(self.options.thread_wait_slice, remaining)
            found = await self._call(partial(run, wait))
            if found or trio.current_time() >= deadline:
                return found

    def transaction_state(self) -> TransactionState:
        return transaction_state_of(self._conn)

    async def close(self) -> None:
        self._conn.close()


async def connect(
    dsn: str, driver: DriverKind = DriverKind.NATIVE, options: DriverOptions | None = None
) -> DriverConnection:
    """Open one autocommit connection with the chosen driver."""
    options = options or DriverOptions()
    if driver is DriverKind.NATIVE:
        return await NativeConnection.connect(dsn, options)
    return await ThreadConnection.connect(dsn, options)
