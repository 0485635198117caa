"""Transactional handlers: an attempt's writes commit with its command's completion, or not at all.

For a handler registered with `transactional=True` the worker opens a transaction on a
pooled connection, runs the handler with it as `ctx.conn`, and writes the outcome:

| the attempt                                   | its transaction              | to the acker   |
|-----------------------------------------------|------------------------------|----------------|
| returned a valid result, the lease still held | the command's row locked,    | `WrittenResult`|
|                                               | then the completion and      | with changes   |
|                                               | COMMIT in one round trip     |                |
| returned a valid result, the lease lost       | ROLLBACK                     | `WrittenResult`|
|                                               |                              | without: late  |
| raised, timed out, returned an invalid result,| ROLLBACK                     | the failure    |
| left its transaction failed or ended          |                              | (`HandlerResult`) |
| BEGIN, the completion or COMMIT failed        | ROLLBACK (or, if COMMIT was  | a transient    |
|                                               | cut off, perhaps committed)  | failure        |

The lease token is checked inside the transaction: the command's row is locked only if
the claim still holds it (`lock_if_claimed`), so the completion that follows (one
COMPLETED result, written as the acker writes it: `complete_and_commit`) is sure to be
written, and COMMIT is sent with it in one round trip: the handler's writes commit only
if the completion does, only while the claim is held, and no client round trip keeps
the batch's row (which the completion updates) locked. A failure goes the usual way
through the acker, guarded by the same token: after a COMMIT whose answer was lost it
changes nothing if the COMMIT took effect. Heartbeats and releases skip the command's
row once it is locked (SKIP LOCKED), and nothing locks it before: they never wait on a
handler.

Each running transactional handler holds one pooled connection. `TransactionSlots`
bounds how many do at once in a runtime, leaving connections for the claimers, ackers,
heartbeats and the application: more transactional handlers wait for a slot (their
leases are kept meanwhile).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from triobus.actors.messages import AckMessage, WrittenResult
from triobus.actors.outcomes import HandlerRun, Raised
from triobus.actors.transaction import Transaction, open_transaction
from triobus.persistence.errors import DatabaseError, ValidationError
from triobus.persistence.pool import ConnectionPool
from triobus.persistence.queue import (
    ClaimedCommand,
    HandlerResult,
    Outcome,
    complete_and_commit,
    lock_if_claimed,
)

# Pooled connections kept from transactional handlers (claims, acks, heartbeats, sends).
RESERVED_CONNECTIONS = 2

ResultOf = Callable[[HandlerRun], HandlerResult]


class _RollBack(Exception):
    """Leave the transaction without committing; `message` goes to the acker."""

    def __init__(self, message: AckMessage) -> None:
        super().__init__()
        self.message = message


class TransactionSlots:
    """How many transactional handlers may hold a pooled connection at once: the pool's
    size less `RESERVED_CONNECTIONS`, at least one."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.limiter = trio.CapacityLimiter(max(1, pool.max_size - RESERVED_CONNECTIONS))

    @property
    def total(self) -> int:
        return int(self.limiter.total_tokens)

    async def run(
        self,
        claim: ClaimedCommand,
        call: Callable[[Transaction], Awaitable[HandlerRun]],
        result_of: ResultOf,
    ) -> AckMessage:
        """Run `call` in a transaction for `claim` (the table in the module docstring);
        `result_of` turns what the run did into its result."""
        async with self.limiter:
            try:
                return await self._run(claim, call, result_of)
            except _RollBack as rollback:
                return rollback.message
            except DatabaseError as ex:
                return result_of(Raised(ex))

    async def _run(
        self,
        claim: ClaimedCommand,
        call: Callable[[Transaction], Awaitable[HandlerRun]],
        result_of: ResultOf,
    ) -> AckMessage:
        command = claim.command
        async with open_transaction(self.pool) as transaction:
            result = result_of(await call(transaction))
            if result.outcome is Outcome.COMPLETED:
                try:
                    transaction.check_joinable(
                        self.pool,
                        f"ctx.conn of domain {command.domain!r}, command {command.command_id}",
                    )
                except ValidationError as ex:  # the handler ended it, or left it failed
                    result = result_of(Raised(ex))
            if result.outcome is not Outcome.COMPLETED:
                raise _RollBack(result)
            if not await lock_if_claimed(transaction, claim):
                raise _RollBack(WrittenResult(result, ()))  # the lease was lost: late
            changes = await complete_and_commit(transaction, result)
        return WrittenResult(result, tuple(changes))
