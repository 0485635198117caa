"""What triobus's SQL needs from a connection: the seam between the statements and a driver.

The statement modules (commands, batches, queue, troubleshooting, audit, replies, schema)
are written against `Connection` and import no Trio: the Trio driver (`driver.py`)
implements it, and so can an adapter over an application's own psycopg connection.
Rows are dicts keyed by column name; parameters use psycopg's placeholders; psycopg's
errors become triobus's (`translated_errors`).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.rows import dict_row

from triobus.persistence.errors import DatabaseError, DatabaseUnavailableError, UniqueViolationError

Row = dict[str, Any]
ParamSet = Sequence[Any] | Mapping[str, Any]
Params = ParamSet | None


class Connection(abc.ABC):
    """The narrow surface the statements use. Every method may raise `DatabaseError`."""

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
    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        """BEGIN ... COMMIT around the block; ROLLBACK when it raises or is cancelled."""


class TransactionState(enum.StrEnum):
    """Where a psycopg connection stands, as libpq knows it (no round trip)."""

    IDLE = "idle"  # outside a transaction
    IN_TRANSACTION = "in a transaction"
    FAILED = "in a failed transaction"  # a statement failed: only ROLLBACK is accepted
    BUSY = "running a statement"
    CLOSED = "closed"

    @property
    def why_unusable(self) -> str:
        """What to tell a caller who hands over a connection in this state."""
        return _WHY_UNUSABLE.get(self, "")


_WHY_UNUSABLE = {
    TransactionState.FAILED: ": a statement in it failed, so it can only roll back",
    TransactionState.BUSY: ": another task is running a statement on it",
}
_STATES = {
    pq.TransactionStatus.IDLE: TransactionState.IDLE,
    pq.TransactionStatus.INTRANS: TransactionState.IN_TRANSACTION,
    pq.TransactionStatus.INERROR: TransactionState.FAILED,
    pq.TransactionStatus.ACTIVE: TransactionState.BUSY,
}


def transaction_state_of(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
) -> TransactionState:
    """The state of a psycopg connection, sync or asyncio."""
    if conn.closed:
        return TransactionState.CLOSED
    return _STATES.get(conn.info.transaction_status, TransactionState.CLOSED)


@contextmanager
def translated_errors() -> Iterator[None]:
    """Re-raise psycopg errors as triobus errors: for every implementation of `Connection`
    (the only place that maps them)."""
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


class AsyncPsycopgConnection(Connection):
    """The statements run on a psycopg `AsyncConnection` (`_conn`), for the native Trio
    driver and the asyncio producer. Rows are dicts whatever the connection's row factory."""

    _conn: psycopg.AsyncConnection[Any]

    async def execute(self, sql: str, params: Params = None) -> int:
        with translated_errors():
            cursor = await self._conn.cursor(row_factory=dict_row).execute(sql, params)
            return cursor.rowcount

    async def fetch_all(self, sql: str, params: Params = None) -> list[Row]:
        with translated_errors():
            cursor = await self._conn.cursor(row_factory=dict_row).execute(sql, params)
            return await cursor.fetchall()

    async def execute_many(self, sql: str, params_seq: Iterable[ParamSet]) -> None:
        with translated_errors():
            await self._conn.cursor().executemany(sql, params_seq)

    async def copy_rows(
        self, sql: str, rows: Iterable[Sequence[Any]], *, types: Sequence[str] | None = None
    ) -> None:
        with translated_errors():
            async with self._conn.cursor().copy(sql) as copy:
                if types is not None:
                    copy.set_types(list(types))
                for row in rows:
                    await copy.write_row(row)


# The same statements on a sync psycopg `Connection`, for the thread driver (in its
# worker threads) and the sync producer.


def execute_sync(conn: psycopg.Connection[Any], sql: str, params: Params = None) -> int:
    with translated_errors():
        return conn.cursor(row_factory=dict_row).execute(sql, params).rowcount


def fetch_all_sync(conn: psycopg.Connection[Any], sql: str, params: Params = None) -> list[Row]:
    with translated_errors():
        return conn.cursor(row_factory=dict_row).execute(sql, params).fetchall()


def execute_many_sync(
    conn: psycopg.Connection[Any], sql: str, params_seq: Iterable[ParamSet]
) -> None:
    with translated_errors():
        conn.cursor().executemany(sql, params_seq)


def copy_rows_sync(
    conn: psycopg.Connection[Any],
    sql: str,
    rows: Iterable[Sequence[Any]],
    types: Sequence[str] | None = None,
) -> None:
    with translated_errors(), conn.cursor().copy(sql) as copy:
        if types is not None:
            copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)
