"""The hot and operator queries are served by their indexes, never by scanning every command."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from triobus.persistence.driver import Connection, connect
from triobus.persistence.queue import CLAIM_COMMANDS
from triobus.persistence.troubleshooting import COUNT_TROUBLESHOOTING, SELECT_TROUBLESHOOTING


@pytest.fixture
async def conn(triobus_dsn: str) -> AsyncIterator[Connection]:
    connection = await connect(triobus_dsn)
    # On an empty table a scan is always cheapest: forbid it to see what the indexes serve.
    await connection.execute("SET enable_seqscan = off")
    try:
        yield connection
    finally:
        await connection.close()


async def plan(conn: Connection, sql: str, params: dict[str, Any]) -> str:
    rows = await conn.fetch_all("EXPLAIN " + sql, params)
    return "\n".join(row["QUERY PLAN"] for row in rows)


async def test_claim_uses_the_partial_claimable_index(conn: Connection) -> None:
    text = await plan(
        conn,
        CLAIM_COMMANDS,
        {"domain": "d", "limit": 10, "visibility_timeout": 30.0, "default_max_attempts": 3},
    )
    assert "command_claimable" in text
    assert "Seq Scan on command" not in text


@pytest.mark.parametrize("sql", [SELECT_TROUBLESHOOTING, COUNT_TROUBLESHOOTING])
async def test_troubleshooting_queries_use_the_partial_tsq_index(
    conn: Connection, sql: str
) -> None:
    params = {"domain": "d", "command_id": None, "command_type": None, "limit": 50, "offset": 0}
    text = await plan(conn, sql, params)
    assert "command_troubleshooting" in text
    assert "Seq Scan on command" not in text
