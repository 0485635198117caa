"""An application that imports psycopg before triobus: python asyncio_handler_process.py DSN

Its `asyncio=True` handler queries PostgreSQL with psycopg's AsyncConnection; the process
drains one command and prints its status and result as JSON.
"""

import json
import sys
import uuid

import psycopg  # before triobus, as sorted imports put it: it binds asyncio's loop lookup
import trio

from triobus.actors import Command, HandlerContext, HandlerRegistry, open_runtime

registry = HandlerRegistry()


@registry.handler("d", "Query", asyncio=True)
async def query(command: Command, ctx: HandlerContext) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(sys.argv[1]) as conn:
        cursor = await conn.execute("SELECT 41 + 1")
        row = await cursor.fetchone()
        assert row is not None
        return {"answer": row[0]}


async def main(dsn: str) -> None:
    async with open_runtime(dsn, registry=registry, migrate=False) as runtime:
        sent = await runtime.bus.send("d", "Query", uuid.uuid4(), {})
        await runtime.drain("d")
        command = await runtime.bus.get_command("d", sent.command_id)
        assert command is not None
        print(json.dumps({"status": command.status, "result": command.result}))


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
