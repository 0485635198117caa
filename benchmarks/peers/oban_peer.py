"""oban-py (Oban for Python), measured like triobus's throughput scenario.

    python oban_peer.py DSN [--jobs 20000] [--processes 1] [--concurrency 10]
                            [--pool-size 0] [--debounce 0.005] [--loop uvloop|asyncio]

Installs Oban's schema in DSN (a fresh database, URI form) with `oban.schema.install`, what
`oban install` runs, and enqueues JOBS no-op jobs with `Oban.enqueue_many` (in chunks), then
starts PROCESSES worker processes: each imports Oban, opens its connection pool and starts an
Oban instance whose one queue is configured paused, prints "ready" and waits. The clock
starts when all are told to go (each resumes its queue on its own node) and stops when this
process sees no job left available, executing, scheduled or retryable (it polls the jobs
table every POLL seconds on a connection of its own): every job's completion has been acked
to the database. Then the workers are told to stop (`Oban.stop`, not timed) and report how
many jobs they ran; every job must be `completed` (Oban keeps them: its pruner's default
max_age is a day).

CONCURRENCY is the queue's `limit` per worker process, 10 being the value Oban's docs and
its producer default to; POOL-SIZE the psycopg pool's min and max size (0: Oban's default
pool, `Oban.create_pool`: 1 to 10 connections); DEBOUNCE the queue's `debounce_interval`,
the pause that coalesces completions before the next ack and fetch (Oban's default 5 ms).
LOOP: uvloop and orjson's JSON adapters, as `oban start` runs (its default here), or the
stock asyncio loop. Prints one JSON line: peer, settings, jobs, seconds, jobs_per_s.

Runs only in the benchmark environment (.venv-bench): Oban is not a triobus dependency, and
it needs Python 3.12 or newer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Coroutine
from typing import Any

import psycopg

DEADLINE = 600.0  # seconds, for any one step
CHUNK = 5_000  # jobs per enqueue_many call
POLL = 0.01  # seconds between two looks at the jobs table while the workers run
QUEUE = "default"
OPEN_JOBS = (
    "SELECT EXISTS (SELECT 1 FROM oban_jobs"
    " WHERE state IN ('available', 'scheduled', 'executing', 'retryable'))"
)


def noop_worker() -> Any:
    """The no-op worker class, registered with Oban as `__main__.noop_worker.<locals>.Noop`.

    Defined the same way in this process, which enqueues its jobs, and in the workers, which
    resolve it by that name from Oban's registry. `Noop.handled` counts the jobs it ran.
    """
    from oban import Job
    from oban import worker as oban_worker

    class Noop:
        handled = 0

        async def process(self, job: Job) -> None:
            Noop.handled += 1

    return oban_worker(queue=QUEUE)(Noop)


async def open_pool(dsn: str, pool_size: int) -> Any:
    from oban import Oban

    if pool_size:
        return await Oban.create_pool(dsn, min_size=pool_size, max_size=pool_size)
    return await Oban.create_pool(dsn)


async def worker(dsn: str, concurrency: int, pool_size: int, debounce: float) -> None:
    """One worker process: ready, wait for "go" on stdin, run until "stop", report."""
    from oban import Oban

    noop = noop_worker()
    pool = await open_pool(dsn, pool_size)
    node = f"oban-peer.{os.getpid()}"
    queue = {"limit": concurrency, "debounce_interval": debounce, "paused": True}
    oban = Oban(pool=pool, node=node, queues={QUEUE: queue})
    await oban.start()
    try:
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            return
        await oban.resume_queue(QUEUE, node=node)  # this node only: no signal to the others
        await loop.run_in_executor(None, sys.stdin.readline)  # "stop", or the end of stdin
    finally:
        await oban.stop()
        await pool.close()
    print(json.dumps({"handled": noop.handled}), flush=True)


async def read_line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), DEADLINE)
    if not line:
        raise RuntimeError(f"worker process ended (exit {await process.wait()})")
    return line.decode().strip()


def tell(workers: list[asyncio.subprocess.Process], line: bytes) -> None:
    for process in workers:
        assert process.stdin is not None
        process.stdin.write(line)


async def wait_until_done(
    conn: psycopg.AsyncConnection[Any], workers: list[asyncio.subprocess.Process]
) -> None:
    """Return once no job is left to run or to ack; raise if a worker process ends first."""
    async with asyncio.timeout(DEADLINE):
        while True:
            await asyncio.sleep(POLL)
            row = await (await conn.execute(OPEN_JOBS)).fetchone()
            if row is not None and not row[0]:
                return
            ended = [p.returncode for p in workers if p.returncode is not None]
            if ended:
                raise RuntimeError(f"worker process ended (exit {ended[0]})")


async def main(options: argparse.Namespace) -> None:
    from oban import Oban
    from oban.schema import install

    noop = noop_worker()
    pool = await open_pool(options.dsn, 0)
    try:
        await install(pool)
        async with Oban(pool=pool) as client:  # no queues: enqueues only
            for start in range(0, options.jobs, CHUNK):
                count = min(CHUNK, options.jobs - start)
                await client.enqueue_many([noop.new() for _ in range(count)])
    finally:
        await pool.close()
    argv = [__file__, "--worker", options.dsn, "--concurrency", str(options.concurrency)]
    argv += ["--pool-size", str(options.pool_size), "--debounce", str(options.debounce)]
    argv += ["--loop", options.loop]
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        for _ in range(options.processes)
    ]
    try:
        async with await psycopg.AsyncConnection.connect(options.dsn, autocommit=True) as conn:
            for process in workers:
                if await read_line(process) != "ready":
                    raise RuntimeError("worker process did not start")
            started = time.perf_counter()
            tell(workers, b"go\n")
            await wait_until_done(conn, workers)
            seconds = time.perf_counter() - started
            tell(workers, b"stop\n")
            handled = sum([json.loads(await read_line(p))["handled"] for p in workers])
            cursor = await conn.execute(
                "SELECT count(*) FILTER (WHERE state = 'completed'), count(*) FROM oban_jobs"
            )
            row = await cursor.fetchone()
    finally:
        for process in workers:
            if process.returncode is None:
                process.kill()
            await process.wait()
    completed, total = row if row else (0, 0)
    if handled != options.jobs or completed != options.jobs or total != options.jobs:
        raise RuntimeError(
            f"handled {handled}, {completed} completed, {total} jobs in the table,"
            f" of {options.jobs} jobs"
        )
    settings = {
        "driver": "psycopg" + ("+uvloop" if options.loop == "uvloop" else ""),
        "processes": options.processes,
        "concurrency": options.concurrency,
        "pool_size": options.pool_size or "default",
        "debounce_ms": options.debounce * 1000,
    }
    result = {"peer": "oban", **settings, "jobs": options.jobs, "seconds": seconds}
    print(json.dumps(result | {"jobs_per_s": options.jobs / seconds}), flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dsn")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=10, help="the queue's limit")
    parser.add_argument("--pool-size", type=int, default=0, help="0: Oban's default pool")
    parser.add_argument("--debounce", type=float, default=0.005, help="seconds")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run() -> None:
    options = parse(sys.argv[1:])
    coroutine: Coroutine[Any, Any, None]
    if options.worker:
        coroutine = worker(options.dsn, options.concurrency, options.pool_size, options.debounce)
    else:
        coroutine = main(options)
    if options.loop == "uvloop":
        # As `oban start` does: uvloop, and orjson for psycopg's JSON (args, meta, errors).
        import orjson
        import uvloop
        from psycopg.types.json import set_json_dumps, set_json_loads

        set_json_dumps(orjson.dumps)
        set_json_loads(orjson.loads)
        uvloop.run(coroutine)
    else:
        asyncio.run(coroutine)


if __name__ == "__main__":
    run()
