"""The triobus benchmark suite: runs every scenario and writes benchmarks/RESULTS.md.

    python benchmarks/run.py [--runs 3] [--long] [--only peers,...] [--output FILE]
                             [--setting shared_buffers=1GB ...] [--hop-us 250]
    (./run bench runs it)

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
* sends: sends one after another on one connection, alone and inside the application's
  own transaction (one INSERT), through the bus and through the sync and asyncio producers
  (benchmarks/producer_sends.py, a process without Trio);
* create_batch: 100,000 commands, seconds and the creating process's peak RSS;
* batches: cancel_batch of a 100,000-command batch (seconds), and a batch of 20,000 no-op
  commands with its three follow-up commands against one without, same-round A/B;
* history (--long): a batch of 20,000 no-op commands (1 x 64) with 0, 1M and 5M finished
  commands (six audit rows each) already stored, one database per size filled once and
  every size measured in each round: commands/s, same-round ratios to the empty tables,
  and the claim's and ack's server time and blocks read;
* memory (--long): worker RSS at start, after 100k and after 1M commands;
* peers: the throughput scenario's 20,000 no-op jobs, processing phase only (enqueued
  first; timed from telling the idle, connected worker processes to start until all are
  done), for PgQueuer, Procrastinate and Oban (benchmarks/peers/*_peer.py, run with the
  python of the separate benchmark environment .venv-bench, which `./run bench` creates), for
  triobus itself measured the same way, and the pgbench ceiling for the equivalent SQL.

Scenario names for --only: throughput, transactional, cost, latency, callback, sends,
create_batch, batches, history, memory, peers.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import attrs
import trio
from psycopg.conninfo import conninfo_to_dict

from triobus.actors import (
    BatchCommand,
    BatchMetadata,
    FollowUpCommand,
    Runtime,
    new_command_id,
    open_runtime,
)
from triobus.persistence.databases import create_database, drop_database, migrate
from triobus.persistence.driver import connect
from triobus.persistence.embedded import (
    EmbeddedPostgresError,
    find_postgres_bin_dir,
    open_embedded_postgres,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for benchmarks.latency
from benchmarks.latency import latency_hop

HERE = Path(__file__).parent
RESULTS = HERE / "RESULTS.md"
WORKER = HERE / "worker_process.py"
PEERS = HERE / "peers"
BENCH_VENV = Path(os.environ.get("TRIOBUS_BENCH_VENV", HERE.parent / ".venv-bench"))
SERVER_SETTINGS = {"shared_preload_libraries": "pg_stat_statements"}
PEER_JOBS = 20_000
PEER_DEADLINE = 900.0  # seconds for one peer run, set-up included


def summary(values: Sequence[float], digits: int = 0) -> str:
    ordered = sorted(values)
    fmt = f"{{:,.{digits}f}}"
    return (
        f"{fmt.format(statistics.median(ordered))} "
        f"({fmt.format(ordered[0])}-{fmt.format(ordered[-1])})"
    )


def ratio_summary(values: Sequence[float], bases: Sequence[float]) -> str:
    """Same-round ratios as percentages: median (min-max)."""
    ratios = [v / b for v, b in zip(values, bases, strict=True)]
    return f"{statistics.median(ratios):.0%} ({min(ratios):.0%}-{max(ratios):.0%})"


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


@asynccontextmanager
async def worker_processes(
    dsn: str,
    domain: str,
    count: int,
    concurrency: int,
    gated: bool = False,
    prefetch: int = 0,
    transactional: bool = False,
) -> AsyncIterator[list[trio.Process]]:
    """`count` worker processes, each claiming when this yields; killed on exit.

    `gated`: connected but idle when this yields, claiming once sent a line "go".
    `transactional`: a transactional handler inserting one row, not a no-op.
    """
    processes = []
    try:
        for _ in range(count):
            process = await trio.lowlevel.open_process(
                [sys.executable, str(WORKER), dsn, domain, str(concurrency)]
                + (["gated"] if gated else [])
                + (["transactional"] if transactional else [])
                + ([str(prefetch)] if prefetch else []),
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


HISTORY_CHUNK = 500_000
AUDIT_PER_COMMAND = ("SENT", "RECEIVED", "RETRY_SCHEDULED", "RECEIVED", "COMPLETED", "SENT")


# A UUIDv7 in SQL (PostgreSQL 18 has uuidv7(); this works from 13 on): the time in ms
# over the first 48 bits of a random UUID, then the version bits set to 7.
UUID7_SQL = (
    "encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing"
    " substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)"
    " FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid"
)


async def fill_history(dsn: str, size: int, time_ordered: bool = False) -> None:
    """`size` COMPLETED commands of domain "bench", finished a day ago, with six audit rows
    each, written in SQL in chunks; then VACUUM ANALYZE. Their ids are random (uuid4), or
    with `time_ordered` UUIDv7, as `new_command_id` makes them."""
    command_id = UUID7_SQL if time_ordered else "gen_random_uuid()"
    conn = await connect(dsn)
    try:
        for start in range(0, size, HISTORY_CHUNK):
            n = min(HISTORY_CHUNK, size - start)
            await conn.execute(
                "WITH made AS ("
                " INSERT INTO triobus.command (domain, command_id, command_type, status, data,"
                "  correlation_id, attempts, result, created_at, updated_at, finished_at)"
                f" SELECT 'bench', {command_id}, 'Noop', 'COMPLETED', '{{}}'::jsonb,"
                "  gen_random_uuid(), 2, '{}'::jsonb, now() - interval '1 day',"
                "  now() - interval '1 day', now() - interval '1 day'"
                " FROM generate_series(1, %s)"
                " RETURNING command_id)"
                " INSERT INTO triobus.audit (domain, subject_id, event_type, details)"
                " SELECT 'bench', m.command_id, e.event_type, '{\"attempt\": 1}'::jsonb"
                " FROM made m CROSS JOIN unnest(%s::text[]) AS e(event_type)",
                (n, list(AUDIT_PER_COMMAND)),
            )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def _mean(timings: Sequence[Any], prefix: str, column: str) -> float:
    """Mean per call of pg_stat_statements' `column` (ms for the times) over the statements
    whose text starts with `prefix`."""
    matching = [t for t in timings if t["query"].lstrip().startswith(prefix)]
    calls = sum(int(t["calls"]) for t in matching)
    return sum(float(t[column]) for t in matching) / calls if calls else 0.0


@attrs.frozen
class HistorySample:
    """One measurement of the history scenario: commands/s, and the claim's and the ack's
    mean server time (ms) and blocks read (not found in shared_buffers) per statement."""

    rate: float
    claim_ms: float
    claim_reads: float
    ack_ms: float
    ack_reads: float


def noop_batch(count: int, new_id: Callable[[], uuid.UUID] = uuid.uuid4) -> list[BatchCommand]:
    return [BatchCommand("Noop", new_id(), {}) for _ in range(count)]


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
        # Medians of the throughput scenario, by (worker processes, concurrency).
        self.throughput_rates: dict[tuple[int, int], float] = {}

    @asynccontextmanager
    async def database(self, migrated: bool = True) -> AsyncIterator[str]:
        """A fresh (migrated) database for one measurement, dropped after it."""
        name = f"triobus_bench_{uuid.uuid4().hex[:10]}"
        dsn = await create_database(self.admin_dsn, name)
        try:
            if migrated:
                await migrate(dsn)
            yield dsn
        finally:
            await drop_database(self.admin_dsn, name)

    def section(
        self, title: str, header: Sequence[str], rows: Sequence[Sequence[str]], note: str = ""
    ) -> None:
        lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", note] if note else []
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
                self.throughput_rates[processes, concurrency] = statistics.median(rates)
        self.section(
            "Throughput: one batch of 20,000 no-op commands, create_batch → on_complete",
            ["worker processes", "concurrency", "commands/s, median (min-max)"],
            rows,
        )

    async def transactional(self, count: int = 10_000) -> None:
        """Transactional handlers (one INSERT each, committed with the completion) against
        no-op handlers and against the driver alone running the same transactions, the
        three in turn within each round, on one batch and on commands outside any batch."""
        rows = []
        for in_batch in (True, False):
            for concurrency in (16, 64):
                noop: list[float] = []
                transactional: list[float] = []
                floor: list[float] = []
                for _ in range(self.runs):
                    noop.append(await self._processing_rate(count, concurrency, False, in_batch))
                    transactional.append(
                        await self._processing_rate(count, concurrency, True, in_batch)
                    )
                    floor.append(await self._transaction_floor(count, concurrency))
                rows.append(
                    [
                        "one batch" if in_batch else "no batch",
                        str(concurrency),
                        summary(noop),
                        summary(transactional),
                        summary(floor),
                        ratio_summary(transactional, noop),
                        ratio_summary(transactional, floor),
                    ]
                )
        self.section(
            f"Transactional handlers: {count:,} commands, 1 worker process, processing phase",
            [
                "commands",
                "concurrency",
                "no-op handlers, commands/s",
                "transactional handlers (1 INSERT each), commands/s",
                "floor: BEGIN, 1 INSERT, COMMIT alone, transactions/s",
                "transactional ÷ no-op, same round",
                "transactional ÷ floor, same round",
            ],
            rows,
            "Timed from starting the connected, idle worker until every command is COMPLETED"
            " (polled every 50 ms). A transactional handler's attempt is its own transaction on"
            " its own connection (pool_size = concurrency + 2), four round trips: BEGIN, the"
            " handler's INSERT, the command row's lock (the lease check), then the completion"
            " (one command's COMPLETED, audit event and batch counts) and COMMIT pipelined;"
            " no-op handlers' results are written by the acker, many per"
            " statement. In one batch every completion also updates the batch's row and holds"
            " its lock until its COMMIT is flushed, so the batch's commands complete one"
            " commit at a time; outside a batch they commit side by side. The floor is"
            " benchmarks/transaction_floor.py: as many Trio tasks as handlers, each on its own"
            " pooled connection, running BEGIN, one INSERT, COMMIT and nothing of triobus:"
            " what one transaction per command reaches from one process on this machine.",
        )

    async def _transaction_floor(self, count: int, tasks: int) -> float:
        async with self.database() as dsn:
            result = await trio.run_process(
                [sys.executable, str(HERE / "transaction_floor.py"), dsn, str(tasks), str(count)],
                capture_stdout=True,
            )
        return float(result.stdout.decode())

    async def _processing_rate(
        self, count: int, concurrency: int, transactional: bool, in_batch: bool
    ) -> float:
        async with (
            self.database() as dsn,
            open_runtime(dsn, migrate=False) as runtime,
            worker_processes(
                dsn, "bench", 1, concurrency, gated=True, transactional=transactional
            ) as processes,
        ):
            batch_id = await runtime.bus.create_batch("bench", noop_batch(count))
            async with runtime.transaction() as conn:
                if not in_batch:  # the same commands, outside any batch
                    await conn.execute("UPDATE triobus.command SET batch_id = NULL")
                    await conn.execute("DELETE FROM triobus.batch WHERE batch_id = %s", (batch_id,))
            started = time.perf_counter()
            for process in processes:
                assert process.stdin is not None
                await process.stdin.send_all(b"go\n")
            async with runtime.pool.connection() as conn:
                while True:
                    row = await conn.fetch_one(
                        "SELECT count(*) AS n FROM triobus.command WHERE status = 'COMPLETED'"
                    )
                    if row is not None and row["n"] == count:
                        return count / (time.perf_counter() - started)
                    await trio.sleep(0.05)

    async def cost_per_command(self) -> None:
        count = 20_000
        async with self.database() as dsn:
            conn = await connect(dsn)
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                async with (
                    open_runtime(dsn, migrate=False) as runtime,
                    worker_processes(dsn, "bench", 1, 64),
                ):
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
                after = await self._flushed_writes(conn)
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

    async def _flushed_writes(self, conn: Any) -> int:
        """`_writes` once every backend that wrote has reported: backends send their table
        statistics at most once a second and at exit, so this runs after the workers and
        the runtime have disconnected, and waits for the figure to stop changing."""
        last = await self._writes(conn)
        with trio.fail_after(30):
            while True:
                await trio.sleep(1.5)
                now = await self._writes(conn)
                if now == last:
                    return now
                last = now

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

    async def sends(self, count: int = 2000) -> None:
        """Sends one after another on one connection: the bus's own, in the application's
        transaction after one INSERT of its own, and the producers' (outside Trio)."""
        rates: dict[str, list[float]] = {}
        for _ in range(self.runs):
            async with self.database() as dsn:
                for name, rate in (await self._trio_sends(dsn, count)).items():
                    rates.setdefault(f"trio {name}", []).append(rate)
                for mode in ("sync", "asyncio"):
                    result = await trio.run_process(
                        [sys.executable, str(HERE / "producer_sends.py"), dsn, str(count), mode],
                        capture_stdout=True,
                    )
                    for name, rate in json.loads(result.stdout.decode()).items():
                        rates.setdefault(f"{mode} {name}", []).append(rate)
        rows = []
        for api, label in (
            ("trio", "Trio: `bus.send` / `runtime.transaction()`"),
            ("sync", "sync: `producer.send` on psycopg.Connection"),
            ("asyncio", "asyncio: `producer.send_async` on psycopg.AsyncConnection"),
        ):
            alone = statistics.median(rates[f"{api} transaction_only"])
            joined = statistics.median(rates[f"{api} in_transaction"])
            single = statistics.median(rates[f"{api} autocommit"])
            rows.append(
                [
                    label,
                    summary(rates[f"{api} autocommit"]),
                    summary(rates[f"{api} transaction_only"]),
                    summary(rates[f"{api} in_transaction"]),
                    f"{1000 / joined - 1000 / alone:.2f} ({1000 / single:.2f})",
                ]
            )
        self.section(
            f"Sends: {count:,} one after another on one connection, each kind in turn",
            [
                "API",
                "sends/s, autocommit",
                "application transactions/s: BEGIN, 1 INSERT, COMMIT",
                "the same with a send in it",
                "ms the send adds to the transaction (ms of one send alone)",
            ],
            rows,
            "A send in the application's transaction adds one statement, its INSERT, to it;"
            " it costs what one send alone costs, less a commit.",
        )

    @staticmethod
    async def _trio_sends(dsn: str, count: int) -> dict[str, float]:
        async with open_runtime(dsn, migrate=False, pool_size=1) as runtime:
            async with runtime.transaction() as conn:
                await conn.execute("CREATE TABLE bench_order (id uuid PRIMARY KEY)")
            insert = "INSERT INTO bench_order VALUES (%s)"

            async def send() -> None:
                await runtime.bus.send("bench", "Noop", uuid.uuid4(), {})

            async def order_only() -> None:
                async with runtime.transaction() as conn:
                    await conn.execute(insert, (uuid.uuid4(),))

            async def order_and_send() -> None:
                async with runtime.transaction() as conn:
                    await conn.execute(insert, (uuid.uuid4(),))
                    await runtime.bus.send("bench", "Noop", uuid.uuid4(), {}, conn=conn)

            rates = {}
            for name, step in (
                ("autocommit", send),
                ("transaction_only", order_only),
                ("in_transaction", order_and_send),
            ):
                started = time.perf_counter()
                for _ in range(count):
                    await step()
                rates[name] = count / (time.perf_counter() - started)
            return rates

    async def create_batch(self) -> None:
        seconds, building, peaks = [], [], []
        for _ in range(self.runs):
            async with self.database() as dsn:
                result = await trio.run_process(
                    [sys.executable, str(HERE / "create_batch.py"), dsn, "100000"],
                    capture_stdout=True,
                )
                elapsed, built, peak = result.stdout.decode().split()
                seconds.append(float(elapsed))
                building.append(float(built))
                peaks.append(int(peak) / 1024)
        self.section(
            "create_batch: 100,000 commands in one call (separate process)",
            [
                "seconds in create_batch",
                "seconds building the inputs first",
                "peak RSS of the process (MiB)",
            ],
            [[summary(seconds, 2), summary(building, 2), summary(peaks)]],
            "The caller builds the 100,000 `BatchCommand`s (uuid4 ids, small JSON objects)"
            " before the clock starts; the second column is that time, not part of the first."
            " Runs before 2026-11-29 08:05 UTC built them lazily inside the timed call (0.4-0.5 s"
            " of the figure then reported). Peak RSS includes the inputs.",
        )

    async def batches(self, cancel_count: int = 100_000, count: int = 20_000) -> None:
        """cancel_batch of a big batch; a batch with follow-ups against one without."""
        cancel_seconds = []
        for _ in range(self.runs):
            async with self.database() as dsn, open_runtime(dsn, migrate=False) as runtime:
                batch_id = await runtime.bus.create_batch("bench", noop_batch(cancel_count))
                started = time.perf_counter()
                canceled = await runtime.bus.cancel_batch("bench", batch_id, reason="bench")
                cancel_seconds.append(time.perf_counter() - started)
                assert canceled == cancel_count
        without: list[float] = []
        with_follow_ups: list[float] = []
        for round_ in range(self.runs):
            for follow_ups in (False, True) if round_ % 2 == 0 else (True, False):
                rate = await self._batch_rate(count, 64, follow_ups)
                (with_follow_ups if follow_ups else without).append(rate)
        self.section(
            "Batches: cancel, and follow-up commands",
            [
                f"cancel_batch of {cancel_count:,} PENDING commands, seconds",
                f"{count:,} no-op commands (1 x 64), no follow-up, commands/s",
                "the same with on_complete, on_success and on_failure commands, commands/s",
                "with ÷ without, same round",
            ],
            [
                [
                    summary(cancel_seconds, 2),
                    summary(without),
                    summary(with_follow_ups),
                    ratio_summary(with_follow_ups, without),
                ]
            ],
            "The cancel is one transaction: the batch's cancel lock, its TSQ members' and its"
            " row's locks, then one statement that cancels every waiting member (an UPDATE and"
            " an audit row each) and completes the batch. The A/B"
            " alternates which batch goes first in each round; each is timed from starting the"
            " connected, idle worker process until the batch is complete (polled every 50 ms),"
            " so the follow-ups' own insertion (two commands, with the completion) is inside.",
        )

    async def _batch_rate(self, count: int, concurrency: int, follow_ups: bool) -> float:
        async with self.database() as dsn:
            return await self._batch_rate_on(dsn, count, concurrency, follow_ups)

    async def _batch_rate_on(
        self,
        dsn: str,
        count: int,
        concurrency: int,
        follow_ups: bool = False,
        new_id: Callable[[], uuid.UUID] = uuid.uuid4,
    ) -> float:
        """Commands/s of one gated worker process on a batch of `count` no-op commands,
        timed from "go" until the batch is complete."""
        report = (
            FollowUpCommand(domain="reports", command_type="Report", data={"to": "ops"})
            if follow_ups
            else None
        )
        async with (
            open_runtime(dsn, migrate=False, retention=None) as runtime,
            worker_processes(dsn, "bench", 1, concurrency, gated=True) as processes,
        ):
            batch_id = await runtime.bus.create_batch(
                "bench",
                noop_batch(count, new_id),
                on_complete_command=report,
                on_success_command=report,
                on_failure_command=report,
            )
            started = time.perf_counter()
            for process in processes:
                assert process.stdin is not None
                await process.stdin.send_all(b"go\n")
            while True:
                batch = await runtime.bus.get_batch("bench", batch_id)
                if batch is not None and batch.is_final:
                    elapsed = time.perf_counter() - started
                    break
                await trio.sleep(0.05)
            sent = await runtime.bus.query_commands(domain="reports")
            assert len(sent) == (2 if follow_ups else 0)
            return count / elapsed

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

    async def history(
        self, sizes: Sequence[int] = (0, 1_000_000, 5_000_000), count: int = 20_000
    ) -> None:
        """Throughput and the claim's and ack's server time with the tables holding
        `sizes` finished commands (and six audit rows each) of the same domain.

        One database per size, filled once; then each round measures every size once (in
        an order rotated each round), so the machine's drift hits all sizes alike, and each
        ratio is the median of the per-round ratios to the empty tables. After each
        measurement its batch is deleted again (and the tables vacuumed): every round
        starts from the same tables.
        """
        # (ids, size): random ids at every size, time-ordered ones empty and at the largest
        configs = [(False, size) for size in sizes] + [(True, sizes[0]), (True, sizes[-1])]
        samples: dict[tuple[bool, int], list[HistorySample]] = {c: [] for c in configs}
        async with AsyncExitStack() as stack:
            dsns = {}
            for time_ordered, size in configs:
                dsn = dsns[time_ordered, size] = await stack.enter_async_context(self.database())
                await fill_history(dsn, size, time_ordered)
            order = list(configs)
            for _ in range(self.runs):
                for time_ordered, size in order:
                    samples[time_ordered, size].append(
                        await self._history_sample(
                            dsns[time_ordered, size],
                            count,
                            new_command_id if time_ordered else uuid.uuid4,
                        )
                    )
                order = order[1:] + order[:1]
        rows = []
        for time_ordered, size in configs:
            found = samples[time_ordered, size]
            base = [s.rate for s in samples[time_ordered, sizes[0]]]
            rows.append(
                [
                    "time-ordered (UUIDv7)" if time_ordered else "random (uuid4)",
                    f"{size:,}",
                    summary([s.rate for s in found]),
                    ratio_summary([s.rate for s in found], base),
                    summary([s.claim_ms for s in found], 3),
                    summary([s.claim_reads for s in found], 1),
                    summary([s.ack_ms for s in found], 3),
                    summary([s.ack_reads for s in found], 1),
                ]
            )
        self.section(
            f"History: {count:,} no-op commands (1 x 64) with finished commands already stored",
            [
                "command ids",
                "finished commands stored (6 audit rows each)",
                "commands/s",
                f"of the {sizes[0]:,}-command tables' rate with the same ids, same round",
                "claim, server ms per statement",
                "claim, blocks read per statement",
                "ack, server ms per statement",
                "ack, blocks read per statement",
            ],
            rows,
            "The finished commands (COMPLETED, outside any batch, of the same domain) and their"
            " audit rows are generated in SQL, then VACUUM ANALYZE: one database per size,"
            " filled once; each round measures every size once, in an order rotated each"
            " round, and deletes the measured batch again (then VACUUM ANALYZE). Server times"
            " and blocks are pg_stat_statements' means for the claim and the ack statements"
            " during the run; blocks read are those not found in shared_buffers (read from"
            " the OS). The claim finds its commands in a partial index of claimable commands"
            " only, but it is the first statement after the send to touch each command's"
            " primary-key leaf (its update is never HOT: it changes indexed columns) and its"
            " audit_subject leaf (its RECEIVED row); both are keyed by the command id. Random"
            " ids spread those leaves over the whole index, which with the history outgrows"
            " shared_buffers, so the claim reads them back (the blocks read) while the ack"
            " that follows finds them cached; time-ordered ids (`new_command_id`, and the"
            " history made with UUIDv7 ids too) keep them at the indexes' right edge.",
        )

    async def _history_sample(
        self, dsn: str, count: int, new_id: Callable[[], uuid.UUID]
    ) -> HistorySample:
        """One measurement of the history scenario on `dsn`; its batch is removed after."""
        conn = await connect(dsn)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await conn.execute("SELECT pg_stat_statements_reset()")
            rate = await self._batch_rate_on(dsn, count, 64, new_id=new_id)
            timings = await conn.fetch_all(
                "SELECT query, calls, total_exec_time, shared_blks_read FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            async with conn.transaction():
                await conn.execute(
                    "DELETE FROM triobus.audit WHERE subject_id = ANY(ARRAY("
                    " SELECT command_id FROM triobus.command WHERE batch_id IS NOT NULL"
                    " UNION ALL SELECT batch_id FROM triobus.batch))"
                )
                await conn.execute("DELETE FROM triobus.command WHERE batch_id IS NOT NULL")
                await conn.execute("DELETE FROM triobus.batch")
            await conn.execute("VACUUM ANALYZE triobus.command, triobus.audit, triobus.batch")
        finally:
            await conn.close()
        return HistorySample(
            rate=rate,
            claim_ms=_mean(timings, "WITH candidates AS", "total_exec_time"),
            claim_reads=_mean(timings, "WITH candidates AS", "shared_blks_read"),
            ack_ms=_mean(timings, "WITH r AS", "total_exec_time"),
            ack_reads=_mean(timings, "WITH r AS", "shared_blks_read"),
        )

    async def peers(self) -> None:
        """PgQueuer, Procrastinate, Oban and triobus on the processing phase, each at its
        defaults and over a small sweep, best against best; the pgbench ceiling.

        Interleaved: each round measures every configuration once, so the machine's drift
        during the scenario (it can be tens of percent on a shared VM) hits all alike, and
        each ratio is the median of the per-round ratios of triobus and the peer.
        """
        packages = sorted({p for config in PEER_CONFIGS for p in (config.package, *config.needs)})
        versions = await installed_versions(BENCH_VENV / "bin" / "python", packages)
        triobus_keys = TRIOBUS_SWEEP
        phase: dict[tuple[int, int, int], list[float]] = {key: [] for key in triobus_keys}
        peer_rates: dict[int, list[float]] = {}
        failures: dict[int, str] = {}
        for index, config in enumerate(PEER_CONFIGS):
            missing = [p for p in (config.package, *config.needs) if versions[p] is None]
            if missing:
                failures[index] = f"not run: {', '.join(missing)} not in {BENCH_VENV}"
            else:
                peer_rates[index] = []
        for _ in range(self.runs):
            for processes, concurrency, prefetch in triobus_keys:
                seconds = await self._triobus_phase(processes, concurrency, prefetch)
                phase[processes, concurrency, prefetch].append(PEER_JOBS / seconds)
            for index, config in enumerate(PEER_CONFIGS):
                if index in failures:
                    continue
                try:
                    result = await self._peer_run(config.script, config.arguments())
                except PeerError as ex:
                    failures[index] = f"failed: {ex}"
                    continue
                peer_rates[index].append(result["jobs_per_s"])
        rows = [
            [
                "triobus",
                "native Trio psycopg driver" + (f", prefetch {f}" if f else ""),
                str(p),
                str(c),
                summary(rates),
                "—",
                "—",
            ]
            for (p, c, f), rates in phase.items()
        ]
        for index, config in enumerate(PEER_CONFIGS):
            key = (config.processes, config.concurrency or 64, 0)
            row = [
                f"{config.system} {versions[config.package] or ''}".strip(),
                config.setup,
                str(config.processes),
                str(config.concurrency or "unlimited"),
            ]
            if index in failures:
                rows.append([*row, failures[index], "", ""])
                continue
            rates = peer_rates[index]
            if key not in phase:  # no triobus row with these processes and concurrency
                rows.append([*row, summary(rates), "—", "—"])
                continue
            paired = statistics.median(t / r for t, r in zip(phase[key], rates, strict=True))
            scenario = self.throughput_rates.get(key[:2])
            rows.append(
                [
                    *row,
                    summary(rates),
                    f"{paired:.2f}",
                    "n/a" if scenario is None else f"{scenario / statistics.median(rates):.2f}",
                ]
            )
        self.section(
            f"Peers: {PEER_JOBS:,} no-op jobs, processing phase (enqueued first; timed from"
            " starting the connected, idle worker processes until all jobs are done)",
            [
                "system",
                "set-up",
                "worker processes",
                "concurrency (per process)",
                "jobs/s, median (min-max)",
                "triobus ÷ peer, processing phase",
                "triobus ÷ peer, throughput scenario",
            ],
            rows,
            PEERS_NOTE,
        )
        self.best_against_best(phase, peer_rates, versions)
        await self.pgbench(max(statistics.median(rates) for rates in phase.values()))

    def best_against_best(
        self,
        phase: dict[tuple[int, int, int], list[float]],
        peer_rates: dict[int, list[float]],
        versions: dict[str, str | None],
    ) -> None:
        """Each system at its defaults and at its best configuration of the sweep (the
        highest median), and triobus's over each peer's, as the median of the same
        rounds' ratios."""
        best_key = max(phase, key=lambda k: statistics.median(phase[k]))
        default_key = TRIOBUS_SWEEP[0]

        def ratio(ours: list[float], theirs: list[float]) -> str:
            values = [t / r for t, r in zip(ours, theirs, strict=True)]
            return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

        def described(processes: int, concurrency: int, setup: str) -> str:
            return f"{processes} x {concurrency or 'unlimited'}, {setup}"

        rows = [
            [
                "triobus",
                described(default_key[0], default_key[1], "prefetch 0")
                + f": {summary(phase[default_key])}",
                described(best_key[0], best_key[1], f"prefetch {best_key[2]}")
                + f": {summary(phase[best_key])}",
                "—",
                "—",
            ]
        ]
        for system in dict.fromkeys(c.system for c in PEER_CONFIGS):
            ran = [i for i, c in enumerate(PEER_CONFIGS) if c.system == system and i in peer_rates]
            ran = [i for i in ran if len(peer_rates[i]) == len(phase[best_key])]
            if not ran:
                continue
            best = max(ran, key=lambda i: statistics.median(peer_rates[i]))
            defaults = [i for i in ran if PEER_CONFIGS[i].default][:1]
            package = PEER_CONFIGS[best].package
            config = PEER_CONFIGS[best]
            default_cell, default_ratio = "not run", "—"
            if defaults:
                d = PEER_CONFIGS[defaults[0]]
                default_cell = described(d.processes, d.concurrency, d.setup)
                default_cell += f": {summary(peer_rates[defaults[0]])}"
                default_ratio = ratio(phase[default_key], peer_rates[defaults[0]])
            rows.append(
                [
                    f"{system} {versions[package] or ''}".strip(),
                    default_cell,
                    described(config.processes, config.concurrency, config.setup)
                    + f": {summary(peer_rates[best])}",
                    ratio(phase[best_key], peer_rates[best]),
                    default_ratio,
                ]
            )
        self.section(
            "Best against best: each system at its defaults and at the best configuration"
            " of the sweep above (jobs/s, median)",
            [
                "system",
                "at its defaults",
                "at its best",
                "triobus best ÷ its best (same rounds)",
                "triobus defaults ÷ its defaults",
            ],
            rows,
            BEST_NOTE,
        )

    async def _triobus_phase(self, processes: int, concurrency: int, prefetch: int) -> float:
        """Seconds from starting gated workers on an already created batch to on_complete."""
        done = trio.Event()

        async def on_complete(batch: BatchMetadata) -> None:
            done.set()

        async with self.database() as dsn, open_runtime(dsn, migrate=False) as runtime:
            await runtime.bus.create_batch("bench", noop_batch(PEER_JOBS), on_complete=on_complete)
            async with worker_processes(
                dsn, "bench", processes, concurrency, True, prefetch
            ) as workers:
                started = time.perf_counter()
                for process in workers:
                    assert process.stdin is not None
                    await process.stdin.send_all(b"go\n")
                with trio.fail_after(600):
                    await done.wait()
                return time.perf_counter() - started

    async def _peer_run(
        self, script: str, arguments: Sequence[str], python: Path | None = None
    ) -> dict[str, Any]:
        """Run one peer script on a fresh empty database; its JSON result line."""
        python = python or BENCH_VENV / "bin" / "python"
        async with self.database(migrated=False) as dsn:
            argv = [str(python), str(PEERS / script), uri_dsn(dsn), *arguments]
            print(f"  {script} {' '.join(arguments)}", flush=True)
            try:
                with trio.fail_after(PEER_DEADLINE):
                    result = await trio.run_process(
                        argv, capture_stdout=True, capture_stderr=True, check=False
                    )
            except trio.TooSlowError:
                raise PeerError(f"no result within {PEER_DEADLINE:.0f} s") from None
        if result.returncode != 0:
            sys.stderr.buffer.write(result.stderr)
            last = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
            raise PeerError(f"exit {result.returncode}: {' '.join(last)[:200]}")
        line = result.stdout.decode().strip().splitlines()[-1]
        print(f"    {line}", flush=True)
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    async def pgbench(self, triobus_best: float) -> None:
        program = find_pgbench()
        rows = []
        for batch in (25, 100):
            for clients in (1, 2, 4, 8):
                row = [str(batch), str(clients)]
                if program is None:
                    rows.append([*row, "not run: no pgbench program found", ""])
                    continue
                arguments = [program, "--jobs", str(PEER_JOBS), "--batch", str(batch)]
                arguments += ["--clients", str(clients)]
                try:
                    rates = [
                        (await self._peer_run("pgbench_peer.py", arguments, Path(sys.executable)))[
                            "jobs_per_s"
                        ]
                        for _ in range(self.runs)
                    ]
                except PeerError as ex:
                    rows.append([*row, f"failed: {ex}", ""])
                    continue
                median = statistics.median(rates)
                rows.append([*row, summary(rates), f"{triobus_best / median:.2f}"])
        self.section(
            f"SQL ceiling (pgbench): {PEER_JOBS:,} rows; claim a batch with FOR UPDATE SKIP"
            " LOCKED, then mark it done with one multi-row update plus a log row per job",
            [
                "batch (rows per claim)",
                "pgbench clients",
                "jobs/s, median (min-max)",
                "triobus ÷ ceiling (best triobus processing phase)",
            ],
            rows,
            PGBENCH_NOTE.format(program=await pgbench_version(program)),
        )


class PeerError(Exception):
    """A peer run failed or gave no result; its table row says so."""


@attrs.frozen
class PeerConfig:
    """One row of the peers table: a peer script in benchmarks/peers/ and its settings."""

    system: str
    package: str  # its distribution in the benchmark environment; the version is shown
    script: str
    setup: str
    processes: int
    concurrency: int  # per worker process; 0: unlimited
    extra: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # other distributions the script imports
    default: bool = False  # the system's own defaults (the first such row of a system)

    def arguments(self) -> list[str]:
        return [
            "--jobs",
            str(PEER_JOBS),
            "--processes",
            str(self.processes),
            "--concurrency",
            str(self.concurrency),
            *self.extra,
        ]


def _pgqueuer(setup: str, processes: int, concurrency: int, batch: int, *extra: str) -> PeerConfig:
    needs = ("asyncpg", "uvloop") if "asyncpg" in extra else ()
    return PeerConfig(
        "PgQueuer",
        "pgqueuer",
        "pgqueuer_peer.py",
        f"{setup}, batch {batch}",
        processes,
        concurrency,
        ("--batch-size", str(batch), *extra),
        needs,
        default="its defaults" in setup and processes == 1,
    )


# triobus's sweep: (worker processes, concurrency, prefetch); the first is its defaults
# (start_worker's concurrency 8, no prefetch), the per-row ratios use the prefetch-0 rows.
TRIOBUS_SWEEP = (
    (1, 8, 0),
    (1, 16, 0),
    (1, 64, 0),
    (2, 64, 0),
    (2, 128, 0),
    (1, 16, 16),
    (1, 64, 64),
    (2, 64, 64),
)


def _oban(setup: str, processes: int, concurrency: int, *extra: str) -> PeerConfig:
    return PeerConfig(
        "Oban (oban-py)",
        "oban",
        "oban_peer.py",
        setup,
        processes,
        concurrency,
        tuple(extra),
        default="its defaults" in setup and processes == 1 and concurrency == 10,
    )


_OBAN = "psycopg pool + uvloop"
_ASYNCPG = ("--driver", "asyncpg", "--uvloop")
PEER_CONFIGS = (
    _pgqueuer("asyncpg + uvloop, its defaults", 1, 0, 10, *_ASYNCPG),
    _pgqueuer("asyncpg + uvloop, its defaults", 2, 0, 10, *_ASYNCPG),
    _pgqueuer("asyncpg + uvloop", 1, 0, 32, *_ASYNCPG),
    _pgqueuer("asyncpg + uvloop", 1, 16, 8, *_ASYNCPG),
    _pgqueuer("asyncpg + uvloop", 1, 64, 10, *_ASYNCPG),
    _pgqueuer("asyncpg + uvloop", 1, 64, 32, *_ASYNCPG),
    _pgqueuer("psycopg async, asyncio loop", 1, 0, 10, "--driver", "psycopg"),
    PeerConfig(
        "Procrastinate",
        "procrastinate",
        "procrastinate_peer.py",
        "psycopg pool, its defaults (concurrency 1)",
        1,
        1,
        default=True,
    ),
    PeerConfig(
        "Procrastinate",
        "procrastinate",
        "procrastinate_peer.py",
        "psycopg pool (its default), one job per fetch",
        1,
        16,
    ),
    PeerConfig(
        "Procrastinate",
        "procrastinate",
        "procrastinate_peer.py",
        "psycopg pool (its default), one job per fetch",
        1,
        64,
    ),
    _oban(f"{_OBAN}, debounce 5 ms, its defaults (limit 10)", 1, 10),
    _oban(f"{_OBAN}, debounce 5 ms", 1, 16),
    _oban(f"{_OBAN}, debounce 5 ms", 1, 64),
    _oban(f"{_OBAN}, debounce 5 ms", 2, 64),
    _oban(f"{_OBAN}, no debounce", 1, 64, "--debounce", "0"),
    _oban(f"{_OBAN}, no debounce", 2, 64, "--debounce", "0"),
)

PEERS_NOTE = """\
Each run uses a fresh database. Peers run in the separate environment .venv-bench
(benchmarks/peers/pgqueuer_peer.py, procrastinate_peer.py, oban_peer.py): the jobs are
enqueued in bulk, the worker processes start, connect and wait; the clock runs from
telling them to go until the last one has drained the queue (PgQueuer:
`QueueManager.run(mode=drain)` returned, so its buffered completions are flushed;
Procrastinate: `run_worker_async(wait=False)` returned; Oban: its queue starts paused and
is resumed on go, and the clock stops when no job is left available, executing, scheduled
or retryable, checked every 10 ms, so every completion is acked; its debounce is its pause
before each ack-and-fetch). PgQueuer's batch is its dequeue batch size (at most half of
`max_concurrent_tasks`); its default is 10 with unlimited concurrency. triobus rows: the
batch is created first, then gated worker processes start claiming (benchmarks/
worker_process.py ... gated) and the clock stops at on_complete in this process. Runs are
interleaved: each round measures every row once, so drift in the machine's speed during
the scenario hits all rows alike. The ratio columns compare the peer's row with triobus's
prefetch-0 row of the same worker processes and concurrency (64 for "unlimited"; — where
triobus has no such row; the prefetch rows show the opt-in `start_worker(prefetch=...)`):
the processing-phase column is the median of the per-round ratios (triobus's run and the
peer's run of the same round, the same method); the throughput-scenario column divides
that scenario's median (create_batch → on_complete, creation included: not the same
method; n/a when it was not run) by the peer's median. triobus also writes an audit trail
and batch counters that the peers do not."""

BEST_NOTE = """\
A system's best is its row with the highest median in the table above (its sweep: for
triobus worker processes, concurrency and prefetch; for PgQueuer processes, concurrency and
dequeue batch; for Procrastinate concurrency; for Oban processes, its queue limit and its
debounce). The ratios pair the runs of the same round
(the scenario is interleaved) and give the median with min-max. "Defaults" is what each
system does untuned: triobus `start_worker` as it comes (concurrency 8, no prefetch), one
process; PgQueuer's defaults; Procrastinate's concurrency 1; Oban's queue limit 10 with
its 5 ms debounce."""

PGBENCH_NOTE = """\
benchmarks/peers/pgbench_peer.py with {program}, prepared statements: a plain
jobs table (partial index on the open rows) and a log table; each round is two autocommit
transactions, a claim (UPDATE ... FROM (SELECT ... ORDER BY id LIMIT batch FOR UPDATE SKIP
LOCKED) RETURNING id) and a completion (multi-row UPDATE of those ids + INSERT of one log
row each); every client does the same number of rounds. jobs/s is pgbench's rate without
connection set-up times the batch. No Python, no handler, no NOTIFY: the database's ceiling
for this shape of work on this machine."""


def uri_dsn(dsn: str) -> str:
    """`dsn` (a URI or key=value string) as a URI: asyncpg accepts only URIs."""
    params = {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
    user = quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    dbname = quote(params.pop("dbname", ""), safe="")
    auth = user + (":" + quote(password, safe="") if password is not None else "")
    query = urlencode(params)
    return f"postgresql://{auth}{'@' if auth else ''}/{dbname}" + (f"?{query}" if query else "")


async def installed_versions(python: Path, packages: Sequence[str]) -> dict[str, str | None]:
    """The versions of `packages` in the environment of `python`; None where missing."""
    if not await trio.Path(python).exists():
        return dict.fromkeys(packages)
    code = (
        "import importlib.metadata as m, sys\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        print(p, m.version(p))\n"
        "    except m.PackageNotFoundError:\n"
        "        print(p, '-')\n"
    )
    result = await trio.run_process(
        [str(python), "-c", code, *packages], capture_stdout=True, check=False
    )
    found = dict(line.split() for line in result.stdout.decode().splitlines())
    return {p: None if found.get(p, "-") == "-" else found[p] for p in packages}


async def pgbench_version(program: str | None) -> str:
    if program is None:
        return "no pgbench"
    result = await trio.run_process([program, "--version"], capture_stdout=True, check=False)
    return result.stdout.decode().strip() or program


def find_pgbench() -> str | None:
    """pgbench beside the server binaries the suite uses, else on PATH or a system install."""
    candidates = []
    with suppress(EmbeddedPostgresError):
        candidates.append(str(find_postgres_bin_dir() / "pgbench"))
    candidates.append(shutil.which("pgbench") or "")
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), reverse=True)
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def _first_words(query: str) -> str:
    words = " ".join(query.split())
    return (words[:60] + "…") if len(words) > 60 else words


