"""A batch with a completion callback, follow-up commands, and an operator resolving its
one failure.

Five rows are imported as one batch; row 3 fails permanently and waits in the
troubleshooting queue. While it waits, the batch stays IN_PROGRESS and the callback does
not fire. When the operator cancels it, the batch completes with failures and the
callback fires, once, with the final counts. The batch's follow-up commands were written
by the transactions of their events (row 3's move to the TSQ, the completion); a worker
of domain "reports" then runs them.

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
    CommandStatus,
    FollowUpCommand,
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


@registry.handler("reports", "AlertOps")
@registry.handler("reports", "ImportReport")
async def report(command: Command, ctx: HandlerContext) -> dict[str, str]:
    return {"seen": command.data["batch"]["status"]}


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
            "imports",
            rows,
            name="contacts.csv",
            on_complete=on_complete,
            on_failure_command=FollowUpCommand(domain="reports", command_type="AlertOps"),
            on_complete_command=FollowUpCommand(domain="reports", command_type="ImportReport"),
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
        await runtime.start_worker("reports", poll_interval=0.2)
        finished = await runtime.wait_batch("imports", batch_id)
        for follow_up in finished.follow_ups:
            with trio.fail_after(30):
                while True:
                    command = await runtime.bus.get_command("reports", follow_up.command_id)
                    if command and command.status is CommandStatus.COMPLETED:
                        break
                    await trio.sleep(0.05)
            print(
                f"follow-up {follow_up.event}: {follow_up.command.command_type} ran once,"
                f" when the batch was {command.data['batch']['status']}"
            )


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    trio.run(main)
