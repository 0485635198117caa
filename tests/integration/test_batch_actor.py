"""The batch actor: one watched batch, its counts, and its one callback invocation."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import trio

from tests.integration.batch_work import Calls, commands, register_work
from triobus.actors import BatchMetadata, BatchNotFoundError, Runtime, open_runtime
from triobus.actors.batch_actor import BatchActor
from triobus.actors.messages import BatchFinished, BatchProgress
from triobus.persistence.records import BatchCounts


def actor_of(runtime: Runtime, batch_id: uuid.UUID, **options: Any) -> BatchActor:
    return BatchActor(
        "d",
        batch_id,
        pool=runtime.pool,
        notifier=runtime.notifier,
        on_complete=options.get("on_complete"),
        callback_timeout=options.get("callback_timeout", 1.0),
    )


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


async def counts_after_progress(
    runtime: Runtime, eventually: Callable[..., Any], outcomes: list[str], progress: BatchCounts
) -> BatchMetadata:
    """The counts an actor holds after its first read of a batch whose handlers have all
    run, and then `progress` (delivered before it started, so handled after that read)."""
    await register_work(runtime)
    batch_id = await runtime.bus.create_batch("d", commands(*outcomes))
    worker = await runtime.start_worker("d")

    async def settled() -> bool:
        batch = await runtime.bus.get_batch("d", batch_id)
        return batch is not None and batch.in_troubleshooting_count == outcomes.count("tsq")

    await eventually(settled)
    await worker.stop()
    actor = actor_of(runtime, batch_id)
    actor.deliver(BatchProgress("d", batch_id, progress))
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)

        async def handled() -> bool:
            return actor.messages == 1

        await eventually(handled)
        assert not actor.done.is_set()  # the TSQ members hold the batch open
        nursery.cancel_scope.cancel()
    assert actor.batch is not None
    return actor.batch


async def test_batch_actor_never_counts_a_commit_twice(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    """Progress of a commit that the actor's first read already includes (it arrived
    while the actor started) must not be added on top of that read."""
    counts = await counts_after_progress(
        triobus_runtime, eventually, ["ok", "tsq", "tsq"], BatchCounts(1, 0, 0, 2)
    )
    assert (counts.completed_count, counts.in_troubleshooting_count) == (1, 2)


async def test_progress_never_lowers_a_terminal_count_read_from_the_database(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    """Progress messages may arrive out of order: an older one changes nothing terminal,
    and the troubleshooting count stays within what the terminal counts leave open."""
    counts = await counts_after_progress(
        triobus_runtime, eventually, ["ok", "ok", "tsq"], BatchCounts(1, 0, 0, 5)
    )
    assert (counts.completed_count, counts.in_troubleshooting_count) == (2, 1)


async def test_a_hint_makes_it_read_and_a_completed_batch_gets_its_one_call(
    triobus_runtime: Runtime,
) -> None:
    runtime = triobus_runtime
    await register_work(runtime)
    batch_id = await runtime.bus.create_batch("d", commands("ok"))
    on_complete = Calls()
    actor = actor_of(runtime, batch_id, on_complete=on_complete)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await runtime.start_worker("d")
        final = await on_complete.wait()
        for _ in range(3):  # hints after the end reach nobody: one call, ever
            actor.deliver(BatchFinished("d", batch_id))
        with trio.fail_after(10):
            await actor.done.wait()
    assert final.completed_count == 1 and len(on_complete.calls) == 1
    assert actor.final == final


async def test_a_batch_that_is_not_stored_ends_the_actor_with_batch_not_found(
    triobus_runtime: Runtime,
) -> None:
    actor = actor_of(triobus_runtime, uuid.uuid4())
    with pytest.RaisesGroup(pytest.RaisesExc(BatchNotFoundError, match="not found in domain")):
        await actor.run()
