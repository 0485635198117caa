"""Batches, their counts and their completion callbacks (seed story S043), real PostgreSQL."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import trio

from tests.integration.batch_work import Calls, commands, register_work, start_worker_process
from triobus.actors import (
    AuditEventType,
    BatchCommand,
    BatchMetadata,
    BatchNotFoundError,
    BatchStatus,
    CommandStatus,
    DuplicateBatchError,
    DuplicateCommandError,
    Runtime,
    ValidationError,
    open_runtime,
)
from triobus.persistence.driver import connect


async def recount(dsn: str, batch_id: uuid.UUID) -> dict[str, int]:
    conn = await connect(dsn)
    try:
        rows = await conn.fetch_all(
            "SELECT status, count(*) AS n FROM triobus.command WHERE batch_id = %s GROUP BY status",
            (batch_id,),
        )
    finally:
        await conn.close()
    return {r["status"]: int(r["n"]) for r in rows}


def assert_counts_match(batch: BatchMetadata, counted: dict[str, int]) -> None:
    assert batch.completed_count == counted.get("COMPLETED", 0)
    assert batch.failed_count == counted.get("FAILED", 0)
    assert batch.canceled_count == counted.get("CANCELED", 0)
    assert batch.in_troubleshooting_count == counted.get("IN_TROUBLESHOOTING_QUEUE", 0)
    assert batch.total_count == sum(counted.values())


async def batch_events(runtime: Runtime, batch_id: uuid.UUID) -> list[AuditEventType]:
    return [e.event_type for e in await runtime.bus.get_audit_trail(batch_id, domain="d")]


# -- the seed's test mapping -------------------------------------------------------------


async def test_batch_callback_on_complete(triobus_runtime: Runtime) -> None:
    await register_work(triobus_runtime)
    on_complete = Calls()
    batch_id = await triobus_runtime.bus.create_batch(
        "d", commands("ok", "ok", "ok"), on_complete=on_complete
    )
    await triobus_runtime.start_worker("d")
    batch = await on_complete.wait()
    assert batch.batch_id == batch_id
    assert batch.status is BatchStatus.COMPLETED
    assert batch.completed_count == 3
    assert batch.completed_at is not None
    with trio.fail_after(10):
        while triobus_runtime.statistics().batches:  # the actor ends after its one call
            await trio.testing.wait_all_tasks_blocked()
    assert len(on_complete.calls) == 1


async def test_batch_callback_metadata(triobus_runtime: Runtime) -> None:
    await register_work(triobus_runtime)
    on_complete = Calls()
    batch_id = await triobus_runtime.bus.create_batch(
        "d",
        commands("ok", "rule"),
        name="nightly import",
        custom_data={"source": "s3"},
        on_complete=on_complete,
    )
    await triobus_runtime.start_worker("d")
    batch = await on_complete.wait()
    assert (batch.domain, batch.batch_id, batch.name) == ("d", batch_id, "nightly import")
    assert batch.custom_data == {"source": "s3"}
    assert batch.status is BatchStatus.COMPLETED_WITH_FAILURES
    assert (batch.total_count, batch.completed_count, batch.failed_count) == (2, 1, 1)
    assert (batch.canceled_count, batch.in_troubleshooting_count) == (0, 0)
    assert batch.started_at is not None and batch.completed_at is not None
    assert batch.created_at <= batch.started_at <= batch.completed_at
    assert batch == await triobus_runtime.bus.get_batch("d", batch_id)


async def test_batch_callback_with_failures(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    await register_work(triobus_runtime)
    on_complete = Calls()
    batch = commands("ok", "ok", "tsq")
    batch_id = await triobus_runtime.bus.create_batch("d", batch, on_complete=on_complete)
    await triobus_runtime.start_worker("d")

    async def parked() -> bool:
        return await triobus_runtime.tsq.count_troubleshooting("d") == 1

    await eventually(parked)
    assert on_complete.calls == []
    await triobus_runtime.tsq.operator_cancel("d", batch[2].command_id, "not needed")
    result = await on_complete.wait()
    assert result.status is BatchStatus.COMPLETED_WITH_FAILURES
    assert (result.completed_count, result.canceled_count) == (2, 1)
    assert result.in_troubleshooting_count == 0
    assert await batch_events(triobus_runtime, batch_id) == [
        AuditEventType.BATCH_STARTED,
        AuditEventType.BATCH_COMPLETED,
    ]


async def test_batch_callback_not_called_with_tsq(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    await register_work(triobus_runtime)
    on_complete = Calls()
    batch_id = await triobus_runtime.bus.create_batch(
        "d", commands("ok", "ok", "tsq"), on_complete=on_complete
    )
    await triobus_runtime.start_worker("d")

    async def actor_saw_every_member_settle() -> bool:  # the TSQ's ack may come last
        (watch,) = triobus_runtime.statistics().batches
        counts = watch.counts
        return counts is not None and (counts.completed, counts.in_troubleshooting) == (2, 1)

    await eventually(actor_saw_every_member_settle)
    assert await triobus_runtime.tsq.count_troubleshooting("d") == 1
    await trio.testing.wait_all_tasks_blocked()
    assert on_complete.calls == []
    batch = await triobus_runtime.bus.get_batch("d", batch_id)
    assert batch is not None
    assert batch.status is BatchStatus.IN_PROGRESS
    assert (batch.completed_count, batch.in_troubleshooting_count) == (2, 1)
    assert batch.completed_at is None
    assert await batch_events(triobus_runtime, batch_id) == [AuditEventType.BATCH_STARTED]


async def test_batch_callback_error_handled(
    triobus_runtime: Runtime, caplog: pytest.LogCaptureFixture, eventually: Callable[..., Any]
) -> None:
    await register_work(triobus_runtime)
    raised = trio.Event()

    async def broken_callback(batch: BatchMetadata) -> None:
        raised.set()
        raise RuntimeError("callback bug")

    batch_id = await triobus_runtime.bus.create_batch(
        "d", commands("ok"), on_complete=broken_callback
    )
    worker = await triobus_runtime.start_worker("d")
    with trio.fail_after(30):
        await raised.wait()
    # The worker keeps working: a later batch completes and its callback fires.
    after = Calls()
    await triobus_runtime.bus.create_batch("d", commands("ok"), on_complete=after)
    await after.wait()
    batch = await triobus_runtime.bus.get_batch("d", batch_id)
    assert batch is not None and batch.status is BatchStatus.COMPLETED
    assert AuditEventType.BATCH_COMPLETED in await batch_events(triobus_runtime, batch_id)

    async def both_counted() -> bool:  # the callback may run before the acker counts
        return worker.statistics().completed == 2

    await eventually(both_counted)
    (record,) = [r for r in caplog.records if "callback bug" in str(r.exc_info)]
    assert str(batch_id) in record.getMessage() and record.levelno == logging.ERROR


# -- the seed's other scenarios ------------------------------------------------------------


async def test_callback_receives_accurate_final_state_under_concurrent_completions(
    triobus_runtime: Runtime, triobus_dsn: str
) -> None:
    await register_work(triobus_runtime)
    on_complete = Calls()
    outcomes = ["ok"] * 150 + ["rule"] * 50
    batch_id = await triobus_runtime.bus.create_batch(
        "d", commands(*outcomes), on_complete=on_complete
    )
    for _ in range(2):
        await triobus_runtime.start_worker("d", concurrency=16)
    batch = await on_complete.wait()
    assert (batch.completed_count, batch.failed_count) == (150, 50)
    assert_counts_match(batch, await recount(triobus_dsn, batch_id))
    assert (await batch_events(triobus_runtime, batch_id)).count(
        AuditEventType.BATCH_COMPLETED
    ) == 1


# -- across processes -----------------------------------------------------------------------


async def test_callback_fires_once_when_another_process_completes_the_batch(
    triobus_runtime: Runtime, triobus_dsn: str
) -> None:
    on_complete = Calls()
    batch_id = await triobus_runtime.bus.create_batch(
        "d", commands("ok", "ok", "ok"), on_complete=on_complete
    )
    process = await start_worker_process(triobus_dsn)
    try:
        batch = await on_complete.wait()
    finally:
        process.kill()
        await process.wait()
    assert batch.batch_id == batch_id and batch.completed_count == 3
    await trio.testing.wait_all_tasks_blocked()
    assert len(on_complete.calls) == 1
    assert triobus_runtime.statistics().workers == ()  # nothing ran in this process


async def test_stress_two_worker_processes_mixed_outcomes(
    triobus_runtime: Runtime, triobus_dsn: str
) -> None:
    on_complete = Calls()
    outcomes = ["ok"] * 1700 + ["rule"] * 200 + ["tsq"] * 100
    batch = commands(*outcomes)
    to_complete = {c.command_id for c in batch[1900:1950]}
    batch_id = await triobus_runtime.bus.create_batch("d", batch, on_complete=on_complete)
    processes = [await start_worker_process(triobus_dsn, concurrency=16) for _ in range(2)]
    try:
        resolved = 0
        with trio.fail_after(120):
            while resolved < 100:
                for item in await triobus_runtime.tsq.list_troubleshooting("d", limit=100):
                    if item.command_id in to_complete:
                        await triobus_runtime.tsq.operator_complete("d", item.command_id)
                    else:
                        await triobus_runtime.tsq.operator_cancel("d", item.command_id, "no")
                    resolved += 1
                if resolved < 100:
                    await trio.sleep(0.05)
        final = await on_complete.wait(60)
    finally:
        for process in processes:
            process.kill()
            await process.wait()
    assert final.status is BatchStatus.COMPLETED_WITH_FAILURES
    assert (final.completed_count, final.failed_count, final.canceled_count) == (1750, 200, 50)
    assert_counts_match(final, await recount(triobus_dsn, batch_id))
    events = await batch_events(triobus_runtime, batch_id)
    assert events == [AuditEventType.BATCH_STARTED, AuditEventType.BATCH_COMPLETED]
    await trio.testing.wait_all_tasks_blocked()
    assert len(on_complete.calls) == 1


# -- lost notifications -----------------------------------------------------------------------


async def test_notifier_connection_terminated_around_completion(
    triobus_dsn: str, eventually: Callable[..., Any]
) -> None:
    on_complete = Calls()
    async with open_runtime(triobus_dsn, migrate=False, batch_reconcile_interval=0.5) as runtime:
        batch_id = await runtime.bus.create_batch(
            "d", commands(*["ok"] * 200), on_complete=on_complete
        )
        killer = await connect(triobus_dsn)
        kill_listeners = (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE query LIKE 'LISTEN%%' AND pid <> pg_backend_pid()"
        )
        await killer.execute(kill_listeners)  # at least once before the batch can complete
        process = await start_worker_process(triobus_dsn)
        try:
            with trio.move_on_after(30):
                while not on_complete.called.is_set():  # keep killing the LISTEN backends
                    await killer.execute(kill_listeners)
                    await trio.sleep(0.05)
            result = await on_complete.wait(30)
        finally:
            await killer.close()
            process.kill()
            await process.wait()
        assert result.batch_id == batch_id and result.completed_count == 200

        async def reconnected() -> bool:
            return runtime.statistics().notifier_reconnects >= 1

        await eventually(reconnected)
        await trio.testing.wait_all_tasks_blocked()
    assert len(on_complete.calls) == 1


# -- batch creation -------------------------------------------------------------------------------


async def test_create_batch_is_all_or_nothing(triobus_runtime: Runtime) -> None:
    bus = triobus_runtime.bus
    stored = await bus.send("d", "Work", uuid.uuid4(), {})
    batch = commands("ok", "ok")
    clash = [*batch, BatchCommand(command_type="Work", command_id=stored.command_id, data={})]
    with pytest.raises(DuplicateCommandError, match=str(stored.command_id)):
        await bus.create_batch("d", clash)
    repeated = [*batch, batch[0]]
    with pytest.raises(DuplicateCommandError, match=str(batch[0].command_id)):
        await bus.create_batch("d", repeated)
    with pytest.raises(ValidationError, match="at least one command"):
        await bus.create_batch("d", [])
    with pytest.raises(ValidationError, match=r"commands\[1\] must be a BatchCommand"):
        await bus.create_batch("d", [batch[0], {"command_type": "Work"}])  # type: ignore[list-item]
    bad = BatchCommand(command_type="Work", command_id=uuid.uuid4(), data={"x": float("nan")})
    with pytest.raises(ValidationError, match="not JSON-serialisable"):
        await bus.create_batch("d", [batch[0], bad])
    with pytest.raises(ValidationError, match="async callable"):
        await bus.create_batch("d", batch, on_complete=print)  # type: ignore[arg-type]
    assert await bus.list_batches("d") == []
    assert len(await bus.query_commands()) == 1  # only the command sent first

    batch_id = await bus.create_batch("d", batch)
    with pytest.raises(DuplicateBatchError):
        await bus.create_batch("d", commands("ok"), batch_id=batch_id)
    with pytest.raises(BatchNotFoundError):
        await triobus_runtime.watch_batch("d", uuid.uuid4(), Calls())


async def test_batch_queries(triobus_runtime: Runtime) -> None:
    bus = triobus_runtime.bus
    first = await bus.create_batch("d", commands("ok"), name="first")
    second_commands = commands("ok", "ok")
    second = await bus.create_batch("d", second_commands, name="second")
    await bus.create_batch("other", commands("ok"))
    assert [b.batch_id for b in await bus.list_batches("d")] == [second, first]
    assert [b.batch_id for b in await bus.list_batches("d", limit=1, offset=1)] == [first]
    assert await bus.list_batches("d", status="COMPLETED") == []
    assert len(await bus.list_batches("d", status=BatchStatus.PENDING)) == 2
    listed = await bus.list_batch_commands("d", second)
    assert {c.command_id for c in listed} == {c.command_id for c in second_commands}
    assert all(c.batch_id == second and c.status is CommandStatus.PENDING for c in listed)
    trail = await bus.get_audit_trail(second_commands[0].command_id)
    assert trail[0].details is not None and trail[0].details["batch_id"] == str(second)
    assert trail[0].details.keys() == {
        "command_type",
        "correlation_id",
        "reply_to",
        "max_attempts",
        "visible_at",
        "batch_id",
    }
    assert await bus.get_batch("other", second) is None
    with pytest.raises(ValidationError, match="status 'DONE'"):
        await bus.list_batches("d", status="DONE")


async def test_a_large_batch_is_created_in_one_call(triobus_runtime: Runtime) -> None:
    batch_id = await triobus_runtime.bus.create_batch(
        "d",
        (
            BatchCommand(command_type="Work", command_id=uuid.uuid4(), data={"n": n})
            for n in range(20_000)
        ),
    )
    batch = await triobus_runtime.bus.get_batch("d", batch_id)
    assert batch is not None and batch.total_count == 20_000
    assert len(await triobus_runtime.bus.list_batch_commands("d", batch_id, limit=10_000)) == (
        10_000
    )
