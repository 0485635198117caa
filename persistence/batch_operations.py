"""SQL for what is done to a batch after it is created: add commands to an open batch,
close it, cancel it.

Each runs in `conn.transaction()` (its own transaction, or a savepoint in the caller's)
and first updates the batch row under a condition that says whether it applies (open; not
yet canceled nor completed), so of two callers racing, the second waits for the first's
commit and then finds the condition false: it raises `InvalidOperationError` and writes
nothing. Closing and canceling then evaluate completion in the same transaction (a
closed batch with no open member completes there, with its follow-ups).

A cancel first takes the batch's cancel lock (`batch_counts.CANCEL_LOCK_CLASS`): the
statements that would leave a member PENDING or in the troubleshooting queue share it, so
they either commit before the cancel reads the members (which it then cancels) or read
the batch after the cancel committed (and cancel the member themselves). Row locks are
then taken in one order, a command before its batch's row, as claims and operator actions
take them (a command, then its batch's row as its counts change): the batch's TSQ members
(operators act on those), the batch row, then the waiting members, skipping a PENDING
member that someone else holds at that moment (a claim: it runs, as members running at
the cancel do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn
from uuid import UUID

from triobus.persistence.audit import insert_sent_events
from triobus.persistence.batch_counts import (
    FINAL_BATCH_STATUSES,
    StatusChange,
    batch_count_ctes,
    cancel_lock_key_sql,
)
from triobus.persistence.batches import first_stored_command, insert_members, select_batch
from triobus.persistence.connection import Connection
from triobus.persistence.errors import (
    BatchNotFoundError,
    DuplicateCommandError,
    InvalidOperationError,
    UniqueViolationError,
)
from triobus.persistence.literals import literal, literal_list
from triobus.persistence.new_commands import NewCommand
from triobus.persistence.notifications import Channel, notify_sql
from triobus.persistence.records import AuditEventType, CommandStatus, ReplyOutcome
from triobus.persistence.replies import insert_replies

_THE_BATCH = "domain = %(domain)s AND batch_id = %(batch_id)s"
_NOT_FINISHED = f"completed_at IS NULL AND status NOT IN {FINAL_BATCH_STATUSES}"

GROW_OPEN_BATCH = f"""
UPDATE triobus.batch SET total_count = total_count + %(added)s
WHERE {_THE_BATCH} AND is_open
RETURNING now() AS db_now
"""

_ADDED_MEMBERS = (
    "triobus.command, notified WHERE domain = %(domain)s AND command_id = ANY(%(command_ids)s)"
)
SENT_EVENTS_OF_ADDED = f"""
WITH notified AS (SELECT {notify_sql(Channel.COMMAND, "%(domain)s")})
{insert_sent_events(_ADDED_MEMBERS, of_batch=True)}
"""

CLOSE_OPEN_BATCH = f"""
WITH closed AS (
    UPDATE triobus.batch SET is_open = false
    WHERE {_THE_BATCH} AND is_open
    RETURNING domain, batch_id, total_count
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, batch_id, {literal(AuditEventType.BATCH_CLOSED)},
           jsonb_build_object('total_count', total_count)
    FROM closed
)
SELECT 1 AS closed FROM closed
"""

LOCK_AGAINST_ACKS = (
    f"SELECT pg_advisory_xact_lock({cancel_lock_key_sql('%(domain)s', '%(batch_id)s')})"
)

MARK_BATCH_CANCELED = f"""
WITH canceled AS (
    UPDATE triobus.batch
    SET is_open = false, canceled_at = now(), canceled_by = %(operator)s,
        cancel_reason = %(reason)s
    WHERE {_THE_BATCH} AND canceled_at IS NULL AND {_NOT_FINISHED}
    RETURNING domain, batch_id
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, batch_id, {literal(AuditEventType.BATCH_CANCELED)},
           jsonb_build_object('operator', %(operator)s::text, 'reason', %(reason)s::text)
    FROM canceled
)
SELECT 1 AS canceled FROM canceled
"""

_EVALUATED = "evaluated AS (SELECT %(domain)s::text AS domain, %(batch_id)s::uuid AS batch_id)"
_COMPLETED_NOW = "coalesce((SELECT newly_completed FROM batch_updated), false) AS completed"

COMPLETE_IF_DONE = f"""
WITH {_EVALUATED}, {batch_count_ctes(evaluated="evaluated")}
SELECT {_COMPLETED_NOW}
"""

_CANCEL_COUNTS = batch_count_ctes(
    StatusChange("changed", old="old_status", new="status"), evaluated="evaluated"
)
_OPEN_MEMBER_STATUSES = literal_list(
    (CommandStatus.PENDING, CommandStatus.IN_TROUBLESHOOTING_QUEUE)
)
LOCK_TSQ_MEMBERS = f"""
SELECT 1 FROM triobus.command
WHERE {_THE_BATCH} AND status = {literal(CommandStatus.IN_TROUBLESHOOTING_QUEUE)}
FOR UPDATE
"""
CANCEL_WAITING_MEMBERS = f"""
WITH {_EVALUATED}, waiting AS (
    SELECT domain, command_id, status FROM triobus.command
    WHERE {_THE_BATCH} AND status IN {_OPEN_MEMBER_STATUSES}
    FOR UPDATE SKIP LOCKED  -- its TSQ members it holds already; a PENDING one held is claimed
), changed AS (
    UPDATE triobus.command c
    SET status = {literal(CommandStatus.CANCELED)}, lease_token = NULL, finished_at = now(),
        updated_at = now()
    FROM waiting w WHERE c.domain = w.domain AND c.command_id = w.command_id
    RETURNING c.domain, c.command_id, c.batch_id, c.status, c.reply_to, c.correlation_id,
              w.status AS old_status
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, {literal(AuditEventType.CANCELED_WITH_BATCH)},
           jsonb_build_object('operator', %(operator)s::text, 'reason', %(reason)s::text,
                              'instead_of', old_status)
    FROM changed
), replies AS (
    {
    insert_replies(
        "changed",
        outcome=literal(ReplyOutcome.CANCELED),
        data="jsonb_build_object('reason', %(reason)s::text)",
    )
}
), {_CANCEL_COUNTS}
SELECT count(*) AS canceled, {_COMPLETED_NOW} FROM changed
"""


async def lock_tsq_members(conn: Connection, domain: str, batch_id: UUID) -> None:
    """Lock the batch's members in the TSQ for this transaction, before its row (see the
    module docstring)."""
    await conn.execute(LOCK_TSQ_MEMBERS, {"domain": domain, "batch_id": batch_id})


async def _refuse(conn: Connection, domain: str, batch_id: UUID, action: str) -> NoReturn:
    """Raise the error saying why `action` does not apply to the batch."""
    batch = await select_batch(conn, domain, batch_id)
    if batch is None:
        raise BatchNotFoundError(domain, batch_id)
    if batch.is_canceled:
        state = "was canceled"
    elif batch.is_final:
        state = f"is {batch.status}"
    else:
        state = "is closed"
    raise InvalidOperationError(
        f"batch {batch_id} in domain {domain!r} {state}: {action} does not apply"
    )


async def add_to_batch(
    conn: Connection, domain: str, batch_id: UUID, commands: Sequence[NewCommand]
) -> None:
    """Add validated commands to an open batch, all or nothing (see the module docstring).

    Raises `BatchNotFoundError`, `InvalidOperationError` if the batch is closed, and
    `DuplicateCommandError` naming a command id already stored.
    """
    params = {"domain": domain, "batch_id": batch_id, "added": len(commands)}
    try:
        async with conn.transaction():
            row = await conn.fetch_one(GROW_OPEN_BATCH, params)
            if row is None:
                await _refuse(conn, domain, batch_id, "adding commands")
            await insert_members(conn, domain, batch_id, commands, row["db_now"])
            await conn.execute(
                SENT_EVENTS_OF_ADDED,
                {"domain": domain, "command_ids": [c.command_id for c in commands]},
            )
    except UniqueViolationError:
        taken = await first_stored_command(conn, domain, [c.command_id for c in commands])
        raise DuplicateCommandError(domain, taken or "(unknown)") from None


async def close_batch(conn: Connection, domain: str, batch_id: UUID) -> bool:
    """Close an open batch; it completes now if none of its members is open. Returns
    whether it completed. Raises `BatchNotFoundError`, or `InvalidOperationError` if it
    is closed already."""
    params = {"domain": domain, "batch_id": batch_id}
    async with conn.transaction():
        if await conn.fetch_one(CLOSE_OPEN_BATCH, params) is None:
            await _refuse(conn, domain, batch_id, "close")
        row = await conn.fetch_one(COMPLETE_IF_DONE, params)
    assert row is not None
    return bool(row["completed"])


async def cancel_batch(
    conn: Connection, domain: str, batch_id: UUID, *, reason: str, operator: str | None
) -> tuple[int, bool]:
    """Cancel a batch: closed, and every member PENDING or in the TSQ CANCELED (with a
    CANCELED reply); members running now finish. It completes here if none is open.
    Returns how many members it canceled, and whether it completed. Raises
    `BatchNotFoundError`, or `InvalidOperationError` if the batch was canceled already or
    has completed."""
    params = {"domain": domain, "batch_id": batch_id, "reason": reason, "operator": operator}
    async with conn.transaction():
        await conn.execute(LOCK_AGAINST_ACKS, params)
        await lock_tsq_members(conn, domain, batch_id)
        if await conn.fetch_one(MARK_BATCH_CANCELED, params) is None:
            await _refuse(conn, domain, batch_id, "cancel")
        row = await conn.fetch_one(CANCEL_WAITING_MEMBERS, params)
    assert row is not None
    return int(row["canceled"]), bool(row["completed"])
