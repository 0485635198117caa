"""SQL for the troubleshooting queue (TSQ): listing it, and the operator's three actions.

Each action statement only changes commands still IN_TROUBLESHOOTING_QUEUE, so of two
operators acting at once exactly one changes the command; it writes the audit event and,
for cancel and complete, the command's one reply in the same statement.
"""

from __future__ import annotations

import enum
from typing import Any
from uuid import UUID

from triobus.persistence.batch_counts import StatusChange, batch_count_ctes, select_changes
from triobus.persistence.connection import Connection
from triobus.persistence.literals import literal
from triobus.persistence.notifications import Channel, notify_sql
from triobus.persistence.records import (
    AuditEventType,
    CommandChange,
    CommandStatus,
    ReplyOutcome,
    TroubleshootingItem,
)
from triobus.persistence.replies import insert_replies

_IN_TSQ_SQL = literal(CommandStatus.IN_TROUBLESHOOTING_QUEUE)

# The commands an action or listing applies to: one command, or a domain (and type) in bulk.
_IN_SCOPE = f"""domain = %(domain)s AND status = {_IN_TSQ_SQL}
      AND (%(command_id)s::uuid IS NULL OR command_id = %(command_id)s::uuid)
      AND (%(command_type)s::text IS NULL OR command_type = %(command_type)s::text)
      AND (%(batch_id)s::uuid IS NULL OR batch_id = %(batch_id)s::uuid)"""

SELECT_TROUBLESHOOTING = f"""
SELECT * FROM triobus.command
WHERE {_IN_SCOPE}
ORDER BY updated_at, command_id LIMIT %(limit)s OFFSET %(offset)s
"""

COUNT_TROUBLESHOOTING = f"""
SELECT count(*) AS n FROM triobus.command
WHERE {_IN_SCOPE}
"""

LOCK_COMMAND_STATUS = """
SELECT status FROM triobus.command WHERE domain = %s AND command_id = %s FOR UPDATE
"""

# retry_batch locks the batch's TSQ members, then (with this) its row: see
# `batch_operations.lock_tsq_members`.
LOCK_BATCH = """
SELECT canceled_at IS NOT NULL AS canceled FROM triobus.batch
WHERE domain = %s AND batch_id = %s FOR UPDATE
"""

# A retry may correct the command's data (`data`, NULL: keep it); its audit event then
# records whether the data changed and what it was.
RETRY_FROM_TSQ = f"""
WITH previous AS (
    SELECT domain, command_id, data FROM triobus.command WHERE {_IN_SCOPE}
), changed AS (
    UPDATE triobus.command
    SET status = {literal(CommandStatus.PENDING)}, attempts = 0, visible_at = now(),
        lease_token = NULL, updated_at = now(), data = coalesce(%(data)s::jsonb, data)
    WHERE {_IN_SCOPE}
    RETURNING domain, command_id, batch_id, status, data
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT c.domain, c.command_id, {literal(AuditEventType.OPERATOR_RETRY)},
           jsonb_build_object('operator', %(operator)s::text)
           || CASE WHEN %(data)s::jsonb IS NULL THEN '{{}}'::jsonb
                   ELSE jsonb_build_object('data_changed', c.data IS DISTINCT FROM p.data,
                                           'previous_data', p.data) END
    FROM changed c JOIN previous p ON p.domain = c.domain AND p.command_id = c.command_id
), {batch_count_ctes(StatusChange("changed", old=_IN_TSQ_SQL, new="status"))}
{select_changes("changed", notify_sql(Channel.COMMAND, "c.domain"))}
"""

# Cancel and complete end the command for good: its one reply is written here.
_CANCEL_REPLIES = insert_replies(
    "changed",
    outcome=literal(ReplyOutcome.CANCELED),
    data="jsonb_build_object('reason', %(reason)s::text)",
)

CANCEL_FROM_TSQ = f"""
WITH changed AS (
    UPDATE triobus.command
    SET status = {literal(CommandStatus.CANCELED)}, lease_token = NULL, finished_at = now(),
        updated_at = now()
    WHERE {_IN_SCOPE}
    RETURNING domain, command_id, batch_id, status, reply_to, correlation_id
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, {literal(AuditEventType.OPERATOR_CANCEL)},
           jsonb_build_object('operator', %(operator)s::text, 'reason', %(reason)s::text)
    FROM changed
), replies AS (
    {_CANCEL_REPLIES}
), {batch_count_ctes(StatusChange("changed", old=_IN_TSQ_SQL, new="status"))}
{select_changes("changed")}
"""

_COMPLETE_REPLIES = insert_replies("changed", outcome=literal(ReplyOutcome.SUCCESS), data="result")

COMPLETE_FROM_TSQ = f"""
WITH changed AS (
    UPDATE triobus.command
    SET status = {literal(CommandStatus.COMPLETED)}, result = %(result)s::jsonb,
        lease_token = NULL, finished_at = now(), updated_at = now()
    WHERE {_IN_SCOPE}
    RETURNING domain, command_id, batch_id, status, reply_to, correlation_id, result
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, {literal(AuditEventType.OPERATOR_COMPLETE)},
           jsonb_build_object('operator', %(operator)s::text)
    FROM changed
), replies AS (
    {_COMPLETE_REPLIES}
), {batch_count_ctes(StatusChange("changed", old=_IN_TSQ_SQL, new="status"))}
{select_changes("changed")}
"""


class OperatorAction(enum.StrEnum):
    """What an operator does to a command in the TSQ."""

    RETRY = "RETRY"
    CANCEL = "CANCEL"
    COMPLETE = "COMPLETE"

    @property
    def statement(self) -> str:
        return _STATEMENTS[self]


_STATEMENTS = {
    OperatorAction.RETRY: RETRY_FROM_TSQ,
    OperatorAction.CANCEL: CANCEL_FROM_TSQ,
    OperatorAction.COMPLETE: COMPLETE_FROM_TSQ,
}


def _scope(
    domain: str,
    command_id: UUID | None,
    command_type: str | None,
    batch_id: UUID | None = None,
) -> dict[str, Any]:
    return {
        "domain": domain,
        "command_id": command_id,
        "command_type": command_type,
        "batch_id": batch_id,
    }


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


async def lock_command_status(
    conn: Connection, domain: str, command_id: UUID
) -> CommandStatus | None:
    """Lock the command row for this transaction; return its status (None if unknown)."""
    row = await conn.fetch_one(LOCK_COMMAND_STATUS, (domain, command_id))
    return None if row is None else CommandStatus(row["status"])


async def lock_batch(conn: Connection, domain: str, batch_id: UUID) -> bool | None:
    """Lock the batch row for this transaction; return whether it was canceled (None if
    unknown)."""
    row = await conn.fetch_one(LOCK_BATCH, (domain, batch_id))
    return None if row is None else bool(row["canceled"])


async def apply_operator_action(
    conn: Connection,
    action: OperatorAction,
    domain: str,
    *,
    command_id: UUID | None = None,
    command_type: str | None = None,
    batch_id: UUID | None = None,
    operator: str | None = None,
    reason: str | None = None,
    result_json: str | None = None,
    data_json: str | None = None,
) -> list[CommandChange]:
    """Apply `action` to the TSQ commands in scope (one command, or a domain, type or batch
    in bulk). `data_json` is a retry's corrected data (None: unchanged)."""
    rows = await conn.fetch_all(
        action.statement,
        {
            **_scope(domain, command_id, command_type, batch_id),
            "operator": operator,
            "reason": reason,
            "result": result_json,
            "data": data_json,
        },
    )
    return CommandChange.from_rows(rows)
