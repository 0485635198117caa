"""SQL for the audit trail: append-only rows, written by the statements that change state.

Every state change writes its audit rows in the statement that makes it, so they commit
together; this module holds what more than one statement writes, and the trail's query.
"""

from __future__ import annotations

from uuid import UUID

from triobus.persistence.connection import Connection
from triobus.persistence.literals import literal
from triobus.persistence.records import AuditEvent, AuditEventType


def insert_sent_events(rows: str, *, of_batch: bool = False, follow_up: bool = False) -> str:
    """An INSERT of a SENT event for each new command of `rows` (a FROM clause, with its
    WHERE if any, over command columns); for the members of a batch, the details name it,
    and for a batch's follow-up command, the batch and the event (from its data)."""
    batch_id = ",\n                              'batch_id', batch_id" if of_batch else ""
    if follow_up:
        batch_id = (
            ",\n                              'follow_up_of', data->'batch'->'batch_id',"
            "\n                              'follow_up_event', data->'batch'->'event'"
        )
    return f"""INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, {literal(AuditEventType.SENT)},
           jsonb_build_object('command_type', command_type, 'correlation_id', correlation_id,
                              'reply_to', reply_to, 'max_attempts', max_attempts,
                              'visible_at', visible_at{batch_id})
    FROM {rows}"""


SELECT_AUDIT_TRAIL = """
SELECT * FROM triobus.audit
WHERE subject_id = %(subject_id)s AND (%(domain)s::text IS NULL OR domain = %(domain)s)
ORDER BY audit_id
"""


async def select_audit_trail(
    conn: Connection, subject_id: UUID, domain: str | None
) -> list[AuditEvent]:
    """Events about one command (or batch), in the order they happened."""
    rows = await conn.fetch_all(SELECT_AUDIT_TRAIL, {"subject_id": subject_id, "domain": domain})
    return [AuditEvent.from_row(row) for row in rows]
