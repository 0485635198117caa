"""The triobus benchmark suite: runs every scenario and writes benchmarks/RESULTS.md.

    python benchmarks/run.py [--runs 3] [--long]      (./run bench runs it)

Uses $TRIOBUS_DSN when set, else starts its own embedded PostgreSQL (durable settings,
plus pg_stat_statements to count statements). Worker processes are real OS processes
running benchmarks/worker_process.py. Scenarios:

* throughput: one batch of 20,000 no-op commands, 1 and 2 worker processes x concurrency
  16 and 64, timed from create_batch until on_complete runs in this process;
* cost per command: statements (pg_stat_statements calls, BEGIN/COMMIT included) and
  row writes per command on the happy path, for one such batch;
* latency: single sends at a steady rate; send -> handler start and send -> COMPLETED,
  from the audit trail's timestamps (one clock: the database's);
* callback latency: the BATCH_COMPLETED commit in a worker process -> the callback
  running in this process, over many one-command batches;
* create_batch: 100,000 commands, seconds and the creating process's peak RSS;
* memory (--long): worker RSS at start, after 100k and after 1M commands.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from triobus.actors import BatchCommand, BatchMetadata, Runtime, open_runtime
from triobus.persistence.databases import create_database, drop_database
from triobus.persistence.driver import connect
from triobus.persistence.embedded import open_embedded_postgres
from triobus.persistence.schema import migrate

HERE = Path(__file__).parent
RESULTS = HERE / "RESULTS.md"
WORKER = HERE / "worker_process.py"
SERVER_SETTINGS = {"shared_preload_libraries": "pg_stat_statements"}


def summary(values: Sequence[float], digits: int = 0) -> str:
    ordered = sorted(values)
    fmt = f"{{:,.{digits}f}}"
    return (
        f"{fmt.format(statistics.median(ordered))} "
        f"({fmt.format(ordered[0])}-{fmt.format(ordered[-1])})"
    )


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


@asynccontextmanager
async def worker_processes(
    dsn: str, domain: str, count: int, concurrency: int
) -> AsyncIterator[list[trio.Process]]:
    """`count` worker processes, each claiming when this yields; killed on exit."""
    processes = []
    try:
        for _ in range(count):
            process = await trio.lowlevel.open_process(
                [sys.executable, str(WORKER), dsn, domain, str(concurrency)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            processes.append(process)
            await read_line(process)  # "ready"
        yield processes
    finally:
        for process in processes:
            process.kill()
            await process.wait()


async def read_line(process: trio.Process) -> str:
    assert process.stdout is not None
    line = b""
    with trio.fail_after(60):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            if not chunk:
                raise RuntimeError(f"worker process ended (exit {process.poll()})")
            line += chunk
    return line.decode().strip()


async def worker_rss(process: trio.Process) -> int:
    assert process.stdin is not None
    await process.stdin.send_all(b"rss\n")
    return int((await read_line(process)).split()[1])


def noop_batch(count: int) -> list[BatchCommand]:
    return [BatchCommand("Noop", uuid.uuid4(), {}) for _ in range(count)]


async def run_batch(runtime: Runtime, domain: str, count: int) -> float:
    """Create a batch of `count` no-op commands; seconds until its callback ran."""
    done = trio.Event()

    async def on_complete(batch: BatchMetadata) -> None:
        done.set()

    started = time.perf_counter()
    await runtime.bus.create_batch(domain, noop_batch(count), on_complete=on_complete)
    with trio.fail_after(600):
        await done.wait()
    return time.perf_counter() - started


class Bench:
    def __init__(self, admin_dsn: str, runs: int) -> None:
        self.admin_dsn = admin_dsn
        self.runs = runs
        self.sections: list[str] = []

    @asynccontextmanager
    async def database(self) -> AsyncIterator[str]:
        """A fresh migrated database for one measurement, dropped after it."""
        name = f"triobus_bench_{uuid.uuid4().hex[:10]}"
        dsn = await create_database(self.admin_dsn, name)
        try:
            await migrate(dsn)
            yield dsn
        finally:
            await drop_database(self.admin_dsn, name)

    def section(self, title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        self.sections.append("\n".join(lines))
        print("\n".join(lines), flush=True)

    async def throughput(self) -> None:
        rows = []
        for processes in (1, 2):
            for concurrency in (16, 64):
                rates = []
                for _ in range(self.runs):
                    async with (
                        self.database() as dsn,
                        open_runtime(dsn, migrate=False) as runtime,
                        worker_processes(dsn, "bench", processes, concurrency),
                    ):
                        rates.append(20_000 / await run_batch(runtime, "bench", 20_000))
                rows.append([str(processes), str(concurrency), summary(rates)])
        self.section(
            "Throughput: one batch of 20,000 no-op commands, create_batch → on_complete",
            ["worker processes", "concurrency", "commands/s, median (min-max)"],
            rows,
        )

    async def cost_per_command(self) -> None:
        count = 20_000
        async with self.database() as dsn, open_runtime(dsn, migrate=False) as runtime:
            conn = await connect(dsn)
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                async with worker_processes(dsn, "bench", 1, 64):
                    before = await self._writes(conn)
                    await conn.execute("SELECT pg_stat_statements_reset()")
                    await run_batch(runtime, "bench", count)
                    calls = await conn.fetch_all(
                        "SELECT query, calls FROM pg_stat_statements s"
                        " JOIN pg_database d ON d.oid = s.dbid"
                        " WHERE d.datname = current_database()"
                        " AND query NOT ILIKE '%pg_stat_statements%'"
                        " ORDER BY calls DESC"
                    )
                    after = await self._writes(conn)
            finally:
                await conn.close()
        total = sum(int(r["calls"]) for r in calls)
        rows = [["all statements (round trips)", f"{total:,}", f"{total / count:.3f}"]]
        rows += [
            [_first_words(r["query"]), f"{int(r['calls']):,}", f"{int(r['calls']) / count:.3f}"]
            for r in calls[:8]
        ]
        rows.append(
            [
                "row writes (inserts + updates)",
                f"{after - before:,}",
                f"{(after - before) / count:.2f}",
            ]
        )
        self.section(
            f"Cost per command: one batch of {count:,}, 1 worker process, concurrency 64",
            ["what", "total", "per command"],
            rows,
        )

    @staticmethod
    async def _writes(conn: Any) -> int:
        row = await conn.fetch_one(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) AS n FROM pg_stat_user_tables"
            " WHERE schemaname = 'triobus'"
        )
        return int(row["n"])

    async def latency(self, rate: float = 500.0, seconds: float = 10.0) -> None:
        async with (
            self.database() as dsn,
            open_runtime(dsn, migrate=False) as runtime,
            worker_processes(dsn, "bench", 1, 64),
        ):
            next_send = trio.current_time()
            for _ in range(int(rate * seconds)):
                await trio.sleep_until(next_send)
                next_send += 1 / rate
                await runtime.bus.send("bench", "Noop", uuid.uuid4(), {})
            conn = await connect(dsn)
            try:
                with trio.fail_after(120):
                    while True:
                        if await self._open(conn) == 0:
                            break
                        await trio.sleep(0.1)
                rows = await conn.fetch_all(
                    "SELECT subject_id,"
                    " max(occurred_at) FILTER (WHERE event_type = 'SENT') AS sent,"
                    " min(occurred_at) FILTER (WHERE event_type = 'RECEIVED') AS received,"
                    " max(occurred_at) FILTER (WHERE event_type = 'COMPLETED') AS completed"
                    " FROM triobus.audit GROUP BY subject_id"
                )
            finally:
                await conn.close()
        start = [(r["received"] - r["sent"]).total_seconds() * 1000 for r in rows]
        end = [(r["completed"] - r["sent"]).total_seconds() * 1000 for r in rows]
        self.section(
            f"Latency: single sends at {rate:.0f}/s for {seconds:.0f} s, 1 worker process,"
            " concurrency 64 (ms, from the audit trail's timestamps)",
            ["", "p50", "p99", "max"],
            [
                [name, f"{percentile(v, 0.5):.1f}", f"{percentile(v, 0.99):.1f}", f"{max(v):.1f}"]
                for name, v in (("send → handler start", start), ("send → COMPLETED", end))
            ],
        )

    @staticmethod
    async def _open(conn: Any) -> int:
        row = await conn.fetch_one(
            "SELECT count(*) AS n FROM triobus.command WHERE status IN ('PENDING', 'IN_PROGRESS')"
        )
        return int(row["n"])

    async def callback_latency(self, batches: int = 200) -> None:
        latencies = []
        async with (
            self.database() as dsn,
            open_runtime(dsn, migrate=False) as runtime,
            worker_processes(dsn, "bench", 1, 16),
        ):
            conn = await connect(dsn)
            try:
                for _ in range(batches):
                    latencies.append(await self._one_callback_latency(runtime, conn))
            finally:
                await conn.close()
        self.section(
            f"Callback latency: last command's commit in a worker process → callback here,"
            f" {batches} one-command batches (ms)",
            ["p50", "p99", "max"],
            [
                [
                    f"{percentile(latencies, 0.5):.1f}",
                    f"{percentile(latencies, 0.99):.1f}",
                    f"{max(latencies):.1f}",
                ]
            ],
        )

    @staticmethod
    async def _one_callback_latency(runtime: Runtime, conn: Any) -> float:
        called: list[datetime] = []
        done = trio.Event()

        async def on_complete(batch: BatchMetadata) -> None:
            called.append(datetime.now(UTC))
            done.set()

        batch_id = await runtime.bus.create_batch("bench", noop_batch(1), on_complete=on_complete)
        with trio.fail_after(30):
            await done.wait()
        row = await conn.fetch_one(
            "SELECT occurred_at FROM triobus.audit WHERE subject_id = %s"
            " AND event_type = 'BATCH_COMPLETED'",
            (batch_id,),
        )
        return float((called[0] - row["occurred_at"]).total_seconds() * 1000)

    async def create_batch(self) -> None:
        seconds, peaks = [], []
        for _ in range(self.runs):
            async with self.database() as dsn:
                result = await trio.run_process(
                    [sys.executable, str(HERE / "create_batch.py"), dsn, "100000"],
                    capture_stdout=True,
                )
                elapsed, peak = result.stdout.decode().split()
                seconds.append(float(elapsed))
                peaks.append(int(peak) / 1024)
        self.section(
            "create_batch: 100,000 commands in one call (separate process)",
            ["seconds", "peak RSS of the process (MiB)"],
            [[summary(seconds, 2), summary(peaks)]],
        )

    async def memory(self) -> None:
        rows = []
        async with (
            self.database() as dsn,
            open_runtime(dsn, migrate=False) as runtime,
            worker_processes(dsn, "bench", 1, 64) as (process,),
        ):
            rows.append(["at start", f"{await worker_rss(process) / 2**20:.1f}"])
            done = 0
            for mark in (100_000, 1_000_000):
                while done < mark:
                    await run_batch(runtime, "bench", 50_000)
                    done += 50_000
                rows.append(
                    [f"after {mark:,} commands", f"{await worker_rss(process) / 2**20:.1f}"]
                )
        self.section("Memory: worker process RSS (MiB)", ["when", "RSS"], rows)


def _first_words(query: str) -> str:
    words = " ".join(query.split())
    return (words[:60] + "…") if len(words) > 60 else words


def machine() -> str:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return (
        f"{os.cpu_count()} cores, {pages / 2**30:.0f} GiB, {platform.platform()},"
        f" Python {platform.python_version()}"
    )


async def main(runs: int, long: bool) -> None:
    async with AsyncExitStack() as stack:
        dsn = os.environ.get("TRIOBUS_DSN")
        if not dsn:
            dsn = await stack.enter_async_context(open_embedded_postgres(settings=SERVER_SETTINGS))
        conn = await connect(dsn)
        try:
            version_row = await conn.fetch_one("SHOW server_version")
            assert version_row is not None
            version = version_row["server_version"]
            settings = await conn.fetch_all(
                "SELECT name, setting FROM pg_settings WHERE name IN"
                " ('fsync', 'synchronous_commit', 'shared_buffers', 'max_connections')"
            )
        finally:
            await conn.close()
        bench = Bench(dsn, runs)
        scenarios: list[Callable[[], Any]] = [
            bench.throughput,
            bench.cost_per_command,
            bench.latency,
            bench.callback_latency,
            bench.create_batch,
        ]
        if long:
            scenarios.append(bench.memory)
        for scenario in scenarios:
            await scenario()
    header = [
        "# triobus benchmark results",
        "",
        f"- machine: {machine()}",
        f"- PostgreSQL {version}: " + ", ".join(f"{s['name']}={s['setting']}" for s in settings),
        f"- command: `python benchmarks/run.py --runs {runs}{' --long' if long else ''}`"
        f" ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        f"- medians of {runs} runs with min-max where marked; client and server share the machine",
    ]
    RESULTS.write_text("\n".join(header) + "\n\n" + "\n\n".join(bench.sections) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--long", action="store_true", help="also the 1M-command memory run")
    options = parser.parse_args()
    trio.run(main, options.runs, options.long)
