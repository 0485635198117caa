"""python create_batch.py DSN COUNT: one create_batch of COUNT commands in a fresh process;
prints the seconds it took and the process's peak RSS in KiB."""

from __future__ import annotations

import resource
import sys
import time
import uuid

import trio

from triobus.actors import BatchCommand, open_runtime


async def main(dsn: str, count: int) -> None:
    async with open_runtime(dsn, migrate=False) as runtime:
        commands = (
            BatchCommand("Noop", uuid.uuid4(), {"n": n, "payload": "x" * 50}) for n in range(count)
        )
        started = time.perf_counter()
        await runtime.bus.create_batch("bench", commands)
        elapsed = time.perf_counter() - started
    print(f"{elapsed:.3f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
