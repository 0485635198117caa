"""Retention soak: commands flow through a worker while the pruner removes them after a
retention of seconds. Do the tables reach a plateau, and do claims slow down while the
pruner runs?

    python benchmarks/retention_soak.py [--commands 2000000] [--retention 5] [--window 20]

Uses $TRIOBUS_DSN when set, else starts its own embedded PostgreSQL (with
pg_stat_statements). A worker process (benchmarks/worker_process.py, 1 x 64) works the
no-op commands of domain "bench"; this process keeps about `BACKLOG` of them waiting, half
in batches of 1,000 (pruned whole) and half sent one by one, 500 per transaction. Windows
of `--window` seconds alternate: in one the pruner runs a round every second (as the
maintenance actor of a runtime does every `maintenance_interval`), in the next it does not,
so drift hits both alike. All the while a probe sends, claims and acknowledges one command
of domain "probe" every 20 ms, timing the claim statement (its connection already in
hand). At the end of each window it records each table's size with its indexes, and the
mean server time of the worker's claims in that window (pg_stat_statements).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from triobus.actors import BatchCommand, RetentionPolicy, Runtime, open_runtime
from triobus.actors.maintenance import Pruner
from triobus.persistence.commands import count_runnable
from triobus.persistence.connection import Connection
from triobus.persistence.databases import create_database, drop_database, migrate
from triobus.persistence.embedded import open_embedded_postgres
from triobus.persistence.queue import HandlerResult, Outcome, ack_if_claimed, claim_commands

WORKER = Path(__file__).with_name("worker_process.py")
SETTINGS = {"shared_preload_libraries": "pg_stat_statements"}
BACKLOG = 20_000
BATCH = 1_000
SENDS_PER_TRANSACTION = 500
PROBE_INTERVAL = 0.02
TABLES = ("command", "audit", "batch", "reply")
MB = 2**20


@attrs.define
class Window:
    pruning: bool
    claims: list[float] = attrs.Factory(list)  # the probe's claim statements, seconds
    command_rows: int = 0
    sizes: dict[str, int] = attrs.Factory(dict)
    worker_claim_ms: float | None = None
    pruned: int = 0


@asynccontextmanager
async def worker_process(dsn: str) -> AsyncIterator[None]:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(WORKER), dsn, "bench", "64"], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(60):
            line = b""
            while not line.endswith(b"\n"):
                line += await process.stdout.receive_some(1)
        yield
    finally:
        process.kill()
        await process.wait()


async def feed(runtime: Runtime, total: int, fed: list[int]) -> None:
    """Keep about BACKLOG commands of "bench" waiting until `total` were sent."""
    while fed[0] < total:
        async with runtime.pool.connection() as conn:
            waiting = await count_runnable(conn, "bench")
        if waiting >= BACKLOG:
            await trio.sleep(0.05)
            continue
        await runtime.bus.create_batch(
            "bench", [BatchCommand("Noop", uuid.uuid4(), {}) for _ in range(BATCH)]
        )
        async with runtime.transaction() as conn:
            for _ in range(SENDS_PER_TRANSACTION):
                await runtime.bus.send("bench", "Noop", uuid.uuid4(), {}, conn=conn)
        fed[0] += BATCH + SENDS_PER_TRANSACTION


async def probe(runtime: Runtime, windows: list[Window]) -> None:
    """Send, claim (timed) and acknowledge one "probe" command every PROBE_INTERVAL."""
    while True:
        await runtime.bus.send("probe", "Noop", uuid.uuid4(), {})
        async with runtime.pool.connection() as conn:
            started = time.perf_counter()
            claimed = await claim_commands(
                conn, "probe", limit=1, visibility_timeout=30.0, default_max_attempts=5
            )
            windows[-1].claims.append(time.perf_counter() - started)
            await ack_if_claimed(
                conn,
                [
                    HandlerResult(
                        domain=c.command.domain,
                        command_id=c.command.command_id,
                        lease_token=c.lease_token,
                        outcome=Outcome.COMPLETED,
                    )
                    for c in claimed
                ],
            )
        await trio.sleep(PROBE_INTERVAL)


async def prune_while(pruner: Pruner, deadline: float, window: Window) -> None:
    while trio.current_time() < deadline:
        report = await pruner.prune(wait=True)
        window.pruned += report.total.commands
        await trio.sleep(min(1.0, max(0.0, deadline - trio.current_time())))


async def scalar(conn: Connection, sql: str) -> Any:
    row = await conn.fetch_one(sql)
    assert row is not None
    return next(iter(row.values()))


async def close_window(conn: Connection, window: Window, statements: bool) -> None:
    window.command_rows = int(await scalar(conn, "SELECT count(*) FROM triobus.command"))
    for table in TABLES:
        window.sizes[table] = int(
            await scalar(conn, f"SELECT pg_total_relation_size('triobus.{table}')")
        )
    if statements:
        row = await conn.fetch_one(
            "SELECT sum(total_exec_time) / nullif(sum(calls), 0) AS ms FROM pg_stat_statements"
            " WHERE query LIKE 'WITH candidates AS%%' AND dbid = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())"
        )
        window.worker_claim_ms = None if row is None or row["ms"] is None else float(row["ms"])
        await conn.execute("SELECT pg_stat_statements_reset()")


def ms(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def report(windows: list[Window], args: argparse.Namespace, seconds: float) -> str:
    lines = [
        f"## Retention soak: {args.commands:,} commands, retention {args.retention:g} s,"
        f" windows of {args.window:g} s ({seconds:.0f} s)",
        "",
        "| window | pruner | commands pruned | command rows at the end | "
        + " | ".join(f"{t} MB" for t in TABLES)
        + " | probe claim p50 ms | probe claim p99 ms | worker claim mean ms |",
        "|" + "---|" * (8 + len(TABLES) - 1),
    ]
    for i, w in enumerate(windows):
        worker_ms = "-" if w.worker_claim_ms is None else f"{w.worker_claim_ms:.2f}"
        lines.append(
            f"| {i + 1} | {'on' if w.pruning else 'off'} | {w.pruned:,} | {w.command_rows:,} | "
            + " | ".join(f"{w.sizes[t] / MB:.0f}" for t in TABLES)
            + f" | {ms(w.claims, 0.5):.2f} | {ms(w.claims, 0.99):.2f} | {worker_ms} |"
        )
    on = [c for w in windows if w.pruning for c in w.claims]
    off = [c for w in windows if not w.pruning for c in w.claims]
    half = len(windows) // 2
    first = max(sum(w.sizes.values()) for w in windows[:half])
    last = max(sum(w.sizes.values()) for w in windows[half:])
    lines += [
        "",
        f"Probe claims: p99 {ms(on, 0.99):.2f} ms with the pruner running ({len(on):,} claims),"
        f" {ms(off, 0.99):.2f} ms without ({len(off):,}): ratio {ms(on, 0.99) / ms(off, 0.99):.2f};"
        f" p50 {ms(on, 0.5):.2f} / {ms(off, 0.5):.2f} ms.",
        f"Total size of the four tables with their indexes: at most {first / MB:.0f} MB in the"
        f" first half of the windows, at most {last / MB:.0f} MB in the second"
        f" ({last / first:.0%}).",
    ]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    async with AsyncExitStack() as stack:
        admin = os.environ.get("TRIOBUS_DSN") or ""
        if not admin:
            admin = await stack.enter_async_context(open_embedded_postgres(settings=SETTINGS))
        name = f"triobus_soak_{uuid.uuid4().hex[:8]}"
        dsn = await create_database(admin, name)
        stack.push_async_callback(drop_database, admin, name)
        await migrate(dsn)
        runtime = await stack.enter_async_context(
            open_runtime(dsn, migrate=False, retention=None, pool_size=8)
        )
        statements = True
        async with runtime.pool.connection() as conn:
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                await conn.execute("SELECT pg_stat_statements_reset()")
            except Exception as ex:  # a server without the library: no worker claim times
                print(f"no pg_stat_statements ({ex}): worker claim times are not recorded")
                statements = False
        pruner = Pruner(
            runtime.pool, RetentionPolicy(commands=args.retention, replies=args.retention)
        )
        windows: list[Window] = [Window(pruning=False)]
        fed = [0]
        started = time.perf_counter()
        async with worker_process(dsn), trio.open_nursery() as nursery:
            nursery.start_soon(feed, runtime, args.commands, fed)
            nursery.start_soon(probe, runtime, windows)
            while True:
                window = windows[-1]
                deadline = trio.current_time() + args.window
                if window.pruning:
                    await prune_while(pruner, deadline, window)
                else:
                    await trio.sleep_until(deadline)
                async with runtime.pool.connection() as conn:
                    await close_window(conn, window, statements)
                    done = fed[0] >= args.commands and not await count_runnable(conn, "bench")
                print(
                    f"window {len(windows)}: {window.command_rows:,} rows, fed {fed[0]:,}",
                    flush=True,
                )
                if done and len(windows) % 2 == 0:
                    break
                windows.append(Window(pruning=not window.pruning))
            nursery.cancel_scope.cancel()
        print(report(windows, args, time.perf_counter() - started))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commands", type=int, default=2_000_000)
    parser.add_argument("--retention", type=float, default=5.0, help="seconds")
    parser.add_argument("--window", type=float, default=20.0, help="seconds")
    trio.run(main, parser.parse_args())
