"""The hot and operator queries are served by their indexes, never by scanning every command."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from triobus.persistence.driver import DriverConnection, connect
from triobus.persistence.gauges import GAUGES_LOCK_KEY, REFRESH_GAUGES
from triobus.persistence.queue import (
    ACK_IF_CLAIMED,
    CLAIM_COMMANDS,
    EXTEND_LEASES_IF_CLAIMED,
    RELEASE_IF_CLAIMED,
)
from triobus.persistence.troubleshooting import COUNT_TROUBLESHOOTING, SELECT_TROUBLESHOOTING


@pytest.fixture
async def conn(triobus_dsn: str) -> AsyncIterator[DriverConnection]:
    connection = await connect(triobus_dsn)
    # A queue just filled by a bulk insert, its statistics from when it was empty: the
    # state in which a guard naming the status picked the partial claim index.
    await connection.execute("ANALYZE triobus.command")
    await connection.execute(
        "INSERT INTO triobus.command (domain, command_id, command_type, data, correlation_id,"
        " status) SELECT 'd', gen_random_uuid(), 'T', '{}', gen_random_uuid(),"
        " CASE WHEN n % 100 = 0 THEN 'IN_TROUBLESHOOTING_QUEUE' ELSE 'PENDING' END"
        " FROM generate_series(1, 5000) AS n"
    )
    # Small tables are cheapest to scan: forbid it to see what the indexes can serve.
    await connection.execute("SET enable_seqscan = off")
    try:
        yield connection
    finally:
        await connection.close()


async def plan(conn: DriverConnection, sql: str, params: dict[str, Any]) -> str:
    rows = await conn.fetch_all("EXPLAIN " + sql, params)
    return "\n".join(row["QUERY PLAN"] for row in rows)


async def test_claim_uses_the_partial_claimable_index(conn: DriverConnection) -> None:
    text = await plan(
        conn,
        CLAIM_COMMANDS,
        {"domain": "d", "limit": 10, "visibility_timeout": 30.0, "default_max_attempts": 3},
    )
    assert "command_claimable" in text
    assert "Seq Scan on command" not in text


@pytest.mark.parametrize("sql", [SELECT_TROUBLESHOOTING, COUNT_TROUBLESHOOTING])
async def test_troubleshooting_queries_use_the_partial_tsq_index(
    conn: DriverConnection, sql: str
) -> None:
    params = {
        "domain": "d",
        "command_id": None,
        "command_type": None,
        "batch_id": None,
        "limit": 50,
        "offset": 0,
    }
    text = await plan(conn, sql, params)
    assert "command_troubleshooting" in text
    assert "Seq Scan on command" not in text


@pytest.mark.parametrize("sql", [ACK_IF_CLAIMED, EXTEND_LEASES_IF_CLAIMED, RELEASE_IF_CLAIMED])
async def test_lease_guarded_writes_find_commands_by_primary_key(
    conn: DriverConnection, sql: str
) -> None:
    """Not through the partial claim index: with many pending commands that scans them all."""
    ids = [uuid.uuid4() for _ in range(8)]
    params: dict[str, Any] = {
        "domain": ["d"] * 8 if sql is ACK_IF_CLAIMED else "d",
        "command_id": ids,
        "command_ids": ids,
        "lease_token": ids,
        "lease_tokens": ids,
        "batch_id": [None] * 8,
        "status": ["COMPLETED"] * 8,
        "event": ["COMPLETED"] * 8,
        "retry_delay": [None] * 8,
        "result": [None] * 8,
        "error_type": [None] * 8,
        "error_code": [None] * 8,
        "error_message": [None] * 8,
        "error_details": [None] * 8,
        "visibility_timeout": 30.0,
    }
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    text = await plan(conn, sql, params)
    assert "command_pkey" in text
    assert "command_claimable" not in text


async def test_the_gauges_read_only_partial_indexes_of_open_and_recently_finished_commands(
    conn: DriverConnection,
) -> None:
    text = await plan(conn, REFRESH_GAUGES, {"key": GAUGES_LOCK_KEY, "max_age": 0.0})
    assert "command_claimable" in text and "command_troubleshooting" in text
    assert "command_finished " in text and "command_finished_member" in text
    assert "Seq Scan on command" not in text
