"""A sync producer feeding a Trio worker process, with no Trio in this process.

An order and its ShipOrder command are written in the application's own transaction on
its own psycopg connection: they commit together, or (as the declined payment shows) not
at all. A batch follows. The worker process (examples/shipping_worker.py) runs them.

    python examples/producer_sync.py   ($TRIOBUS_DSN, else the worker's embedded PostgreSQL)
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from triobus.persistence import producer
from triobus.persistence.producer import BatchCommand

WORKER = Path(__file__).with_name("shipping_worker.py")


def place_order(conn: psycopg.Connection[Any], item: str, *, paid: bool) -> uuid.UUID:
    """The order row and its ShipOrder command, in one transaction of the application."""
    order_id = uuid.uuid4()
    with conn.transaction():
        conn.execute("INSERT INTO orders (id, item) VALUES (%s, %s)", (order_id, item))
        producer.send(conn, "shop", "ShipOrder", uuid.uuid4(), {"order": item})
        if not paid:
            raise RuntimeError(f"payment for {item} declined")
    return order_id


def wait_until_shipped(conn: psycopg.Connection[Any], count: int) -> list[tuple[Any, ...]]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = conn.execute(
            "SELECT data->>'order', status FROM triobus.command WHERE domain = 'shop'"
            " ORDER BY data->>'order'"
        ).fetchall()
        if len(rows) == count and all(status == "COMPLETED" for _, status in rows):
            return rows
        time.sleep(0.05)
    raise TimeoutError("the worker did not ship the orders within 60 s")


def main() -> None:
    worker = subprocess.Popen(
        [sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert worker.stdin is not None and worker.stdout is not None
    try:
        dsn = worker.stdout.readline().removeprefix("dsn ").strip()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS orders (id uuid PRIMARY KEY, item text)")
            place_order(conn, "book", paid=True)
            print("order for book and its command: committed together")
            try:
                place_order(conn, "lamp", paid=False)
            except RuntimeError as declined:
                print(f"{declined}: neither the order nor its command was stored")
            bulk = [BatchCommand("ShipOrder", uuid.uuid4(), {"order": f"pen {n}"}) for n in (1, 2)]
            producer.create_batch(conn, "shop", bulk, name="pens")
            print("a batch of 2 pens: committed")
            for item, status in wait_until_shipped(conn, 3):
                print(f"worker: {item} {status}")
    finally:
        worker.stdin.close()
        worker.wait(timeout=60)


if __name__ == "__main__":
    main()
