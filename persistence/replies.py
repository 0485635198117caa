"""SQL for reply queues: replies are read in order and deleted when acknowledged."""

from __future__ import annotations

from collections.abc import Sequence

from triobus.persistence.driver import Connection
from triobus.persistence.records import Reply


async def select_replies(
    conn: Connection, queue: str, *, limit: int, after_id: int = 0
) -> list[Reply]:
    """Unacknowledged replies of `queue` with an id above `after_id`, oldest first."""
    rows = await conn.fetch_all(
        "SELECT * FROM triobus.reply WHERE queue = %s AND reply_id > %s ORDER BY reply_id LIMIT %s",
        (queue, after_id, limit),
    )
    return [Reply.from_row(row) for row in rows]


async def delete_replies(conn: Connection, queue: str, reply_ids: Sequence[int]) -> int:
    """Acknowledge replies of `queue`; ids of other queues are left alone. Returns the count."""
    return await conn.execute(
        "DELETE FROM triobus.reply WHERE queue = %s AND reply_id = ANY(%s)",
        (queue, list(reply_ids)),
    )
