"""End-to-end throughput of one batch of no-op commands, audit trail and batch counts on.

    python benchmarks/batch_throughput.py [--commands 20000] [--concurrency 16 64] [--runs 3]

Runs on $TRIOBUS_DSN when set, else on an embedded PostgreSQL started for the run. Each
run creates the batch, starts one in-process worker and measures from the worker's start
until the batch's on_complete callback runs. Prints commands/s per run and the median,
create_batch seconds, and worker statements per command (claims + ack batches; each is
one round trip).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import trio

from triobus.actors import (
    BatchCommand,
    BatchMetadata,
    Command,
    HandlerContext,
    HandlerRegistry,
    open_runtime,
)

registry = HandlerRegistry()


@registry.handler("bench", "Noop")
async def noop(command: Command, ctx: HandlerContext) -> None:
    return None


async def one_run(commands: int, concurrency: int) -> tuple[float, float, float]:
    """(create_batch seconds, commands/s, statements per command)."""
    async with open_runtime(registry=registry) as runtime:
        batch = [BatchCommand("Noop", uuid.uuid4(), {}) for _ in range(commands)]
        done = trio.Event()

        async def on_complete(metadata: BatchMetadata) -> None:
            done.set()

        started = time.perf_counter()
        await runtime.bus.create_batch("bench", batch, on_complete=on_complete)
        created = time.perf_counter()
        worker = await runtime.start_worker("bench", concurrency=concurrency)
        await done.wait()
        finished = time.perf_counter()
        stats = worker.statistics()
        statements = stats.claim_statements + stats.ack_batches
        return created - started, commands / (finished - created), statements / commands


async def main(commands: int, concurrencies: list[int], runs: int) -> None:
    print(f"{commands} no-op commands in one batch, {runs} runs each (medians; min-max)")
    for concurrency in concurrencies:
        results = [await one_run(commands, concurrency) for _ in range(runs)]
        rates = sorted(r[1] for r in results)
        creates = [r[0] for r in results]
        print(
            f"concurrency {concurrency:>3}: {statistics.median(rates):>7.0f} commands/s"
            f" ({rates[0]:.0f}-{rates[-1]:.0f}); create_batch {statistics.median(creates):.2f} s;"
            f" {statistics.median(r[2] for r in results):.2f} worker statements/command"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    trio.run(main, options.commands, options.concurrency, options.runs)
