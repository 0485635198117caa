"""An asyncio producer (a FastAPI-style service) feeding a Trio worker process.

The same as examples/producer_sync.py on an asyncio psycopg connection: an order and its
ShipOrder command commit together in the application's transaction, or not at all.

    python examples/producer_asyncio.py   ($TRIOBUS_DSN, else the worker's embedded PostgreSQL)
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg

from triobus.persistence import producer
from triobus.persistence.producer import BatchCommand

WORKER = Path(__file__).with_name("shipping_worker.py")


async def place_order(conn: psycopg.AsyncConnection[Any], item: str, *, paid: bool) -> None:
    """The order row and its ShipOrder command, in one transaction of the application."""
    async with conn.transaction():
        await conn.execute("INSERT INTO orders (id, item) VALUES (%s, %s)", (uuid.uuid4(), item))
        await producer.send_async(conn, "shop", "ShipOrder", uuid.uuid4(), {"order": item})
        if not paid:
            raise RuntimeError(f"payment for {item} declined")


async def wait_until_shipped(conn: psycopg.AsyncConnection[Any], count: int) -> list[Any]:
    async with asyncio.timeout(60):
        while True:
            cursor = await conn.execute(
                "SELECT data->>'order', status FROM triobus.command WHERE domain = 'shop'"
                " ORDER BY data->>'order'"
            )
            rows = await cursor.fetchall()
            if len(rows) == count and all(status == "COMPLETED" for _, status in rows):
                return rows
            await asyncio.sleep(0.05)


async def main() -> None:
    worker = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert worker.stdin is not None and worker.stdout is not None
    try:
        dsn = (await worker.stdout.readline()).decode().removeprefix("dsn ").strip()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS orders (id uuid PRIMARY KEY, item text)")
            await place_order(conn, "book", paid=True)
            print("order for book and its command: committed together")
            try:
                await place_order(conn, "lamp", paid=False)
            except RuntimeError as declined:
                print(f"{declined}: neither the order nor its command was stored")
            bulk = [BatchCommand("ShipOrder", uuid.uuid4(), {"order": f"pen {n}"}) for n in (1, 2)]
            await producer.create_batch_async(conn, "shop", bulk, name="pens")
            print("a batch of 2 pens: committed")
            for item, status in await wait_until_shipped(conn, 3):
                print(f"worker: {item} {status}")
    finally:
        worker.stdin.close()
        await worker.wait()


if __name__ == "__main__":
    asyncio.run(main())
