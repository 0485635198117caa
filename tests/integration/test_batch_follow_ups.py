"""Batch follow-up commands: written by the transaction in which their event happens,
at most once per (batch, event), run by any worker of their own domain."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from tests.integration.batch_work import commands, register_work, start_worker_process
from triobus.actors import (
    AuditEventType,
    BatchCommand,
    BatchStatus,
    Command,
    CommandMetadata,
    CommandStatus,
    FollowUpCommand,
    FollowUpEvent,
    HandlerContext,
    Runtime,
)
from triobus.persistence.driver import connect
from triobus.persistence.new_commands import follow_up_command_id

REPORT = FollowUpCommand(domain="f", command_type="Report", data={"to": "ops"})
ALL_THREE: dict[str, Any] = {
    "on_complete_command": REPORT,
    "on_success_command": FollowUpCommand(domain="f", command_type="Success", max_attempts=2),
    "on_failure_command": FollowUpCommand("f", "Failure"),  # fields positional too
}


async def follow_ups_by_type(runtime: Runtime) -> dict[str, CommandMetadata]:
    """The commands of domain "f" (only follow-ups are sent there), by type."""
    found = await runtime.bus.query_commands(domain="f")
    by_type = {c.command_type: c for c in found}
    assert len(by_type) == len(found), "a follow-up was stored twice"
    return by_type


def batch_part(
    batch_id: uuid.UUID, event: FollowUpEvent, status: BatchStatus, **counts: int
) -> dict[str, Any]:
    """The "batch" key triobus adds to a follow-up's data."""
    return {
        "domain": "d",
        "batch_id": str(batch_id),
        "event": str(event),
        "status": str(status),
        "total_count": 0,
        "completed_count": 0,
        "failed_count": 0,
        "canceled_count": 0,
        "in_troubleshooting_count": 0,
        "canceled": False,
        "cancel_reason": None,
        **counts,
    }


