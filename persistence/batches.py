"""SQL for batches: creating them, their counts, their completion, and queries.

Counts are exact at every commit (invariant 2): every statement that changes the state of
batch commands also applies the matching count changes to their batches, through the CTEs
that `batch_changes_sql` writes. Those CTEs lock the batch rows in (domain, batch_id)
order, so concurrent statements never deadlock on them, and they complete a batch in the
statement that makes its last open command terminal (invariant 3): status and
completed_at set, one BATCH_COMPLETED audit event with the final counts, and a NOTIFY on
`triobus_batch` with payload "domain:batch_id". A command in the troubleshooting queue is
not terminal: it holds its batch open.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import attrs
from psycopg.types.json import Jsonb

from triobus.persistence.driver import Connection, Row
from triobus.persistence.errors import DuplicateBatchError
from triobus.persistence.validation import NewCommand

# What statements built on `batch_changes_sql` return about the batch of each changed
# command `c`, joined with `LEFT JOIN batch_updated bu` (see `CommandChange`).
BATCH_CHANGE_COLUMNS = """coalesce(bu.newly_completed, false) AS batch_completed,
       bu.completed_count AS batch_completed_count, bu.failed_count AS batch_failed_count,
       bu.canceled_count AS batch_canceled_count,
       bu.in_troubleshooting_count AS batch_tsq_count"""


def batch_changes_sql(deltas: str) -> str:
    """CTEs applying the per-command count changes listed by CTE `deltas`.

    `deltas` has columns (domain, batch_id, started, completed, failed, canceled, tsq):
    `started` is true for a claim, the others are +1/-1/0. The CTEs end in
    `batch_updated` (with `newly_started` and `newly_completed` flags) and write the
    BATCH_STARTED / BATCH_COMPLETED audit events and the completion NOTIFY.
    """
    done = (
        "b.completed_count + d.completed + b.failed_count + d.failed"
        " + b.canceled_count + d.canceled"
    )
    failures = "b.failed_count + d.failed + b.canceled_count + d.canceled"
    return f"""
batch_deltas AS (
    SELECT domain, batch_id, bool_or(started) AS started,
           sum(completed)::int AS completed, sum(failed)::int AS failed,
           sum(canceled)::int AS canceled, sum(tsq)::int AS tsq
    FROM {deltas} WHERE batch_id IS NOT NULL
    GROUP BY domain, batch_id
), batch_locked AS (
    SELECT b.domain, b.batch_id, b.started_at IS NULL AS unstarted,
           b.status IN ('COMPLETED', 'COMPLETED_WITH_FAILURES') AS was_final
    FROM triobus.batch b
    JOIN batch_deltas d ON b.domain = d.domain AND b.batch_id = d.batch_id
    WHERE d.completed <> 0 OR d.failed <> 0 OR d.canceled <> 0 OR d.tsq <> 0
       OR (d.started AND b.started_at IS NULL)  -- only rows that change are locked
    ORDER BY b.domain, b.batch_id
    FOR UPDATE OF b
), batch_updated AS (
    UPDATE triobus.batch b
    SET completed_count = b.completed_count + d.completed,
        failed_count = b.failed_count + d.failed,
        canceled_count = b.canceled_count + d.canceled,
        in_troubleshooting_count = b.in_troubleshooting_count + d.tsq,
        started_at = CASE WHEN l.unstarted AND d.started THEN now() ELSE b.started_at END,
        status = CASE
            WHEN {done} = b.total_count AND {failures} > 0 THEN 'COMPLETED_WITH_FAILURES'
            WHEN {done} = b.total_count THEN 'COMPLETED'
            WHEN l.unstarted AND d.started THEN 'IN_PROGRESS'
            ELSE b.status END,
        completed_at = CASE WHEN {done} = b.total_count THEN now() ELSE b.completed_at END
    FROM batch_deltas d, batch_locked l
    WHERE b.domain = d.domain AND b.batch_id = d.batch_id
      AND l.domain = d.domain AND l.batch_id = d.batch_id
    RETURNING b.*, l.unstarted AND d.started AS newly_started,
              NOT l.was_final AND b.status IN ('COMPLETED', 'COMPLETED_WITH_FAILURES')
                  AS newly_completed
), batch_audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, batch_id, 'BATCH_STARTED', jsonb_build_object('total_count', total_count)
    FROM batch_updated WHERE newly_started
    UNION ALL
    SELECT domain, batch_id, 'BATCH_COMPLETED',
           jsonb_build_object('status', status, 'total_count', total_count,
                              'completed_count', completed_count, 'failed_count', failed_count,
                              'canceled_count', canceled_count)
    FROM batch_updated WHERE newly_completed
    RETURNING CASE WHEN event_type = 'BATCH_COMPLETED'
                   THEN pg_notify('triobus_batch', domain || ':' || subject_id) END
)"""


class BatchStatus(enum.StrEnum):
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    COMPLETED_WITH_FAILURES = "COMPLETED_WITH_FAILURES"

    @property
    def is_final(self) -> bool:
        return self in (BatchStatus.COMPLETED, BatchStatus.COMPLETED_WITH_FAILURES)


@attrs.frozen(kw_only=True)
class BatchMetadata:
    """A batch and its counts, exact as of the read.

    `total_count = pending + in_progress + completed_count + failed_count +
    canceled_count + in_troubleshooting_count` at every commit.
    """

    domain: str
    batch_id: UUID
    name: str | None
    custom_data: dict[str, Any] | None
    status: BatchStatus
    total_count: int
    completed_count: int
    failed_count: int
    canceled_count: int
    in_troubleshooting_count: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None

    @property
    def is_final(self) -> bool:
        return self.status.is_final

    @classmethod
    def from_row(cls, row: Row) -> BatchMetadata:
        return cls(
            domain=row["domain"],
            batch_id=row["batch_id"],
            name=row["name"],
            custom_data=row["custom_data"],
            status=BatchStatus(row["status"]),
            total_count=row["total_count"],
            completed_count=row["completed_count"],
            failed_count=row["failed_count"],
            canceled_count=row["canceled_count"],
            in_troubleshooting_count=row["in_troubleshooting_count"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            completed_at=row["completed_at"],
        )


COPY_COMMANDS = """
COPY triobus.command
    (domain, command_id, command_type, data, correlation_id, reply_to, max_attempts,
     batch_id, visible_at)
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
)

