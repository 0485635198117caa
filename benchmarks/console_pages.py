"""How long each page of the web console takes with 1,000,000 commands stored.

    python benchmarks/console_pages.py [--commands 1000000] [--requests 20]

Uses $TRIOBUS_DSN when set, else starts its own embedded PostgreSQL. Fills a new database
by SQL: four domains (60/25/10/5 % of the commands), 96 % completed, 2 % pending, 1 % in
the troubleshooting queue, 0.5 % each failed and canceled; a fifth of the commands in
1,000-member batches; three audit events per command; a reply for one in ten. Then asks
for each page `--requests` times through the console's ASGI app (the whole request:
authentication, queries, rendering) and prints the median, the 95th percentile and the
slowest, in milliseconds. The overview reads the gauges' snapshot; refreshing it (once
per 5 s, by one process) is timed on its own.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import time
import uuid
from contextlib import AsyncExitStack

import httpx
import trio

from triobus.actors import open_runtime
from triobus.actors.console import ConsoleSettings, console_app
from triobus.persistence.databases import create_database, drop_database, migrate
from triobus.persistence.driver import connect
from triobus.persistence.embedded import open_embedded_postgres
from triobus.persistence.gauges import GAUGES_LOCK_KEY, REFRESH_GAUGES

BATCH_SIZE = 1_000
DOMAINS = (("orders", 0.60), ("billing", 0.25), ("email", 0.10), ("reports", 0.05))
# status by n mod 200: 4 pending, 2 TSQ, 1 failed, 1 canceled, the rest completed
STATUS = """CASE WHEN mod(n, 200) < 4 THEN 'PENDING'
    WHEN mod(n, 200) < 6 THEN 'IN_TROUBLESHOOTING_QUEUE' WHEN mod(n, 200) = 6 THEN 'FAILED'
    WHEN mod(n, 200) = 7 THEN 'CANCELED' ELSE 'COMPLETED' END"""
FILL = f"""
WITH made AS (
    INSERT INTO triobus.command (domain, command_id, command_type, status, data,
        correlation_id, reply_to, batch_id, attempts, result, error_type, error_message,
        created_at, updated_at, finished_at, visible_at)
    SELECT %(domain)s, gen_random_uuid(),
        CASE WHEN mod(n, 20000) = 0 THEN 'Rare' ELSE 'Type' || (mod(n, 10)) END, s.status,
        jsonb_build_object('order', n, 'note', 'a realistic payload of some size'),
        gen_random_uuid(), CASE WHEN mod(n, 10) = 0 THEN %(domain)s || '-replies' END,
        CASE WHEN n <= %(in_batches)s THEN b.batch_id END, 1,
        CASE WHEN s.status = 'COMPLETED' THEN '{{"ok": true}}'::jsonb END,
        CASE WHEN s.status = 'IN_TROUBLESHOOTING_QUEUE' THEN 'Timeout' END,
        CASE WHEN s.status = 'IN_TROUBLESHOOTING_QUEUE' THEN 'the upstream did not answer' END,
        t.at, t.at, CASE WHEN s.status IN ('COMPLETED', 'FAILED', 'CANCELED') THEN t.at END,
        t.at
    FROM generate_series(1, %(count)s) AS n
    CROSS JOIN LATERAL (SELECT {STATUS} AS status) s
    CROSS JOIN LATERAL (SELECT now() - make_interval(secs => (%(count)s - n) * 0.5) AS at) t
    LEFT JOIN LATERAL (
        SELECT batch_id FROM triobus.batch WHERE domain = %(domain)s
        ORDER BY batch_id OFFSET (n - 1) / {BATCH_SIZE} LIMIT 1) b ON n <= %(in_batches)s
    RETURNING domain, command_id, reply_to, correlation_id, status
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT m.domain, m.command_id, e, '{{"attempt": 1}}'::jsonb
    FROM made m CROSS JOIN unnest(ARRAY['SENT', 'RECEIVED', 'COMPLETED']) e
)
INSERT INTO triobus.reply (queue, domain, command_id, correlation_id, outcome, data)
SELECT reply_to, domain, command_id, correlation_id, 'SUCCESS', '{{"ok": true}}'::jsonb
FROM made WHERE reply_to IS NOT NULL AND status = 'COMPLETED'
"""
BATCHES = f"""
INSERT INTO triobus.batch (domain, batch_id, name, status, total_count, completed_count,
    created_at, started_at, completed_at)
SELECT %(domain)s, gen_random_uuid(), 'nightly ' || n, 'COMPLETED', {BATCH_SIZE}, {BATCH_SIZE},
    now() - make_interval(hours => n), now() - make_interval(hours => n),
    now() - make_interval(hours => n)
FROM generate_series(1, %(batches)s) AS n
"""
# The batches' counts, made true to their members (the fill's statuses are mixed).
RECOUNT = """
UPDATE triobus.batch b SET
    completed_count = c.completed, failed_count = c.failed, canceled_count = c.canceled,
    in_troubleshooting_count = c.tsq, total_count = c.total,
    status = CASE WHEN c.completed + c.failed + c.canceled = c.total
        THEN (CASE WHEN c.failed > 0 THEN 'COMPLETED_WITH_FAILURES' ELSE 'COMPLETED' END)
        ELSE 'IN_PROGRESS' END,
    completed_at = CASE WHEN c.completed + c.failed + c.canceled = c.total THEN b.completed_at END
