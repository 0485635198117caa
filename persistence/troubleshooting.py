"""SQL for the troubleshooting queue (TSQ): listing it, and the operator's three actions.

Each action statement only changes commands still IN_TROUBLESHOOTING_QUEUE, so of two
operators acting at once exactly one changes the command; it writes the audit event and,
for cancel and complete, the command's one reply in the same statement.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs

from triobus.persistence.batches import BATCH_CHANGE_COLUMNS, batch_changes_sql
from triobus.persistence.driver import Connection, Row
from triobus.persistence.records import CommandChange

_SCOPE = """
    domain = %(domain)s AND status = 'IN_TROUBLESHOOTING_QUEUE'
    AND (%(command_id)s::uuid IS NULL OR command_id = %(command_id)s::uuid)
    AND (%(command_type)s::text IS NULL OR command_type = %(command_type)s::text)
"""

SELECT_TROUBLESHOOTING = f"""
SELECT * FROM triobus.command WHERE {_SCOPE}
ORDER BY updated_at, command_id LIMIT %(limit)s OFFSET %(offset)s
"""

COUNT_TROUBLESHOOTING = f"SELECT count(*) AS n FROM triobus.command WHERE {_SCOPE}"

RETRY = f"""
WITH changed AS (
    UPDATE triobus.command
    SET status = 'PENDING', attempts = 0, visible_at = now(), lease_token = NULL,
        updated_at = now()
    WHERE {_SCOPE}
    RETURNING domain, command_id, batch_id, status, reply_to, correlation_id, result
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, 'OPERATOR_RETRY',
           jsonb_build_object('operator', %(operator)s::text)
    FROM changed
), deltas AS (
    SELECT domain, batch_id, false AS started, 0 AS completed, 0 AS failed, 0 AS canceled,
           -1 AS tsq
    FROM changed
), {batch_changes_sql("deltas")}
SELECT c.domain, c.command_id, c.batch_id, c.status, false AS batch_completed,
       NULL::int AS batch_completed_count, NULL::int AS batch_failed_count,
       NULL::int AS batch_canceled_count, NULL::int AS batch_tsq_count,
       pg_notify('triobus_command', c.domain)
