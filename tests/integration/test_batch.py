"""Batches, their counts and their completion callbacks (seed story S043), real PostgreSQL."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from triobus.actors import (
    AuditEventType,
    BatchCommand,
    BatchMetadata,
    BatchNotFoundError,
    BatchStatus,
    BusinessRuleError,
    Command,
    CommandStatus,
    DuplicateBatchError,
    DuplicateCommandError,
    HandlerContext,
    PermanentCommandError,
    Runtime,
    ValidationError,
    open_runtime,
)
from triobus.actors.batch_actor import BatchActor
from triobus.actors.messages import BatchProgress
from triobus.persistence.driver import connect
from triobus.persistence.records import BatchCounts

WORKER_SCRIPT = Path(__file__).with_name("worker_process.py")


class Calls:
    """An on_complete callback that records its calls; `wait()` returns the first."""

    def __init__(self) -> None:
        self.calls: list[BatchMetadata] = []
        self.called = trio.Event()

    async def __call__(self, batch: BatchMetadata) -> None:
        self.calls.append(batch)
        self.called.set()

    async def wait(self, seconds: float = 30.0) -> BatchMetadata:
        with trio.fail_after(seconds):
            await self.called.wait()
        return self.calls[0]


def commands(*outcomes: str) -> list[BatchCommand]:
    return [
        BatchCommand(command_type="Work", command_id=uuid.uuid4(), data={"outcome": o})
        for o in outcomes
    ]


async def register_work(runtime: Runtime) -> None:
    @runtime.registry.handler("d", "Work")
    async def work(command: Command, ctx: HandlerContext) -> dict[str, str]:
        outcome = command.data["outcome"]
        if outcome == "rule":
            raise BusinessRuleError("RULE", "refused")
        if outcome == "tsq":
            raise PermanentCommandError("NEEDS_OPERATOR", "an operator must decide")
        return {"done": outcome}


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

    async def actor_saw_two_completions() -> bool:
        (watch,) = triobus_runtime.statistics().batches
        return watch.counts is not None and watch.counts.completed_count == 2

    await eventually(actor_saw_two_completions)
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


async def test_registration_is_lost_on_restart_and_the_batch_still_completes(
    triobus_dsn: str,
) -> None:
    lost = Calls()
    async with open_runtime(triobus_dsn, migrate=False) as first:
        batch_id = await first.bus.create_batch("d", commands("ok", "ok"), on_complete=lost)
    async with open_runtime(triobus_dsn, migrate=False) as second:  # "after a restart"
        await register_work(second)
        await second.start_worker("d")
        batch = await second.wait_batch("d", batch_id, timeout=30)
        assert batch.status is BatchStatus.COMPLETED
        again = Calls()
        await second.watch_batch("d", batch_id, again)  # fires at once: already complete
        assert (await again.wait()).batch_id == batch_id
    assert lost.calls == []


async def test_batch_no_callback_in_flight_is_fine_with_wait_batch(
    triobus_runtime: Runtime,
) -> None:
    await register_work(triobus_runtime)
    batch_id = await triobus_runtime.bus.create_batch("d", commands("ok", "rule"))
    await triobus_runtime.start_worker("d")
    batch = await triobus_runtime.wait_batch("d", batch_id, timeout=30)
    assert batch.status is BatchStatus.COMPLETED_WITH_FAILURES
    other = await triobus_runtime.bus.create_batch("d", commands("tsq"))
    with pytest.raises(trio.TooSlowError):
        await triobus_runtime.wait_batch("d", other, timeout=0.5)


# -- across processes -----------------------------------------------------------------------


async def start_worker_process(dsn: str, concurrency: int = 8) -> trio.Process:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(WORKER_SCRIPT), dsn, "d", "outcome", str(concurrency)],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    line = b""
    with trio.fail_after(30):
        while b"ready" not in line:
            chunk = await process.stdout.receive_some()
            assert chunk, f"worker process exited ({process.poll()})"
            line += chunk
    return process


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


async def test_reconciliation_delivers_a_completion_whose_notification_was_lost(
    triobus_dsn: str,
) -> None:
    on_complete = Calls()
    async with open_runtime(triobus_dsn, migrate=False, batch_reconcile_interval=0.2) as runtime:
        batch = commands("ok")
        batch_id = await runtime.bus.create_batch("d", batch, on_complete=on_complete)
        # Complete the batch behind the runtime's back, as another process would, but
        # without the NOTIFY (as if it had been lost).
        conn = await connect(triobus_dsn)
        try:
            async with conn.transaction():
                await conn.execute(
                    "UPDATE triobus.command SET status = 'COMPLETED' WHERE command_id = %s",
                    (batch[0].command_id,),
                )
                await conn.execute(
                    "UPDATE triobus.batch SET status = 'COMPLETED', completed_count = 1,"
                    " completed_at = now() WHERE batch_id = %s",
                    (batch_id,),
                )
        finally:
            await conn.close()
        result = await on_complete.wait(10)
        assert result.status is BatchStatus.COMPLETED
    assert len(on_complete.calls) == 1


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


# -- callbacks that misbehave, and batch creation ------------------------------------------------


async def test_a_hanging_callback_is_cancelled_and_logged(
    triobus_dsn: str, caplog: pytest.LogCaptureFixture, eventually: Callable[..., Any]
) -> None:
    hanging = trio.Event()

    async def hang(batch: BatchMetadata) -> None:
        hanging.set()
        await trio.sleep_forever()

    async with open_runtime(triobus_dsn, migrate=False, batch_callback_timeout=0.3) as runtime:
        await register_work(runtime)
        await runtime.start_worker("d")
        batch_id = await runtime.bus.create_batch("d", commands("ok"), on_complete=hang)
        with trio.fail_after(30):
            await hanging.wait()
        later = Calls()
        await runtime.bus.create_batch("d", commands("ok"), on_complete=later)
        await later.wait()

        async def timed_out() -> bool:
            return any("timed out" in r.getMessage() for r in caplog.records)

        await eventually(timed_out)
    (record,) = [r for r in caplog.records if "timed out" in r.getMessage()]
    assert str(batch_id) in record.getMessage()


async def test_batch_actor_never_counts_a_commit_twice(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    """Progress of a commit that the actor's first read already includes (it arrived
    while the actor started) must not be added on top of that read."""
    runtime = triobus_runtime
    await register_work(runtime)
    batch_id = await runtime.bus.create_batch("d", commands("ok", "tsq", "tsq"))
    await runtime.start_worker("d")

    async def settled() -> bool:
        batch = await runtime.bus.get_batch("d", batch_id)
        return batch is not None and batch.in_troubleshooting_count == 2

    await eventually(settled)
    actor = BatchActor(
        "d",
        batch_id,
        pool=runtime.pool,
        notifier=runtime._notifier,
        on_complete=None,
        callback_timeout=1.0,
    )
    actor.deliver(
        BatchProgress(
            "d", batch_id, BatchCounts(completed=1, failed=0, canceled=0, in_troubleshooting=2)
        )
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)

        async def handled() -> bool:
            return actor.messages == 1

        await eventually(handled)
        assert actor.counts is not None
        assert (actor.counts.completed_count, actor.counts.in_troubleshooting_count) == (1, 2)
        nursery.cancel_scope.cancel()


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
