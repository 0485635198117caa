"""The Trio worker process the producer examples feed: it ships orders (domain "shop").

    python examples/shipping_worker.py   ($TRIOBUS_DSN, else a private embedded PostgreSQL)

It prints "dsn <DSN>" once its worker runs, so that a producer can connect to the same
database, and stops when its standard input closes.
"""

from __future__ import annotations

import sys

import trio

from triobus.actors import Command, HandlerContext, HandlerRegistry, open_runtime

registry = HandlerRegistry()


@registry.handler("shop", "ShipOrder")
async def ship_order(command: Command, ctx: HandlerContext) -> dict[str, str]:
    return {"shipped": command.data["order"]}


async def main() -> None:
    async with open_runtime(registry=registry) as runtime:
        await runtime.start_worker("shop")
        print(f"dsn {runtime.dsn}", flush=True)
        stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
        while await stdin.receive_some():  # until the producer closes it
            pass


if __name__ == "__main__":
    trio.run(main)
