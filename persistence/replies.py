"""SQL for reply queues: replies are written with their command's terminal state, read in
order, and deleted when acknowledged."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from triobus.persistence.connection import Connection
from triobus.persistence.notifications import Channel, notify_sql
from triobus.persistence.records import Reply


def insert_replies(source: str, *, outcome: str, data: str, only_if: str | None = None) -> str:
    """An INSERT of the one reply of each command of CTE `source` sent with `reply_to`
    (`outcome`, `data` and `only_if` are SQL expressions over its columns). A second reply
    to a command is never written; each new reply NOTIFYs `Channel.REPLY` with its queue."""
    condition = "" if only_if is None else f" AND {only_if}"
    return f"""INSERT INTO triobus.reply (queue, domain, command_id, correlation_id, outcome, data)
    SELECT reply_to, domain, command_id, correlation_id,
           {outcome},
           {data}
    FROM {source}
    WHERE reply_to IS NOT NULL{condition}
    ON CONFLICT ON CONSTRAINT reply_once_per_command DO NOTHING
    RETURNING {notify_sql(Channel.REPLY, "queue")}"""


SELECT_REPLIES = """
SELECT * FROM triobus.reply WHERE queue = %s AND reply_id <> ALL(%s)
ORDER BY reply_id LIMIT %s
"""

SELECT_STORED_REPLY_IDS = """
SELECT reply_id FROM triobus.reply WHERE queue = %s AND reply_id = ANY(%s)
"""

DELETE_REPLIES = """
DELETE FROM triobus.reply WHERE queue = %s AND reply_id = ANY(%s)
"""


async def select_replies(
    conn: Connection, queue: str, *, limit: int, skip: Collection[int] = ()
) -> list[Reply]:
    """Unacknowledged replies of `queue` except those in `skip`, oldest first."""
    rows = await conn.fetch_all(SELECT_REPLIES, (queue, list(skip), limit))
    return [Reply.from_row(row) for row in rows]


async def stored_reply_ids(conn: Connection, queue: str, reply_ids: Collection[int]) -> set[int]:
    """Those of `reply_ids` that are still stored (not yet acknowledged)."""
    rows = await conn.fetch_all(SELECT_STORED_REPLY_IDS, (queue, list(reply_ids)))
    return {row["reply_id"] for row in rows}


async def delete_replies(conn: Connection, queue: str, reply_ids: Sequence[int]) -> int:
    """Acknowledge replies of `queue`; ids of other queues are left alone. Returns the count."""
    return await conn.execute(DELETE_REPLIES, (queue, list(reply_ids)))
