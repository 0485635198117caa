"""Commands sent and claimed directly, to drive one worker role without a worker."""

from __future__ import annotations

import uuid

from triobus.persistence.commands import insert_command
from triobus.persistence.new_commands import new_command
from triobus.persistence.pool import ConnectionPool
from triobus.persistence.queue import ClaimedCommand, claim_commands


async def send(pool: ConnectionPool, count: int, domain: str = "d") -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    async with pool.connection() as conn:
        for command_id in ids:
            await insert_command(conn, new_command(domain, "T", command_id, {}))
    return ids


async def claim(
    pool: ConnectionPool, limit: int, *, visibility_timeout: float = 30.0
) -> list[ClaimedCommand]:
    async with pool.connection() as conn:
        return await claim_commands(
            conn, "d", limit=limit, visibility_timeout=visibility_timeout, default_max_attempts=3
        )


async def statuses(pool: ConnectionPool) -> dict[uuid.UUID, tuple[str, int]]:
    """Each command's (status, attempts)."""
    async with pool.connection() as conn:
        rows = await conn.fetch_all("SELECT command_id, status, attempts FROM triobus.command")
    return {r["command_id"]: (r["status"], r["attempts"]) for r in rows}
