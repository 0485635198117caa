"""Quickstart: send a few commands and print their audit trail.

Runs on $TRIOBUS_DSN when set, otherwise on a private embedded PostgreSQL that is
started for the run and deleted afterwards:

    python examples/quickstart.py
"""

from __future__ import annotations

import trio

from triobus.actors import DuplicateCommandError, new_command_id, open_runtime


async def main() -> None:
    async with open_runtime() as runtime:
        bus = runtime.bus
        order_id = new_command_id()  # time-ordered (UUIDv7)
        sent = [
            await bus.send("shop", "PlaceOrder", order_id, {"sku": "TEA-42", "qty": 2}),
            await bus.send(
                "payments",
                "Debit",
                new_command_id(),
                {"amount_cents": 1299},
                reply_to="shop.replies",
                max_attempts=5,
            ),
        ]
        try:
            await bus.send("shop", "PlaceOrder", order_id, {"sku": "TEA-42", "qty": 2})
        except DuplicateCommandError as ex:
            print(f"idempotent send: {ex}")

        for result in sent:
            command = await bus.get_command(result.domain, result.command_id)
            assert command is not None
            print(
                f"\n{command.domain}/{command.command_type} {command.command_id}"
                f" status={command.status} correlation={command.correlation_id}"
            )
            for event in await bus.get_audit_trail(result.command_id, domain=result.domain):
                print(
                    f"  #{event.audit_id} {event.occurred_at:%H:%M:%S.%f} "
                    f"{event.event_type:<8} {event.details}"
                )


if __name__ == "__main__":
    trio.run(main)
