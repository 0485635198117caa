"""PgQueuer, measured like triobus's throughput scenario.

    python pgqueuer_peer.py DSN [--jobs 20000] [--processes 1] [--concurrency 0]
                                [--batch-size 10] [--driver asyncpg|psycopg] [--uvloop]

Installs PgQueuer's schema in DSN (a fresh database, URI form), enqueues JOBS no-op jobs in
one call, then starts PROCESSES worker processes: each imports PgQueuer, connects and
registers the entrypoint, prints "ready" and waits. The clock starts when all are told to
go and stops when the last one has returned from `QueueManager.run(mode=drain)`, which
returns once no job is queued, its own jobs have finished and their completions are
flushed (deleted from the queue and logged). CONCURRENCY is `max_concurrent_tasks` per
worker, 0 for unlimited (PgQueuer's default); BATCH-SIZE is the dequeue batch size (at
most CONCURRENCY/2). Prints one JSON line: peer, settings, jobs, seconds, jobs_per_s.

Runs only in the benchmark environment (.venv-bench): PgQueuer is not a triobus dependency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import timedelta
from typing import Any

DEADLINE = 600.0  # seconds, for any one step


async def open_queries(dsn: str, driver: str) -> Any:
    from pgqueuer.db import AsyncpgDriver, PsycopgDriver
    from pgqueuer.queries import Queries

    if driver == "asyncpg":
        import asyncpg

        return Queries(AsyncpgDriver(await asyncpg.connect(dsn)))
    import psycopg

    return Queries(PsycopgDriver(await psycopg.AsyncConnection.connect(dsn, autocommit=True)))


async def worker(dsn: str, driver: str, concurrency: int, batch_size: int) -> None:
    """One worker process: ready, wait for "go" on stdin, drain the queue, report."""
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.types import QueueExecutionMode

    qm = QueueManager(await open_queries(dsn, driver))
    handled = 0

    async def noop(job: Job) -> None:
        nonlocal handled
        handled += 1

    qm.entrypoint("noop")(noop)

    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        return
    await qm.run(
        batch_size=batch_size,
        max_concurrent_tasks=concurrency or None,
        mode=QueueExecutionMode.drain,
        # Only a fallback: enqueued jobs and freed capacity wake the worker by NOTIFY.
        dequeue_timeout=timedelta(seconds=5),
    )
    print(json.dumps({"handled": handled}), flush=True)


async def read_line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), DEADLINE)
    if not line:
        raise RuntimeError(f"worker process ended (exit {await process.wait()})")
    return line.decode().strip()


async def main(options: argparse.Namespace) -> None:
    queries = await open_queries(options.dsn, options.driver)
    await queries.install()
    await queries.enqueue(["noop"] * options.jobs, [None] * options.jobs, [0] * options.jobs)
    argv = [__file__, "--worker", options.dsn, "--driver", options.driver]
    argv += ["--concurrency", str(options.concurrency), "--batch-size", str(options.batch_size)]
    argv += ["--uvloop"] if options.uvloop else []
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        for _ in range(options.processes)
    ]
    try:
        for process in workers:
            if await read_line(process) != "ready":
                raise RuntimeError("worker process did not start")
        started = time.perf_counter()
        for process in workers:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
        handled = sum([json.loads(await read_line(p))["handled"] for p in workers])
        seconds = time.perf_counter() - started
    finally:
        for process in workers:
            if process.returncode is None:
                process.kill()
            await process.wait()
    left = await queries.driver.fetch("SELECT count(*) AS n FROM pgqueuer")
    if handled != options.jobs or left[0]["n"] != 0:
        raise RuntimeError(f"handled {handled} of {options.jobs} jobs, {left[0]['n']} left")
    settings = {
        "driver": options.driver + ("+uvloop" if options.uvloop else ""),
        "processes": options.processes,
        "concurrency": options.concurrency or "unlimited",
        "batch_size": options.batch_size,
    }
    result = {"peer": "pgqueuer", **settings, "jobs": options.jobs, "seconds": seconds}
    print(json.dumps(result | {"jobs_per_s": options.jobs / seconds}), flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dsn")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=0, help="per worker; 0: unlimited")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--driver", choices=["asyncpg", "psycopg"], default="asyncpg")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run() -> None:
    options = parse(sys.argv[1:])
    if options.worker:
        coroutine = worker(options.dsn, options.driver, options.concurrency, options.batch_size)
    else:
        coroutine = main(options)
    if options.uvloop:
        import uvloop

        uvloop.run(coroutine)
    else:
        asyncio.run(coroutine)


if __name__ == "__main__":
    run()
