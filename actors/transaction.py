"""The application's transaction: a pooled connection lent inside BEGIN ... COMMIT.

`Runtime.transaction()` yields a `Transaction`. The application runs its own SQL on it
(`execute`, `fetch_all`, `fetch_one`, psycopg placeholders) and passes it to triobus as
`conn=`: whatever either writes commits or rolls back with the transaction, the NOTIFYs
that wake workers included (PostgreSQL delivers them on commit). What triobus may do
only once the writes are committed (start watching a batch, tell batch actors of an
operator's action) waits in `after_commit` and runs after the COMMIT, never after a
rollback. A `Transaction` is usable only inside its block, while its transaction has not
failed; triobus checks that (and that it comes from the same runtime) before it writes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from triobus.persistence.connection import Connection, Params, ParamSet, Row, TransactionState
from triobus.persistence.driver import DriverConnection
from triobus.persistence.errors import DatabaseError, InvalidOperationError, ValidationError
from triobus.persistence.pool import ConnectionPool

logger = logging.getLogger(__name__)

AfterCommit = Callable[[], Awaitable[object]]


class Transaction(Connection):
    """A connection inside the application's transaction (see the module docstring).

    `transaction()` on it is a savepoint: a block that fails rolls back to where it
    began and leaves the transaction usable.
    """

    def __init__(self, conn: DriverConnection, pool: ConnectionPool) -> None:
        self.pool = pool
        self._conn = conn
        self._open = True
        self._savepoints = 0
        self._after_commit: list[AfterCommit] = []

    async def execute(self, sql: str, params: Params = None) -> int:
        return await self._usable().execute(sql, params)

    async def fetch_all(self, sql: str, params: Params = None) -> list[Row]:
        return await self._usable().fetch_all(sql, params)

    async def execute_many(self, sql: str, params_seq: Iterable[ParamSet]) -> None:
        await self._usable().execute_many(sql, params_seq)

    async def copy_rows(
        self, sql: str, rows: Iterable[Sequence[Any]], *, types: Sequence[str] | None = None
    ) -> None:
        await self._usable().copy_rows(sql, rows, types=types)

    async def fetch_all_and_commit(self, sql: str, params: Params) -> list[Row]:
        """`sql` and COMMIT in one round trip (for a transactional handler's completion:
        `queue.complete_and_commit`); the block then ends committed."""
        return await self._usable().fetch_all_and_commit(sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A savepoint: the block's writes are kept if it succeeds, undone if it raises."""
        self._savepoints += 1
        name = f"triobus_{self._savepoints}"  # a counter, never input
        await self.execute(f"SAVEPOINT {name}")
        try:
            yield self
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await self._conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                except DatabaseError:
                    logger.debug("rollback to savepoint failed", exc_info=True)
            raise
        await self.execute(f"RELEASE SAVEPOINT {name}")

    def after_commit(self, action: AfterCommit) -> None:
        """Run `action` once the transaction has committed (never if it rolls back)."""
        self._after_commit.append(action)

    def check_joinable(self, pool: ConnectionPool, context: str) -> None:
        """Raise `ValidationError` unless triobus can write through this transaction."""
        if self.pool is not pool:
            raise ValidationError(f"conn is a transaction of another runtime ({context})")
        if not self._open:
            raise ValidationError(f"conn is a transaction whose block has ended ({context})")
        state = self._conn.transaction_state()
        if state is not TransactionState.IN_TRANSACTION:
            raise ValidationError(
                f"conn's connection is {state}, not in a usable transaction"
                f"{_WHY_NOT_JOINABLE.get(state, state.why_unusable)} ({context})"
            )

    def _usable(self) -> DriverConnection:
        if not self._open:
            raise ValidationError("this transaction's block has ended: it cannot be used")
        return self._conn

    def _end(self) -> list[AfterCommit]:
        self._open = False
        actions, self._after_commit = self._after_commit, []
        return actions


# A Transaction's connection is idle only if the block committed or rolled back by hand.
_WHY_NOT_JOINABLE = {TransactionState.IDLE: ": it was committed or rolled back by hand"}


def joined(conn: object, pool: ConnectionPool, context: str) -> Transaction | None:
    """`conn` checked as a transaction triobus may join (None: triobus uses its own)."""
    if conn is None:
        return None
    if not isinstance(conn, Transaction):
        raise ValidationError(
            f"conn must be a transaction from runtime.transaction(), got"
            f" {type(conn).__name__} ({context})"
        )
    conn.check_joinable(pool, context)
    return conn


@asynccontextmanager
async def statement_connection(
    pool: ConnectionPool, conn: Transaction | None
) -> AsyncIterator[Connection]:
    """The application's transaction if given, else a pooled connection (autocommit)."""
    if conn is not None:
        yield conn
        return
    async with pool.connection() as own:
        yield own


@asynccontextmanager
async def open_transaction(pool: ConnectionPool) -> AsyncIterator[Transaction]:
    """BEGIN on a pooled connection; COMMIT when the block ends, then the after-commit
    actions (shielded: what is committed is followed through); ROLLBACK if it raises or
    is cancelled (the connection goes back to the pool clean, or is replaced), or if a
    statement in it failed (then `InvalidOperationError` says it was not committed)."""
    async with pool.connection() as conn:
        transaction = Transaction(conn, pool)
        try:
            async with conn.transaction():
                yield transaction
                if conn.transaction_state() is TransactionState.FAILED:
                    # PostgreSQL would answer COMMIT with a silent ROLLBACK: say so
                    raise InvalidOperationError(
                        "a statement in the transaction failed, so it was rolled back,"
                        " not committed"
                    )
        finally:
            actions = transaction._end()
    with trio.CancelScope(shield=True):
        for action in actions:
            await action()
