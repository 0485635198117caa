"""A batch with a completion callback, and an operator resolving its one failure.

Five rows are imported as one batch; row 3 fails permanently and waits in the
troubleshooting queue. While it waits, the batch stays IN_PROGRESS and the callback does
not fire. When the operator cancels it, the batch completes with failures and the
callback fires, once, with the final counts.

    python examples/batch_callback.py   ($TRIOBUS_DSN, else a private embedded PostgreSQL)
"""

from __future__ import annotations

import logging
import uuid

import trio

from triobus.actors import (
    BatchCommand,
    BatchMetadata,
    Command,
    HandlerContext,
    HandlerRegistry,
    PermanentCommandError,
    open_runtime,
)

registry = HandlerRegistry()


@registry.handler("imports", "ImportRow")
async def import_row(command: Command, ctx: HandlerContext) -> dict[str, str]:
    if not command.data.get("email"):
        raise PermanentCommandError("NO_EMAIL", f"row {command.data['row']} has no email")
    return {"imported": command.data["email"]}


async def main() -> None:
    fired = trio.Event()

    async def on_complete(batch: BatchMetadata) -> None:
        print(
            f"callback: batch {batch.name!r} {batch.status}: completed={batch.completed_count}"
            f" failed={batch.failed_count} canceled={batch.canceled_count}"
            f" of {batch.total_count}"
        )
        fired.set()

    async with open_runtime(registry=registry) as runtime:
        await runtime.start_worker("imports", concurrency=4, poll_interval=0.2)
        rows = [
            BatchCommand(
                command_type="ImportRow",
                command_id=uuid.uuid4(),
                data={"row": n, "email": "" if n == 3 else f"user{n}@example.com"},
            )
            for n in range(1, 6)
        ]
        batch_id = await runtime.bus.create_batch(
            "imports", rows, name="contacts.csv", on_complete=on_complete
        )
        with trio.fail_after(30):  # until the four good rows are done and row 3 waits
            while True:
                batch = await runtime.bus.get_batch("imports", batch_id)
                if batch and batch.completed_count + batch.in_troubleshooting_count == 5:
                    break
                await trio.sleep(0.05)
        print(
            f"batch {batch.status}: {batch.completed_count} completed,"
            f" {batch.in_troubleshooting_count} in the troubleshooting queue;"
            f" callback fired: {fired.is_set()}"
        )
        (item,) = await runtime.tsq.list_troubleshooting("imports")
        print(f"operator cancels {item.command_id}: {item.error_code}: {item.error_message}")
        await runtime.tsq.operator_cancel(
            "imports", item.command_id, "row dropped by the operator", operator="demo"
        )
        with trio.fail_after(30):
            await fired.wait()
        print("batch audit trail:")
        for event in await runtime.bus.get_audit_trail(batch_id, domain="imports"):
            print(f"  {event.event_type:<15} {event.details}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    trio.run(main)
