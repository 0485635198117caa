"""SQL for reply queues: replies are read in order and deleted when acknowledged."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from triobus.persistence.driver import Connection
from triobus.persistence.records import Reply


async def select_replies(
    conn: Connection, queue: str, *, limit: int, skip: Collection[int] = ()
) -> list[Reply]:
    """Unacknowledged replies of `queue` except those in `skip`, oldest first."""
    rows = await conn.fetch_all(
        "SELECT * FROM triobus.reply WHERE queue = %s AND reply_id <> ALL(%s)"
        " ORDER BY reply_id LIMIT %s",
        (queue, list(skip), limit),
    )
    return [Reply.from_row(row) for row in rows]


async def stored_reply_ids(conn: Connection, queue: str, reply_ids: Collection[int]) -> set[int]:
    """Those of `reply_ids` that are still stored (not yet acknowledged)."""
    rows = await conn.fetch_all(
        "SELECT reply_id FROM triobus.reply WHERE queue = %s AND reply_id = ANY(%s)",
        (queue, list(reply_ids)),
    )
    return {row["reply_id"] for row in rows}


async def delete_replies(conn: Connection, queue: str, reply_ids: Sequence[int]) -> int:
    """Acknowledge replies of `queue`; ids of other queues are left alone. Returns the count."""
    return await conn.execute(
        "DELETE FROM triobus.reply WHERE queue = %s AND reply_id = ANY(%s)",
        (queue, list(reply_ids)),
    )
