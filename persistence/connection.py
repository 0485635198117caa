"""What triobus's SQL needs from a connection: the seam between the statements and a driver.

The statement modules (commands, batches, queue, troubleshooting, audit, replies, schema)
are written against `Connection` and import no Trio: the Trio driver (`driver.py`)
implements it, and so can an adapter over an application's own psycopg connection.
Rows are dicts keyed by column name; parameters use psycopg's placeholders; psycopg's
errors become triobus's (`translated_errors`).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors

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