async def test_a_batch_that_succeeds_sends_on_complete_and_on_success_once(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    runtime = triobus_runtime
    await register_work(runtime)
    ran: list[Command] = []

    async def record(command: Command, ctx: HandlerContext) -> None:
        ran.append(command)

    for command_type in ("Report", "Success", "Failure"):
        runtime.registry.register("f", command_type, record)
    batch_id = await runtime.bus.create_batch("d", commands("ok", "ok"), **ALL_THREE)
    assert await follow_ups_by_type(runtime) == {}  # never before the event

    await runtime.start_worker("d")
    await runtime.start_worker("f", poll_interval=0.05)
    batch = await runtime.wait_batch("d", batch_id, timeout=15)

    async def both_ran() -> bool:  # and their completions committed
        stored = await follow_ups_by_type(runtime)
        return len(ran) == 2 and all(c.status is CommandStatus.COMPLETED for c in stored.values())

    await eventually(both_ran)

    assert batch.status is BatchStatus.COMPLETED
    assert [(f.event, f.sent) for f in batch.follow_ups] == [
        (FollowUpEvent.ON_COMPLETE, True),
        (FollowUpEvent.ON_SUCCESS, True),
        (FollowUpEvent.ON_FAILURE, False),
    ]
    stored = await follow_ups_by_type(runtime)
    assert set(stored) == {"Report", "Success"}
    report, success = stored["Report"], stored["Success"]
    assert report.command_id == follow_up_command_id("d", batch_id, FollowUpEvent.ON_COMPLETE)
    assert success.command_id == batch.follow_up(FollowUpEvent.ON_SUCCESS).command_id  # type: ignore[union-attr]
    assert report.data == {
        "to": "ops",
        "batch": batch_part(
            batch_id,
            FollowUpEvent.ON_COMPLETE,
            BatchStatus.COMPLETED,
            total_count=2,
            completed_count=2,
        ),
    }
    assert success.max_attempts == 2 and report.max_attempts is None
    assert report.correlation_id == batch_id and report.batch_id is None
    sent = (await runtime.bus.get_audit_trail(report.command_id, domain="f"))[0]
    assert sent.event_type is AuditEventType.SENT
    assert sent.details is not None
    assert sent.details["follow_up_of"] == str(batch_id)
    assert sent.details["follow_up_event"] == "ON_COMPLETE"


async def test_on_failure_is_sent_at_the_first_failure_and_once_whatever_follows(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    runtime = triobus_runtime
    await register_work(runtime)
    members = commands("rule", "tsq")
    batch_id = await runtime.bus.create_batch("d", members, **ALL_THREE)
    await runtime.start_worker("d", poll_interval=0.05)

    async def parked() -> bool:
        batch = await runtime.bus.get_batch("d", batch_id)
        assert batch is not None
        return batch.failed_count == 1 and batch.in_troubleshooting_count == 1

    await eventually(parked)
    stored = await follow_ups_by_type(runtime)
    assert set(stored) == {"Failure"}  # the batch is still open: the TSQ holds it
    failure = stored["Failure"].data["batch"]
    assert failure["event"] == "ON_FAILURE" and failure["status"] == "IN_PROGRESS"
    # both members may end in the same statement, which is then the first failure
    assert failure["failed_count"] + failure["in_troubleshooting_count"] in (1, 2)

    # the member goes back to PENDING and into the TSQ again: no second on_failure
    assert await runtime.tsq.retry_batch("d", batch_id, operator="alice") == 1

    async def parked_again() -> bool:
        return await parked() and await runtime.tsq.count_troubleshooting("d") == 1

    await eventually(parked_again)
    await runtime.tsq.operator_cancel("d", members[1].command_id, "no use", operator="alice")
    batch = await runtime.wait_batch("d", batch_id, timeout=15)
    assert batch.status is BatchStatus.COMPLETED_WITH_FAILURES
    stored = await follow_ups_by_type(runtime)
    assert set(stored) == {"Failure", "Report"}
    assert stored["Report"].data["batch"] == batch_part(
        batch_id,
        FollowUpEvent.ON_COMPLETE,
        BatchStatus.COMPLETED_WITH_FAILURES,
        total_count=2,
        failed_count=1,
        canceled_count=1,
    )
    assert [f.sent for f in batch.follow_ups] == [True, False, True]


async def test_a_member_put_right_by_an_operator_lets_the_batch_succeed_after_on_failure(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    """A batch whose only failure went to the TSQ and was then retried with corrected data
    completes as COMPLETED: on_failure was sent, and on_success is too."""
    runtime = triobus_runtime
    await register_work(runtime)
    members = commands("ok", "tsq")
    batch_id = await runtime.bus.create_batch("d", members, **ALL_THREE)
    await runtime.start_worker("d", poll_interval=0.05)

    async def in_tsq() -> bool:
        return await runtime.tsq.count_troubleshooting("d") == 1

    await eventually(in_tsq)
    await runtime.tsq.operator_retry("d", members[1].command_id, data={"outcome": "ok"})
    batch = await runtime.wait_batch("d", batch_id, timeout=15)
    assert batch.status is BatchStatus.COMPLETED
    assert set(await follow_ups_by_type(runtime)) == {"Failure", "Report", "Success"}


async def test_follow_ups_commit_with_the_transaction_that_completes_the_batch(
    triobus_runtime: Runtime, triobus_dsn: str, eventually: Callable[..., Any]
) -> None:
    """An open batch whose members are all done completes when it is closed: in the
    closing transaction, so its follow-up is invisible before it commits and gone if it
    rolls back."""
    runtime = triobus_runtime
    await register_work(runtime)
    batch_id = await runtime.bus.create_batch("d", commands("ok"), open=True, **ALL_THREE)
    await runtime.start_worker("d", poll_interval=0.05)
    await eventually(lambda: runtime.bus.list_batch_commands("d", batch_id, status="COMPLETED"))
    assert await follow_ups_by_type(runtime) == {}  # done but open: not complete

    class Rollback(Exception):
        pass

    try:
        async with runtime.transaction() as conn:
            assert await runtime.bus.close_batch("d", batch_id, conn=conn) is True
            raise Rollback
    except Rollback:
        pass
    batch = await runtime.bus.get_batch("d", batch_id)
    assert batch is not None and batch.is_open and batch.status is BatchStatus.IN_PROGRESS
    assert await follow_ups_by_type(runtime) == {}

    other = await connect(triobus_dsn)
    try:
        async with runtime.transaction() as conn:
            assert await runtime.bus.close_batch("d", batch_id, conn=conn) is True
            rows = await other.fetch_all("SELECT 1 FROM triobus.command WHERE domain = 'f'")
            assert rows == []
    finally:
        await other.close()
    assert set(await follow_ups_by_type(runtime)) == {"Report", "Success"}
    events = [e.event_type for e in await runtime.bus.get_audit_trail(batch_id, domain="d")]
    assert events == [
        AuditEventType.BATCH_STARTED,
        AuditEventType.BATCH_CLOSED,
        AuditEventType.BATCH_COMPLETED,
    ]


async def test_racing_workers_complete_a_batch_and_write_each_follow_up_once(
    triobus_runtime: Runtime, triobus_dsn: str
) -> None:
    """Two worker processes and this runtime's worker finish the last members of a batch
    at about the same time, again and again."""
    runtime = triobus_runtime
    await register_work(runtime)
    batch_ids = [
        await runtime.bus.create_batch(
            "d",
            [BatchCommand("Work", uuid.uuid4(), {"outcome": o}) for o in ["ok"] * 29 + ["rule"]],
            **ALL_THREE,
        )
        for _ in range(10)
    ]
    processes = [await start_worker_process(triobus_dsn) for _ in range(2)]
    try:
        await runtime.start_worker("d", concurrency=8)
        for batch_id in batch_ids:
            batch = await runtime.wait_batch("d", batch_id, timeout=60)
            assert batch.status is BatchStatus.COMPLETED_WITH_FAILURES
    finally:
        for process in processes:
            process.kill()
            await process.wait()
    found = await runtime.bus.query_commands(domain="f", limit=1000)
    keys = sorted((c.data["batch"]["batch_id"], c.command_type) for c in found)
    assert keys == sorted((str(b), t) for b in batch_ids for t in ("Report", "Failure"))