FROM (
    SELECT domain, batch_id, count(*) AS total,
        count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
        count(*) FILTER (WHERE status = 'FAILED') AS failed,
        count(*) FILTER (WHERE status = 'CANCELED') AS canceled,
        count(*) FILTER (WHERE status = 'IN_TROUBLESHOOTING_QUEUE') AS tsq
    FROM triobus.command WHERE batch_id IS NOT NULL GROUP BY domain, batch_id
) c WHERE b.domain = c.domain AND b.batch_id = c.batch_id
"""


async def fill(dsn: str, commands: int) -> None:
    conn = await connect(dsn)
    try:
        for domain, share in DOMAINS:
            count = int(commands * share)
            in_batches = count // 5 // BATCH_SIZE * BATCH_SIZE
            await conn.execute(BATCHES, {"domain": domain, "batches": in_batches // BATCH_SIZE})
            for start in range(0, count, 100_000):  # in chunks: one statement's memory
                chunk = min(100_000, count - start)
                await conn.execute(
                    FILL.replace(
                        "generate_series(1, %(count)s)",
                        f"generate_series({start + 1}, {start + chunk})",
                    ),
                    {"domain": domain, "count": count, "in_batches": in_batches},
                )
        await conn.execute(RECOUNT)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def sample_ids(dsn: str) -> dict[str, str]:
    conn = await connect(dsn)
    try:
        row = await conn.fetch_one(
            "SELECT (SELECT command_id FROM triobus.command WHERE domain = 'orders'"
            "   ORDER BY created_at DESC LIMIT 1 OFFSET 5000) AS command_id,"
            " (SELECT correlation_id FROM triobus.command WHERE domain = 'orders'"
            "   ORDER BY created_at DESC LIMIT 1 OFFSET 7000) AS correlation_id,"
            " (SELECT batch_id FROM triobus.batch WHERE domain = 'orders' LIMIT 1) AS batch_id"
        )
        assert row is not None
        return {k: str(v) for k, v in row.items()}
    finally:
        await conn.close()


async def measure(dsn: str, requests: int) -> None:
    ids = await sample_ids(dsn)
    pages = {
        "overview": "/",
        "commands": "/commands?domain=orders",
        "commands, page 20": "/commands?domain=orders&offset=1000",
        "commands, TSQ status": "/commands?domain=orders&status=IN_TROUBLESHOOTING_QUEUE",
        "commands, CANCELED (0.5 %)": "/commands?domain=orders&status=CANCELED",
        "commands, rare type": "/commands?domain=orders&type=Rare",
        "commands, correlation": f"/commands?domain=orders&correlation_id={ids['correlation_id']}",
        "commands, batch": f"/commands?domain=orders&batch_id={ids['batch_id']}",
        "command detail": f"/commands/orders/{ids['command_id']}",
        "troubleshooting": "/tsq?domain=orders",
        "batches": "/batches?domain=orders",
        "batch detail": f"/batches/orders/{ids['batch_id']}",
        "replies": "/replies?queue=orders-replies",
        "metrics": "/metrics",
    }
    auth = "Basic " + base64.b64encode(b"bench:bench").decode()
    async with open_runtime(dsn, migrate=False, retention=None) as runtime:
        app = console_app(runtime, ConsoleSettings(users={"bench": "bench"}))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", headers={"Authorization": auth}
        ) as client:
            refresh_ms = []
            async with runtime.pool.connection() as conn:
                for _ in range(5):
                    started = time.perf_counter()
                    await conn.fetch_one(REFRESH_GAUGES, {"key": GAUGES_LOCK_KEY, "max_age": 0.0})
                    refresh_ms.append((time.perf_counter() - started) * 1000)
            print(
                f"{'page':<30} {'median':>8} {'p95':>8} {'slowest':>8}  (ms, {requests} requests)"
            )
            worst = 0.0
            for name, path in pages.items():
                timings = []
                for _ in range(requests):
                    started = time.perf_counter()
                    response = await client.get(path)
                    timings.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, (path, response.status_code)
                timings.sort()
                p95 = timings[max(0, int(len(timings) * 0.95) - 1)]
                worst = max(worst, statistics.median(timings))
                print(
                    f"{name:<30} {statistics.median(timings):>8.1f} {p95:>8.1f} {timings[-1]:>8.1f}"
                )
            print(f"{'gauges refresh (background)':<30} {statistics.median(refresh_ms):>8.1f}")
            print(f"slowest median: {worst:.1f} ms")
        app.state.console.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commands", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    async with AsyncExitStack() as stack:
        admin = os.environ.get("TRIOBUS_DSN") or ""
        if not admin:
            admin = await stack.enter_async_context(open_embedded_postgres())
        name = f"triobus_console_{uuid.uuid4().hex[:8]}"
        dsn = await create_database(admin, name)
        stack.push_async_callback(drop_database, admin, name)
        await migrate(dsn)
        started = time.perf_counter()
        await fill(dsn, args.commands)
        print(f"filled {args.commands:,} commands in {time.perf_counter() - started:.0f} s")
        await measure(dsn, args.requests)


if __name__ == "__main__":
    trio.run(main)
