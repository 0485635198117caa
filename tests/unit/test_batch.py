"""A batch without a callback (the seed maps this scenario to a unit test)."""

from __future__ import annotations

import uuid

from triobus.actors import (
    AuditEventType,
    BatchCommand,
    BatchStatus,
    Command,
    HandlerContext,
    Runtime,
)


async def test_batch_no_callback(triobus_runtime: Runtime) -> None:
    @triobus_runtime.registry.handler("d", "Work")
    async def work(command: Command, ctx: HandlerContext) -> None:
        return None

    batch_id = await triobus_runtime.bus.create_batch(
        "d", [BatchCommand(command_type="Work", command_id=uuid.uuid4(), data={})]
    )
    assert triobus_runtime.statistics().batches == ()  # nothing watches it
    await triobus_runtime.start_worker("d")
    batch = await triobus_runtime.wait_batch("d", batch_id, timeout=30)
    assert batch.status is BatchStatus.COMPLETED
    events = [e.event_type for e in await triobus_runtime.bus.get_audit_trail(batch_id)]
    assert events == [AuditEventType.BATCH_STARTED, AuditEventType.BATCH_COMPLETED]
    assert all(not w.has_callback for w in triobus_runtime.statistics().batches)
