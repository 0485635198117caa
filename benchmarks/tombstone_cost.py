"""What keeping a tombstone per pruned command would cost (the idempotency decision in
the README's "Retention"): a prune chunk's time with and without inserting each pruned
(domain, command_id) into a tombstone table, and the bytes per tombstone.

    python benchmarks/tombstone_cost.py

Uses $TRIOBUS_DSN when set, else starts its own embedded PostgreSQL. Three rounds, each
pruning 100 chunks of 1,000 finished commands (three audit rows each) both ways, in
alternating order; then 1,000,000 tombstones are measured with their primary key.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from contextlib import AsyncExitStack

import trio

from triobus.persistence.databases import create_database, drop_database, migrate
from triobus.persistence.driver import connect
from triobus.persistence.embedded import open_embedded_postgres
from triobus.persistence.retention import PRUNE_COMMANDS

CHUNK, CHUNKS, ROUNDS, TOMBSTONES = 1_000, 100, 3, 1_000_000
FILL = """
WITH made AS (
    INSERT INTO triobus.command (domain, command_id, command_type, status, data,
        correlation_id, attempts, result, created_at, updated_at, finished_at)
    SELECT 'bench', gen_random_uuid(), 'Noop', 'COMPLETED', '{}'::jsonb, gen_random_uuid(),
        1, '{}'::jsonb, now() - interval '1 day', now() - interval '1 day',
        now() - interval '1 day'
    FROM generate_series(1, %s)
    RETURNING command_id)
INSERT INTO triobus.audit (domain, subject_id, event_type, details)
SELECT 'bench', m.command_id, e, '{}'::jsonb
FROM made m CROSS JOIN unnest(ARRAY['SENT', 'RECEIVED', 'COMPLETED']) e
"""
DELETE_COMMANDS = """DELETE FROM triobus.command c USING doomed m
    WHERE c.domain = m.domain AND c.command_id = m.command_id
    RETURNING 1"""
WITH_TOMBSTONES = PRUNE_COMMANDS.replace(
    DELETE_COMMANDS,
    DELETE_COMMANDS.replace("RETURNING 1", "RETURNING c.domain, c.command_id")
    + "\n), tombstones AS (\n    INSERT INTO tombstone SELECT domain, command_id FROM"
    " commands_gone RETURNING 1",
)
assert WITH_TOMBSTONES != PRUNE_COMMANDS, "the prune statement changed: update this script"


async def main() -> None:
    async with AsyncExitStack() as stack:
        admin = os.environ.get("TRIOBUS_DSN") or ""
        if not admin:
            admin = await stack.enter_async_context(open_embedded_postgres())
        name = f"triobus_tombstones_{uuid.uuid4().hex[:8]}"
        dsn = await create_database(admin, name)
        stack.push_async_callback(drop_database, admin, name)
        await migrate(dsn)
        conn = await connect(dsn)
        stack.push_async_callback(conn.close)
        await conn.execute(
            "CREATE TABLE tombstone (domain text, command_id uuid,"
            " pruned_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (domain, command_id))"
        )
        kinds = {"plain": PRUNE_COMMANDS, "tombstones": WITH_TOMBSTONES}
        chunk_ms: dict[str, list[float]] = {kind: [] for kind in kinds}
        for round_ in range(ROUNDS):
            for kind in sorted(kinds, reverse=round_ % 2 == 1):
                await conn.execute(FILL, (CHUNK * CHUNKS,))
                await conn.execute("VACUUM ANALYZE triobus.command, triobus.audit")
                started = time.perf_counter()
                for _ in range(CHUNKS):
                    await conn.fetch_one(
                        kinds[kind], {"domain": "bench", "older_than": 3600.0, "limit": CHUNK}
                    )
                chunk_ms[kind].append((time.perf_counter() - started) / CHUNKS * 1000)
        plain, tombstones = (statistics.median(chunk_ms[k]) for k in kinds)
        rounds = {k: [round(ms, 1) for ms in v] for k, v in chunk_ms.items()}
        print(f"ms per chunk of {CHUNK:,} commands, per round: {rounds}")
        print(
            f"median: {plain:.2f} ms plain, {tombstones:.2f} ms with tombstones"
            f" ({tombstones / plain - 1:+.0%})"
        )
        await conn.execute(
            "INSERT INTO tombstone (domain, command_id) SELECT 'bench', gen_random_uuid()"
            " FROM generate_series(1, %s - (SELECT count(*) FROM tombstone))",
            (TOMBSTONES,),
        )
        await conn.execute("VACUUM ANALYZE tombstone")
        row = await conn.fetch_one("SELECT pg_total_relation_size('tombstone') AS size")
        assert row is not None
        size = int(row["size"])
        print(
            f"{TOMBSTONES:,} tombstones: {size / 2**20:.0f} MB with their primary key,"
            f" {size / TOMBSTONES:.0f} bytes each"
        )


if __name__ == "__main__":
    trio.run(main)
