"""Same-round A/B of two triobus checkouts on the processing phase (for refactors).

    python benchmarks/ab.py PYTHON_A PYTHON_B [--rounds 5] [--configs 1x16,1x64]
                            [--setup-a SQL]

PYTHON_A and PYTHON_B are the interpreters of two environments, each with its own
triobus installed (e.g. a worktree of the base commit with its own .venv). Each round
measures every configuration once per side, alternating which side goes first: a batch
of 20,000 no-op commands is created (by this checkout), then gated worker processes of
that side (benchmarks/worker_process.py, public API only) are started, and the time from
"go" until the batch's on_complete runs is taken. Printed: commands/s per side (median,
min-max) and the median of the per-round ratios B/A, which the machine's drift (up to 2x
within an hour here) affects far less than the absolute figures. With `--setup-a`, side
A's databases run that SQL after their migrations: one checkout against itself with, say,
an index dropped (`--setup-a "DROP INDEX triobus.command_finished_member"`).

Uses $TRIOBUS_DSN when set, else its own embedded PostgreSQL (durable settings).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio

from triobus.actors import BatchCommand, BatchMetadata, open_runtime
from triobus.persistence.databases import create_database, drop_database, migrate
from triobus.persistence.driver import connect
from triobus.persistence.embedded import open_embedded_postgres

WORKER = Path(__file__).with_name("worker_process.py")
COMMANDS = 20_000


@asynccontextmanager
async def fresh_database(admin_dsn: str, setup: str | None) -> AsyncIterator[str]:
    name = f"triobus_ab_{uuid.uuid4().hex[:10]}"
    dsn = await create_database(admin_dsn, name)
    try:
        await migrate(dsn)
        if setup:
            conn = await connect(dsn)
            try:
                await conn.execute(setup)
            finally:
                await conn.close()
        yield dsn
    finally:
        await drop_database(admin_dsn, name)


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


async def processing_rate(
    admin_dsn: str, python: str, processes: int, concurrency: int, setup: str | None
) -> float:
    """Commands/s of `processes` workers of `python`, each `concurrency`, on one batch."""
    done = trio.Event()

    async def on_complete(batch: BatchMetadata) -> None:
        done.set()

    async with fresh_database(admin_dsn, setup) as dsn, open_runtime(dsn, migrate=False) as runtime:
        batch = [BatchCommand("Noop", uuid.uuid4(), {}) for _ in range(COMMANDS)]
        await runtime.bus.create_batch("bench", batch, on_complete=on_complete)
        workers = []
        try:
            for _ in range(processes):
                argv = [python, str(WORKER), dsn, "bench", str(concurrency), "gated"]
                workers.append(
                    await trio.lowlevel.open_process(
                        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE
                    )
                )
                await read_line(workers[-1])  # "ready": connected, idle
            started = time.perf_counter()
            for process in workers:
                assert process.stdin is not None
                await process.stdin.send_all(b"go\n")
            with trio.fail_after(600):
                await done.wait()
            return COMMANDS / (time.perf_counter() - started)
        finally:
            for process in workers:
                process.kill()
                await process.wait()


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


async def main(
    python_a: str,
    python_b: str,
    rounds: int,
    configs: list[tuple[int, int]],
    setup_a: str | None,
) -> None:
    async with AsyncExitStack() as stack:
        admin_dsn = os.environ.get("TRIOBUS_DSN", "")
        if not admin_dsn:
            admin_dsn = await stack.enter_async_context(open_embedded_postgres())
        rates: dict[tuple[str, tuple[int, int]], list[float]] = {}
        for index in range(rounds):
            for config in configs:
                sides = [("A", python_a, setup_a), ("B", python_b, None)]
                for side, python, setup in sides if index % 2 == 0 else sides[::-1]:
                    rate = await processing_rate(admin_dsn, python, *config, setup)
                    rates.setdefault((side, config), []).append(rate)
                    print(f"round {index + 1} {config[0]}x{config[1]} {side}: {rate:,.0f}/s")
    setup = f" after {setup_a!r}" if setup_a else ""
    print(
        f"\nA = {python_a}{setup}\nB = {python_b}\n{rounds} rounds of {COMMANDS:,} no-op commands"
    )
    print("| config | A commands/s | B commands/s | B/A, median of per-round ratios |")
    print("|---|---|---|---|")
    for config in configs:
        a, b = rates["A", config], rates["B", config]
        ratios = [rb / ra for ra, rb in zip(a, b, strict=True)]
        ratio = f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
        print(f"| {config[0]}x{config[1]} | {summary(a)} | {summary(b)} | {ratio} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("python_a")
    parser.add_argument("python_b")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", default="1x16,1x64", help="PROCESSESxCONCURRENCY,...")
    parser.add_argument("--setup-a", help="SQL run on side A's databases after migrating")
    options = parser.parse_args()
    chosen: list[tuple[int, int]] = []
    for config in options.configs.split(","):
        processes, _, concurrency = config.partition("x")
        if not (processes.isdigit() and concurrency.isdigit()):
            parser.error(f"--configs: PROCESSESxCONCURRENCY, comma-separated, got {config!r}")
        chosen.append((int(processes), int(concurrency)))
    trio.run(main, options.python_a, options.python_b, options.rounds, chosen, options.setup_a)
