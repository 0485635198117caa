"""The batch supervisor: actors for watched batches, the reconciliation poll, and
registrations that live in memory only."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import trio

from tests.integration.batch_work import Calls, commands, register_work
from triobus.actors import BatchNotFoundError, BatchStatus, Runtime, open_runtime
from triobus.persistence.driver import connect
from triobus.persistence.records import BatchCounts


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
                    "UPDATE triobus.command SET status = 'COMPLETED', finished_at = now()"
                    " WHERE command_id = %s",
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


async def test_a_watched_batch_that_is_not_stored_is_logged_and_the_runtime_goes_on(
    triobus_runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """`watch_batch` checks that the batch exists; one that is gone by the time its actor
    reads it ends that actor alone, with a log line."""
    missing = uuid.uuid4()
    with trio.fail_after(10), pytest.raises(BatchNotFoundError, match=str(missing)):
        await triobus_runtime._batches.wait("d", missing)
    (record,) = [r for r in caplog.records if "stopped watching" in r.getMessage()]
    assert str(missing) in record.getMessage()
    await register_work(triobus_runtime)
    batch_id = await triobus_runtime.bus.create_batch("d", commands("ok"))
    await triobus_runtime.start_worker("d")
    batch = await triobus_runtime.wait_batch("d", batch_id, timeout=30)
    assert batch.status is BatchStatus.COMPLETED


async def test_operator_actions_reach_the_watching_actor_with_the_counts_they_committed(
    triobus_dsn: str, eventually: Callable[..., Any]
) -> None:
    """A retry takes a member out of the TSQ: the actor learns the new count from the
    action's own commit (the fast path), not from a read of the batch."""
    async with open_runtime(triobus_dsn, migrate=False, batch_reconcile_interval=3600) as rt:
        await register_work(rt)
        batch = commands("ok", "tsq")
        await rt.bus.create_batch("d", batch, on_complete=Calls())
        worker = await rt.start_worker("d")

        async def parked() -> bool:  # both results' progress handled: nothing else comes
            (watch,) = rt.statistics().batches
            return watch.counts == BatchCounts(1, 0, 0, in_troubleshooting=1)

        await eventually(parked)
        await worker.stop()
        (before,) = rt.statistics().batches
        await rt.tsq.operator_retry("d", batch[1].command_id)

        async def retried() -> bool:
            (watch,) = rt.statistics().batches
            return watch.counts is not None and watch.counts.in_troubleshooting == 0

        await eventually(retried)
        (after,) = rt.statistics().batches
        assert after.reads == before.reads and after.messages == before.messages + 1
