"""Handlers and a worker: a function handler, a handler class built with its dependencies,
and the three ways a handler can fail.

    python examples/worker.py        ($TRIOBUS_DSN, else a private embedded PostgreSQL)
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import trio

from triobus.actors import (
    BusinessRuleError,
    Command,
    CommandStatus,
    HandlerContext,
    HandlerRegistry,
    RetryPolicy,
    TransientCommandError,
    handler,
    open_runtime,
)

registry = HandlerRegistry()


@registry.handler("shop", "PlaceOrder")
async def place_order(command: Command, ctx: HandlerContext) -> dict[str, Any]:
    if command.data["qty"] <= 0:
        raise BusinessRuleError("BAD_QUANTITY", "quantity must be positive")
    return {"order_total": command.data["qty"] * 250}


class Payments:
    """A handler class: dependencies come in through the constructor."""

    def __init__(self, gateway_up: bool) -> None:
        self.gateway_up = gateway_up

    @handler("shop", "ChargeCard")
    async def charge(self, command: Command, ctx: HandlerContext) -> dict[str, Any]:
        if not self.gateway_up and ctx.attempt < ctx.max_attempts:
            raise TransientCommandError("GATEWAY_DOWN", "card gateway unavailable")
        return {"charged": command.data["amount"], "attempt": ctx.attempt}


registry.register_instance(Payments(gateway_up=False))


async def main() -> None:
    async with open_runtime(registry=registry) as runtime:
        worker = await runtime.start_worker(
            "shop",
            concurrency=4,
            poll_interval=0.2,
            retry_policy=RetryPolicy(max_attempts=3, backoff=(0.2, 0.5)),
        )
        bus = runtime.bus
        sent = [
            await bus.send("shop", "PlaceOrder", uuid.uuid4(), {"qty": 2}, reply_to="shop.out"),
            await bus.send("shop", "PlaceOrder", uuid.uuid4(), {"qty": 0}, reply_to="shop.out"),
            await bus.send("shop", "ChargeCard", uuid.uuid4(), {"amount": 500}),
        ]
        with trio.fail_after(30):
            while True:
                commands = [await bus.get_command("shop", s.command_id) for s in sent]
                if all(c is not None and c.status.is_terminal for c in commands):
                    break
                await trio.sleep(0.1)
        for command in commands:
            assert command is not None
            error = command.last_error and command.last_error.code
            print(
                f"{command.command_type:<11} {command.status:<9} attempts={command.attempts}"
                f" result={command.result} error={error}"
            )
        for reply in await bus.read_replies("shop.out"):
            print(f"reply {reply.outcome} for {reply.command_id}: {reply.data}")
        print(worker.statistics())
        assert commands[0] is not None and commands[0].status is CommandStatus.COMPLETED


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    trio.run(main)
