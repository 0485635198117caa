"""Procrastinate, measured like triobus's throughput scenario.

    python procrastinate_peer.py DSN [--jobs 20000] [--processes 1] [--concurrency 16]
                                     [--pool-size 0]

Applies Procrastinate's schema to DSN (a fresh database), defers JOBS no-op jobs with
`batch_defer_async`, then starts PROCESSES worker processes: each imports Procrastinate,
opens its connection pool, prints "ready" and waits. The clock starts when all are told to
go and stops when the last one has returned from `run_worker_async(wait=False)`, which
returns once it finds no job left and its running jobs have finished (their status
written). CONCURRENCY is the worker's `concurrency`; POOL-SIZE the psycopg pool's
max_size (0: Procrastinate's default pool). Jobs are kept as succeeded (the default
`delete_jobs="never"`). Prints one JSON line: peer, settings, jobs, seconds, jobs_per_s.

Runs only in the benchmark environment (.venv-bench): Procrastinate is not a triobus
dependency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any

DEADLINE = 900.0  # seconds, for any one step
CHUNK = 5_000  # jobs per batch_defer_async call


def make_app(dsn: str, pool_size: int) -> Any:
    import procrastinate

    # Its warning about an app defined in __main__ concerns the CLI worker, which imports
    # the app by name; these worker processes define the same task themselves.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
    pool: dict[str, Any] = {"min_size": pool_size, "max_size": pool_size} if pool_size else {}
    return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn, **pool))


async def worker(dsn: str, concurrency: int, pool_size: int) -> None:
    """One worker process: ready, wait for "go" on stdin, drain the queue, report."""
    app = make_app(dsn, pool_size)
    handled = 0

    async def noop() -> None:
        nonlocal handled
        handled += 1

    app.task(name="noop")(noop)

    async with app.open_async():
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            return
        await app.run_worker_async(
            concurrency=concurrency, wait=False, install_signal_handlers=False
        )
    print(json.dumps({"handled": handled}), flush=True)


async def read_line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), DEADLINE)
    if not line:
        raise RuntimeError(f"worker process ended (exit {await process.wait()})")
    return line.decode().strip()


async def main(options: argparse.Namespace) -> None:
    app = make_app(options.dsn, 0)

    async def noop() -> None:
        return None

    task = app.task(name="noop")(noop)

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for start in range(0, options.jobs, CHUNK):
            await task.batch_defer_async(*[{}] * min(CHUNK, options.jobs - start))
        argv = [__file__, "--worker", options.dsn, "--concurrency", str(options.concurrency)]
        argv += ["--pool-size", str(options.pool_size)]
        workers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
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
        async with app.connector.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
            )
            row = await cursor.fetchone()
    succeeded = row[0] if row else 0
    if handled != options.jobs or succeeded != options.jobs:
        raise RuntimeError(f"handled {handled}, {succeeded} succeeded, of {options.jobs} jobs")
    settings = {
        "driver": "psycopg",
        "processes": options.processes,
        "concurrency": options.concurrency,
        "pool_size": options.pool_size or "default",
    }
    result = {"peer": "procrastinate", **settings, "jobs": options.jobs, "seconds": seconds}
    print(json.dumps(result | {"jobs_per_s": options.jobs / seconds}), flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dsn")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pool-size", type=int, default=0, help="0: Procrastinate's default")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run() -> None:
    options = parse(sys.argv[1:])
    if options.worker:
        asyncio.run(worker(options.dsn, options.concurrency, options.pool_size))
    else:
        asyncio.run(main(options))


if __name__ == "__main__":
    run()