def machine() -> str:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return (
        f"{os.cpu_count()} cores, {pages / 2**30:.0f} GiB, {platform.platform()},"
        f" Python {platform.python_version()}"
    )


SCENARIOS = (
    "throughput",
    "transactional",
    "cost",
    "latency",
    "callback",
    "sends",
    "create_batch",
    "batches",
    "history",
    "memory",
    "peers",
)


def _unit(unit: str | None) -> str:
    return f" x {unit}" if unit else ""


async def main(
    runs: int,
    long: bool,
    only: Sequence[str],
    output: Path,
    server_settings: dict[str, str],
    hop_us: int,
) -> None:
    async with AsyncExitStack() as stack:
        dsn = os.environ.get("TRIOBUS_DSN")
        if not dsn:
            dsn = await stack.enter_async_context(
                open_embedded_postgres(settings=SERVER_SETTINGS | server_settings)
            )
        if hop_us:  # every connection of every system, from here on, through the hop
            dsn = await stack.enter_async_context(latency_hop(dsn, delay_us=hop_us))
        conn = await connect(dsn)
        try:
            version_row = await conn.fetch_one("SHOW server_version")
            assert version_row is not None
            version = version_row["server_version"]
            settings = await conn.fetch_all(
                "SELECT name, setting, unit FROM pg_settings WHERE name IN"
                " ('fsync', 'synchronous_commit', 'shared_buffers', 'max_connections')"
            )
        finally:
            await conn.close()
        bench = Bench(dsn, runs)
        scenarios: dict[str, Callable[[], Any]] = {
            "throughput": bench.throughput,
            "transactional": bench.transactional,
            "cost": bench.cost_per_command,
            "latency": bench.latency,
            "callback": bench.callback_latency,
            "sends": bench.sends,
            "create_batch": bench.create_batch,
            "batches": bench.batches,
            "history": bench.history,
            "memory": bench.memory,
            "peers": bench.peers,
        }
        for name, scenario in scenarios.items():
            if name in only if only else (name not in ("memory", "history") or long):
                await scenario()
    header = [
        "# triobus benchmark results",
        "",
        f"- machine: {machine()}",
        f"- PostgreSQL {version}: "
        + ", ".join(f"{s['name']}={s['setting']}{_unit(s['unit'])}" for s in settings),
        f"- command: `python {' '.join(sys.argv)}` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        f"- medians of {runs} runs with min-max where marked; client and server share the machine"
        + (
            f"; every connection passes a latency proxy adding {hop_us} µs each way"
            " (benchmarks/latency_proxy.c: one network hop)"
            if hop_us
            else ""
        ),
        "- on a shared VM the machine's speed drifts (up to 2x between runs an hour apart):"
        " compare the peers scenario's same-round ratios, not absolute figures across runs",
    ]
    await trio.Path(output).write_text(
        "\n".join(header) + "\n\n" + "\n\n".join(bench.sections) + "\n"
    )
    print(f"\nwrote {output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--long", action="store_true", help="also the memory (1M commands) and history runs"
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated scenarios to run, of: {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="default: %(default)s")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting of the embedded cluster, e.g. shared_buffers=1GB (repeatable)",
    )
    parser.add_argument(
        "--hop-us",
        type=int,
        default=0,
        metavar="MICROSECONDS",
        help="every database connection through a proxy delaying each way by this much"
        " (250: one network hop)",
    )
    options = parser.parse_args()
    settings = dict(setting.partition("=")[::2] for setting in options.setting)
    if not all(settings.values()):
        parser.error("--setting takes NAME=VALUE")
    only = [name for name in options.only.split(",") if name]
    if unknown := set(only) - set(SCENARIOS):
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    trio.run(main, options.runs, options.long, only, options.output, settings, options.hop_us)