FROM changed c
"""

CANCEL = f"""
WITH changed AS (
    UPDATE triobus.command
    SET status = 'CANCELED', lease_token = NULL, updated_at = now()
    WHERE {_SCOPE}
    RETURNING domain, command_id, batch_id, status, reply_to, correlation_id
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, 'OPERATOR_CANCEL',
           jsonb_build_object('operator', %(operator)s::text, 'reason', %(reason)s::text)
    FROM changed
), replies AS (
    INSERT INTO triobus.reply (queue, domain, command_id, correlation_id, outcome, data)
    SELECT reply_to, domain, command_id, correlation_id, 'CANCELED',
           jsonb_build_object('reason', %(reason)s::text)
    FROM changed WHERE reply_to IS NOT NULL
    ON CONFLICT ON CONSTRAINT reply_once_per_command DO NOTHING
    RETURNING pg_notify('triobus_reply', queue)
), deltas AS (
    SELECT domain, batch_id, false AS started, 0 AS completed, 0 AS failed, 1 AS canceled,
           -1 AS tsq
    FROM changed
), {batch_changes_sql("deltas")}
SELECT c.domain, c.command_id, c.batch_id, c.status, {BATCH_CHANGE_COLUMNS}
FROM changed c
LEFT JOIN batch_updated bu ON bu.domain = c.domain AND bu.batch_id = c.batch_id
"""

COMPLETE = f"""
WITH changed AS (
    UPDATE triobus.command
    SET status = 'COMPLETED', result = %(result)s::jsonb, lease_token = NULL,
        updated_at = now()
    WHERE {_SCOPE}
    RETURNING domain, command_id, batch_id, status, reply_to, correlation_id, result
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, 'OPERATOR_COMPLETE',
           jsonb_build_object('operator', %(operator)s::text)
    FROM changed
), replies AS (
    INSERT INTO triobus.reply (queue, domain, command_id, correlation_id, outcome, data)
    SELECT reply_to, domain, command_id, correlation_id, 'SUCCESS', result
    FROM changed WHERE reply_to IS NOT NULL
    ON CONFLICT ON CONSTRAINT reply_once_per_command DO NOTHING
    RETURNING pg_notify('triobus_reply', queue)
), deltas AS (
    SELECT domain, batch_id, false AS started, 1 AS completed, 0 AS failed, 0 AS canceled,
           -1 AS tsq
    FROM changed
), {batch_changes_sql("deltas")}
SELECT c.domain, c.command_id, c.batch_id, c.status, {BATCH_CHANGE_COLUMNS}
FROM changed c
LEFT JOIN batch_updated bu ON bu.domain = c.domain AND bu.batch_id = c.batch_id
"""


class OperatorAction(enum.Enum):
    RETRY = RETRY
    CANCEL = CANCEL
    COMPLETE = COMPLETE


@attrs.frozen(kw_only=True)
class TroubleshootingItem:
    """A command waiting in the TSQ for an operator; `entered_at` is when it moved there."""

    domain: str
    command_id: UUID
    command_type: str
    data: dict[str, Any]
    error_type: str | None
    error_code: str | None
    error_message: str | None
    error_details: dict[str, Any] | None
    attempts: int
    max_attempts: int | None
    correlation_id: UUID
    reply_to: str | None
    batch_id: UUID | None
    entered_at: datetime

    @classmethod
    def from_row(cls, row: Row) -> TroubleshootingItem:
        return cls(
            domain=row["domain"],
            command_id=row["command_id"],
            command_type=row["command_type"],
            data=row["data"],
            error_type=row["error_type"],
            error_code=row["error_code"],
            error_message=row["error_message"],
            error_details=row["error_details"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            correlation_id=row["correlation_id"],
            reply_to=row["reply_to"],
            batch_id=row["batch_id"],
            entered_at=row["updated_at"],
        )


def _scope(domain: str, command_id: UUID | None, command_type: str | None) -> dict[str, Any]:
    return {"domain": domain, "command_id": command_id, "command_type": command_type}


async def select_troubleshooting(
    conn: Connection, domain: str, *, command_type: str | None, limit: int, offset: int
) -> list[TroubleshootingItem]:
    """TSQ items of a domain, oldest first (served by the partial index on the TSQ)."""
    rows = await conn.fetch_all(
        SELECT_TROUBLESHOOTING,
        {**_scope(domain, None, command_type), "limit": limit, "offset": offset},
    )
    return [TroubleshootingItem.from_row(row) for row in rows]


async def count_troubleshooting(conn: Connection, domain: str, *, command_type: str | None) -> int:
    row = await conn.fetch_one(COUNT_TROUBLESHOOTING, _scope(domain, None, command_type))
    assert row is not None
    return int(row["n"])


async def lock_command_status(conn: Connection, domain: str, command_id: UUID) -> str | None:
    """Lock the command row for this transaction; return its status (None if unknown)."""
    row = await conn.fetch_one(
        "SELECT status FROM triobus.command WHERE domain = %s AND command_id = %s FOR UPDATE",
        (domain, command_id),
    )
    return None if row is None else str(row["status"])


async def apply_operator_action(
    conn: Connection,
    action: OperatorAction,
    domain: str,
    *,
    command_id: UUID | None = None,
    command_type: str | None = None,
    operator: str | None = None,
    reason: str | None = None,
    result_json: str | None = None,
) -> list[CommandChange]:
    """Apply `action` to the TSQ commands in scope (one command, or a domain/type in bulk)."""
    rows = await conn.fetch_all(
        action.value,
        {
            **_scope(domain, command_id, command_type),
            "operator": operator,
            "reason": reason,
            "result": result_json,
        },
    )
    return [CommandChange.from_row(row) for row in rows]
