"""Producer sends per second, outside Trio: python producer_sends.py DSN COUNT sync|asyncio

Prints one JSON line: sends/s in autocommit mode, and transactions/s of the application's
own transaction (BEGIN, one INSERT, COMMIT) without and with a `producer` send in it.
This process imports no Trio, as an application using the producer would not.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

import psycopg

from triobus.persistence import producer

SETUP = "CREATE TABLE IF NOT EXISTS bench_order (id uuid PRIMARY KEY)"
INSERT = "INSERT INTO bench_order VALUES (%s)"


def sync_rates(dsn: str, count: int) -> dict[str, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SETUP)

        def timed(step: Any) -> float:
            started = time.perf_counter()
            for _ in range(count):
                step()
            return count / (time.perf_counter() - started)

        def order_only() -> None:
            with conn.transaction():
                conn.execute(INSERT, (uuid.uuid4(),))

        def order_and_send() -> None:
            with conn.transaction():
                conn.execute(INSERT, (uuid.uuid4(),))
                producer.send(conn, "bench", "Noop", uuid.uuid4(), {})

        return {
            "autocommit": timed(lambda: producer.send(conn, "bench", "Noop", uuid.uuid4(), {})),
            "transaction_only": timed(order_only),
            "in_transaction": timed(order_and_send),
        }


async def asyncio_rates(dsn: str, count: int) -> dict[str, float]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(SETUP)

        async def timed(step: Any) -> float:
            started = time.perf_counter()
            for _ in range(count):
                await step()
            return count / (time.perf_counter() - started)

        async def send() -> None:
            await producer.send_async(conn, "bench", "Noop", uuid.uuid4(), {})

        async def order_only() -> None:
            async with conn.transaction():
                await conn.execute(INSERT, (uuid.uuid4(),))

        async def order_and_send() -> None:
            async with conn.transaction():
                await conn.execute(INSERT, (uuid.uuid4(),))
                await producer.send_async(conn, "bench", "Noop", uuid.uuid4(), {})

        return {
            "autocommit": await timed(send),
            "transaction_only": await timed(order_only),
            "in_transaction": await timed(order_and_send),
        }


if __name__ == "__main__":
    dsn, count, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rates = sync_rates(dsn, count) if mode == "sync" else asyncio.run(asyncio_rates(dsn, count))
    assert "trio" not in sys.modules
    print(json.dumps(rates))