SENT_AUDIT_FOR_BATCH = """
WITH notified AS (SELECT pg_notify('triobus_command', %(domain)s))
INSERT INTO triobus.audit (domain, subject_id, event_type, details)
SELECT domain, command_id, 'SENT',
       jsonb_build_object('command_type', command_type, 'correlation_id', correlation_id,
                          'reply_to', reply_to, 'max_attempts', max_attempts,
                          'visible_at', visible_at, 'batch_id', batch_id)
FROM triobus.command, notified
WHERE domain = %(domain)s AND batch_id = %(batch_id)s
"""


def _copy_rows(
    commands: Sequence[NewCommand], batch_id: UUID, db_now: datetime
) -> Iterator[tuple[Any, ...]]:
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
        )


async def insert_batch(
    conn: Connection,
    domain: str,
    batch_id: UUID,
    commands: Sequence[NewCommand],
    *,
    name: str | None,
    custom_data_json: str | None,
) -> None:
    """Insert the batch, its commands (COPY) and their SENT events; call in a transaction.

    Raises DuplicateBatchError if the batch id is taken, UniqueViolationError if a
    command id is (the caller's transaction then rolls everything back).
    """
    row = await conn.fetch_one(
        "INSERT INTO triobus.batch (domain, batch_id, name, custom_data, total_count)"
        " VALUES (%s, %s, %s, %s::jsonb, %s) ON CONFLICT DO NOTHING RETURNING created_at",
        (domain, batch_id, name, custom_data_json, len(commands)),
    )
    if row is None:
        raise DuplicateBatchError(domain, batch_id)
    # Delays count from the database's clock, like `send`'s.
    rows = _copy_rows(commands, batch_id, row["created_at"])
    await conn.copy_rows(COPY_COMMANDS, rows, types=COPY_COMMAND_TYPES)
    await conn.execute(SENT_AUDIT_FOR_BATCH, {"domain": domain, "batch_id": batch_id})


async def first_stored_command(
    conn: Connection, domain: str, command_ids: Sequence[UUID]
) -> UUID | None:
    """The first of these ids already stored in `domain`, if any."""
    row = await conn.fetch_one(
        "SELECT command_id FROM triobus.command WHERE domain = %s AND command_id = ANY(%s) LIMIT 1",
        (domain, list(command_ids)),
    )
    return None if row is None else row["command_id"]


async def select_batch(conn: Connection, domain: str, batch_id: UUID) -> BatchMetadata | None:
    row = await conn.fetch_one(
        "SELECT * FROM triobus.batch WHERE domain = %s AND batch_id = %s", (domain, batch_id)
    )
    return None if row is None else BatchMetadata.from_row(row)


async def select_final_batches(
    conn: Connection, keys: Sequence[tuple[str, UUID]]
) -> list[tuple[str, UUID]]:
    """Which of these (domain, batch_id) are complete (for the reconciliation poll)."""
    rows = await conn.fetch_all(
        "SELECT b.domain, b.batch_id FROM triobus.batch b"
        " JOIN unnest(%s::text[], %s::uuid[]) AS k(domain, batch_id)"
        "   ON b.domain = k.domain AND b.batch_id = k.batch_id"
        " WHERE b.status IN ('COMPLETED', 'COMPLETED_WITH_FAILURES')",
        ([k[0] for k in keys], [k[1] for k in keys]),
    )
    return [(r["domain"], r["batch_id"]) for r in rows]


async def select_batches(
    conn: Connection, domain: str, *, status: BatchStatus | None, limit: int, offset: int
) -> list[BatchMetadata]:
    rows = await conn.fetch_all(
        "SELECT * FROM triobus.batch WHERE domain = %(domain)s"
        " AND (%(status)s::text IS NULL OR status = %(status)s::text)"
        " ORDER BY created_at DESC, batch_id LIMIT %(limit)s OFFSET %(offset)s",
        {"domain": domain, "status": status, "limit": limit, "offset": offset},
    )
    return [BatchMetadata.from_row(row) for row in rows]
