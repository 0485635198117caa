"""The floor under transactional handlers: python transaction_floor.py DSN TASKS COUNT

TASKS Trio tasks, each on its own connection of triobus's pool (native driver), run COUNT
transactions in all, each BEGIN, one INSERT, COMMIT, and no triobus statement at all.
Prints the transactions per second: the most that one transaction per command, from one
process on this machine, can reach before a queue adds anything.
"""

from __future__ import annotations

import sys
import time
import uuid

import trio

from triobus.persistence.pool import open_pool


async def main(dsn: str, tasks: int, count: int) -> None:
    async with open_pool(dsn, max_size=tasks) as pool:
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS floor_effect (id uuid PRIMARY KEY)")
        left = count

        async def run() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with pool.transaction() as conn:
                    await conn.execute("INSERT INTO floor_effect VALUES (%s)", (uuid.uuid4(),))

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(run)
        print(f"{count / (time.perf_counter() - started):.1f}", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
