"""SQL for the audit trail (append-only; rows are written by the statements that change state)."""

from __future__ import annotations

from uuid import UUID

from triobus.persistence.driver import Connection
from triobus.persistence.records import AuditEvent


async def select_audit_trail(
    conn: Connection, subject_id: UUID, domain: str | None
) -> list[AuditEvent]:
    """Events about one command (or batch), in the order they happened."""
    rows = await conn.fetch_all(
        "SELECT * FROM triobus.audit WHERE subject_id = %(subject_id)s"
        " AND (%(domain)s::text IS NULL OR domain = %(domain)s) ORDER BY audit_id",
        {"subject_id": subject_id, "domain": domain},
    )
    return [AuditEvent.from_row(row) for row in rows]
