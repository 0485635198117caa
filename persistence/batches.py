"""SQL for batches: creating one with all its commands, and reading them back.

A batch and its commands are written by one transaction: the batch row, its commands
(binary COPY) and their SENT events, then a NOTIFY for the domain's workers. How the
counts change and how a batch completes is `batch_counts.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from triobus.persistence.audit import insert_sent_events
from triobus.persistence.batch_counts import FINAL_BATCH_STATUSES
from triobus.persistence.connection import Connection
from triobus.persistence.errors import (
    DuplicateBatchError,
    DuplicateCommandError,
    UniqueViolationError,
)
from triobus.persistence.new_commands import NewBatch, NewCommand
from triobus.persistence.notifications import Channel, notify_sql
from triobus.persistence.records import BatchMetadata, BatchStatus
from triobus.persistence.tracing import current_trace_context

INSERT_BATCH = """
INSERT INTO triobus.batch (domain, batch_id, name, custom_data, total_count, follow_ups, is_open)
VALUES (%s, %s, %s, %s::jsonb, %s, %s::jsonb, %s)
ON CONFLICT DO NOTHING
RETURNING created_at
"""

COPY_COMMANDS = """
COPY triobus.command
    (domain, command_id, command_type, data, correlation_id, reply_to, max_attempts,
     batch_id, visible_at, trace_context)
FROM STDIN (FORMAT BINARY)
"""
COPY_COMMAND_TYPES = (
    "text",
    "uuid",
    "text",
    "jsonb",
    "uuid",
    "text",
    "int4",
    "uuid",
    "timestamptz",
    "jsonb",
)

_BATCH_MEMBERS = "triobus.command, notified WHERE domain = %(domain)s AND batch_id = %(batch_id)s"
SENT_EVENTS_OF_BATCH = f"""
WITH notified AS (SELECT {notify_sql(Channel.COMMAND, "%(domain)s")})
{insert_sent_events(_BATCH_MEMBERS, of_batch=True)}
"""

SELECT_FIRST_STORED_COMMAND = """
SELECT command_id FROM triobus.command WHERE domain = %s AND command_id = ANY(%s) LIMIT 1
"""

SELECT_BATCH = "SELECT * FROM triobus.batch WHERE domain = %s AND batch_id = %s"

SELECT_FINAL_BATCHES = f"""
SELECT b.domain, b.batch_id FROM triobus.batch b
JOIN unnest(%s::text[], %s::uuid[]) AS k(domain, batch_id)
  ON b.domain = k.domain AND b.batch_id = k.batch_id
WHERE b.status IN {FINAL_BATCH_STATUSES}
"""

SELECT_BATCHES = """
SELECT * FROM triobus.batch
WHERE domain = %(domain)s AND (%(status)s::text IS NULL OR status = %(status)s::text)
ORDER BY created_at DESC, batch_id LIMIT %(limit)s OFFSET %(offset)s
"""


def _copy_rows(
    commands: Sequence[NewCommand], batch_id: UUID, db_now: datetime
) -> Iterator[tuple[Any, ...]]:
    traced = current_trace_context()  # one span sends the whole batch
    trace_context = None if traced is None else Jsonb(traced, dumps=str)
    for c in commands:
        visible_at = c.not_before or (db_now + timedelta(seconds=c.delay) if c.delay else db_now)
        yield (
            c.domain,
            c.command_id,
            c.command_type,
            Jsonb(c.data_json, dumps=str),  # already JSON: passed through, not re-encoded
            c.correlation_id,
            c.reply_to,
            c.max_attempts,
            batch_id,
            visible_at,
            trace_context,
        )


async def insert_batch(conn: Connection, batch: NewBatch) -> None:
    """Insert the batch, its commands (COPY) and their SENT events; call in a transaction.

    Raises DuplicateBatchError if the batch id is taken, UniqueViolationError if a
    command id is (the caller's transaction then rolls everything back).
    """
    domain, batch_id = batch.domain, batch.batch_id
    row = await conn.fetch_one(
        INSERT_BATCH,
        (
            domain,
            batch_id,
            batch.name,
            batch.custom_data_json,
            len(batch.commands),
            batch.follow_ups_json,
            batch.is_open,
        ),
    )
    if row is None:
        raise DuplicateBatchError(domain, batch_id)
    if not batch.commands:
        return
    await insert_members(conn, domain, batch_id, batch.commands, row["created_at"])
    await conn.execute(SENT_EVENTS_OF_BATCH, {"domain": domain, "batch_id": batch_id})


async def insert_members(
    conn: Connection,
    domain: str,
    batch_id: UUID,
    commands: Sequence[NewCommand],
    db_now: datetime,
) -> None:
    """COPY the commands of a batch; delays count from `db_now`, the database's clock
    (like `send`'s). The batch row counts them already."""
    rows = _copy_rows(commands, batch_id, db_now)
    await conn.copy_rows(COPY_COMMANDS, rows, types=COPY_COMMAND_TYPES)


async def store_batch(conn: Connection, batch: NewBatch) -> None:
    """Insert a validated batch with all its commands, all or nothing, in
    `conn.transaction()` (its own transaction, or a savepoint in the caller's: a failure
    leaves that transaction usable).

    Raises `DuplicateBatchError` if the batch id is taken, `DuplicateCommandError`
    naming a command id that is (also when two writers race).
    """
    try:
        async with conn.transaction():
            await insert_batch(conn, batch)
    except UniqueViolationError:
        taken = await first_stored_command(
            conn, batch.domain, [c.command_id for c in batch.commands]
        )
        raise DuplicateCommandError(batch.domain, taken or "(unknown)") from None


async def first_stored_command(
    conn: Connection, domain: str, command_ids: Sequence[UUID]
) -> UUID | None:
    """The first of these ids already stored in `domain`, if any."""
    row = await conn.fetch_one(SELECT_FIRST_STORED_COMMAND, (domain, list(command_ids)))
    return None if row is None else row["command_id"]


async def select_batch(conn: Connection, domain: str, batch_id: UUID) -> BatchMetadata | None:
    row = await conn.fetch_one(SELECT_BATCH, (domain, batch_id))
    return None if row is None else BatchMetadata.from_row(row)


async def select_final_batches(
    conn: Connection, keys: Sequence[tuple[str, UUID]]
) -> list[tuple[str, UUID]]:
    """Which of these (domain, batch_id) are complete (for the reconciliation poll)."""
    rows = await conn.fetch_all(SELECT_FINAL_BATCHES, ([k[0] for k in keys], [k[1] for k in keys]))
    return [(r["domain"], r["batch_id"]) for r in rows]


async def select_batches(
    conn: Connection, domain: str, *, status: BatchStatus | None, limit: int, offset: int
) -> list[BatchMetadata]:
    rows = await conn.fetch_all(
        SELECT_BATCHES, {"domain": domain, "status": status, "limit": limit, "offset": offset}
    )
    return [BatchMetadata.from_row(row) for row in rows]
