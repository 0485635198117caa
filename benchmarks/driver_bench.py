"""Driver micro-benchmark: the native Trio driver against the thread fallback.

Runs on $TRIOBUS_DSN when set, else on an embedded PostgreSQL started for the run.
For each driver and workload it reports ops/s, latency percentiles and client CPU per
op (time.process_time, threads included), for 1 task on 1 connection and 16 tasks
sharing a pool of 8, after a warm-up. Run: ./run bench  (or python benchmarks/driver_bench.py)
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import trio

from triobus.persistence.driver import DriverConnection, DriverKind
from triobus.persistence.embedded import open_embedded_postgres
from triobus.persistence.pool import open_pool

WARMUP = 300
OPS = int(os.environ.get("BENCH_OPS", "5000"))
SHAPES = [(1, 1), (16, 8)]  # (tasks, pool size)


async def select1(conn: DriverConnection) -> None:
    await conn.fetch_one("SELECT 1")


async def insert_autocommit(conn: DriverConnection) -> None:
    await conn.execute("INSERT INTO bench VALUES (%s, '{}')", (uuid.uuid4(),))


async def insert_in_transaction(conn: DriverConnection) -> None:
    async with conn.transaction():
        await conn.execute("INSERT INTO bench VALUES (%s, '{}')", (uuid.uuid4(),))


WORKLOADS: dict[str, Callable[[DriverConnection], Awaitable[None]]] = {
    "select1": select1,
    "insert_ac": insert_autocommit,
    "insert_tx": insert_in_transaction,
}


async def measure(
    dsn: str, driver: DriverKind, tasks: int, pool_size: int, op: Callable[[DriverConnection], Any]
) -> tuple[float, float, float, float]:
    async with open_pool(dsn, driver=driver, max_size=pool_size) as pool:
        latencies: list[float] = []

        async def worker(count: int, record: bool) -> None:
            for _ in range(count):
                start = time.perf_counter()
                async with pool.connection() as conn:
                    await op(conn)
                if record:
                    latencies.append(time.perf_counter() - start)

        async def run(total: int, record: bool) -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(tasks):
                    nursery.start_soon(worker, total // tasks, record)

        await run(WARMUP, record=False)
        cpu, wall = time.process_time(), time.perf_counter()
        await run(OPS, record=True)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    latencies.sort()
    p50 = statistics.median(latencies) * 1e6
    p99 = latencies[int(len(latencies) * 0.99)] * 1e6
    return len(latencies) / wall, p50, p99, cpu / len(latencies) * 1e6


async def main() -> None:
    async with AsyncExitStack() as stack:
        dsn = os.environ.get("TRIOBUS_DSN")
        if not dsn:
            dsn = await stack.enter_async_context(open_embedded_postgres())
        async with open_pool(dsn) as pool, pool.connection() as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS bench (id uuid PRIMARY KEY, payload jsonb,"
                " created_at timestamptz DEFAULT now())"
            )
        print(f"{OPS} ops per cell after {WARMUP} warm-up; python {sys.version.split()[0]}")
        print(
            f"{'workload':<10} {'tasks/pool':>10} {'driver':>7} {'ops/s':>8} "
            f"{'p50 µs':>8} {'p99 µs':>8} {'cpu µs/op':>10}"
        )
        for name, op in WORKLOADS.items():
            for tasks, pool_size in SHAPES:
                for driver in DriverKind:
                    rate, p50, p99, cpu = await measure(dsn, driver, tasks, pool_size, op)
                    print(
                        f"{name:<10} {f'{tasks}/{pool_size}':>10} {driver:>7} {rate:>8.0f} "
                        f"{p50:>8.0f} {p99:>8.0f} {cpu:>10.0f}"
                    )


if __name__ == "__main__":
    trio.run(main)
