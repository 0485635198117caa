"""An application in its own OS process: python app_process.py DSN

It prints "ready", then loops for ever over transactions, each inserting a row into the
table `app_order` (which the caller creates) and sending a command of domain "d" with
the row's id: it prints "inside <id>" between the two and "committed <id>" after the
commit. The caller SIGKILLs it wherever the loop is.
"""

from __future__ import annotations

import sys
import uuid

import trio

from triobus.actors import open_runtime


async def main(dsn: str) -> None:
    async with open_runtime(dsn, migrate=False) as runtime:
        print("ready", flush=True)
        while True:
            order_id = uuid.uuid4()
            async with runtime.transaction() as conn:
                await conn.execute("INSERT INTO app_order (id) VALUES (%s)", (order_id,))
                print(f"inside {order_id}", flush=True)
                await runtime.bus.send("d", "Ship", order_id, {}, conn=conn)
            print(f"committed {order_id}", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
