"""python create_batch.py DSN COUNT: one create_batch of COUNT commands in a fresh process.

Prints three figures: the seconds create_batch took, the seconds spent building the COUNT
BatchCommand inputs before it (the caller's side: uuid4 ids, attrs objects), and the
process's peak RSS in KiB (the inputs included)."""

from __future__ import annotations

import resource
import sys
import time
import uuid

import trio

from triobus.actors import BatchCommand, open_runtime


async def main(dsn: str, count: int) -> None:
    async with open_runtime(dsn, migrate=False) as runtime:
        started = time.perf_counter()
        commands = [
            BatchCommand("Noop", uuid.uuid4(), {"n": n, "payload": "x" * 50}) for n in range(count)
        ]
        built = time.perf_counter()
        await runtime.bus.create_batch("bench", commands)
        elapsed = time.perf_counter() - built
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{elapsed:.3f} {built - started:.3f} {peak}")


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
