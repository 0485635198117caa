"""Events: what a listener hears, when (after the commit), and that a listener can
neither stop nor slow down the worker's work by failing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import trio

from tests.conftest import Proxy
from triobus.actors import (
    BatchCommand,
    Command,
    CommandStatus,
    HandlerContext,
    PermanentCommandError,
    RetryPolicy,
    Runtime,
    TransientCommandError,
    ValidationError,
    open_runtime,
)
from triobus.actors.events import (
    BatchCallbackFailed,
    BatchCompleted,
    CommandClaimed,
    CommandFinished,
    CommandMovedToTroubleshooting,
    CommandRetried,
    CommandSent,
    DatabaseRecovered,
    DatabaseUnavailable,
    Event,
    LeaseExpired,
    OperatorActed,
)
from triobus.persistence.queue import claim_commands

Eventually = Callable[..., Any]


def heard(runtime: Runtime) -> list[Event]:
    """Every event of `runtime` from now on, in order."""
    events: list[Event] = []
    runtime.events.subscribe(events.append)
    return events


def listened(runtime: Runtime) -> bool:
    return runtime.events.active


def of(events: list[Event], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


async def test_a_retried_command_is_heard_from_send_to_completion(
    triobus_runtime: Runtime, eventually: Eventually
) -> None:
    runtime = triobus_runtime
    events = heard(runtime)

    @runtime.registry.handler("d", "Flaky")
    async def flaky(command: Command, ctx: HandlerContext) -> None:
        await trio.sleep(0.01)
        if ctx.attempt == 1:
            raise TransientCommandError("LATER", "try again")

    sent = await runtime.bus.send("d", "Flaky", uuid.uuid4(), {})
    await runtime.start_worker("d", poll_interval=0.05, retry_policy=RetryPolicy(backoff=(0.05,)))

    async def done() -> bool:
        return any(isinstance(e, CommandFinished) and e.status == "COMPLETED" for e in events)

    await eventually(done)
    key: dict[str, Any] = {"domain": "d", "command_type": "Flaky", "command_id": sent.command_id}
    assert events[0] == CommandSent(**key)
    assert [type(e) for e in events] == [
        CommandSent,
        CommandClaimed,
        CommandFinished,
        CommandRetried,
        CommandClaimed,
        CommandFinished,
    ]
    first, retry = of(events, CommandFinished)
    assert (first.attempt, first.outcome, first.status) == (1, "RETRY_SCHEDULED", "PENDING")
    assert (retry.attempt, retry.outcome, retry.status) == (2, "COMPLETED", "COMPLETED")
    assert first.duration >= 0.01 and retry.duration >= 0.01
    assert of(events, CommandRetried)[0] == CommandRetried(**key, attempt=1, delay=0.05)
    claims = of(events, CommandClaimed)
    assert [c.attempt for c in claims] == [1, 2]
    assert all(0 <= c.waited < 10 for c in claims)


async def test_the_troubleshooting_queue_and_the_operator_are_heard(
    triobus_runtime: Runtime, eventually: Eventually
) -> None:
    runtime = triobus_runtime
    events = heard(runtime)

    @runtime.registry.handler("d", "Broken")
    async def broken(command: Command, ctx: HandlerContext) -> None:
        raise PermanentCommandError("BROKEN", "needs an operator")

    sent = await runtime.bus.send("d", "Broken", uuid.uuid4(), {})
    await runtime.start_worker("d", poll_interval=0.05)

    async def parked() -> bool:
        return bool(of(events, CommandMovedToTroubleshooting))

    await eventually(parked)
    (moved,) = of(events, CommandMovedToTroubleshooting)
    assert (moved.command_id, moved.attempt, moved.error_code) == (sent.command_id, 1, "BROKEN")
    await runtime.tsq.operator_cancel("d", sent.command_id, reason="no", operator="alice")
    assert of(events, OperatorActed) == [
        OperatorActed(
            action="cancel",
            domain="d",
            operator="alice",
            count=1,
            command_ids=(sent.command_id,),
        )
    ]


async def test_writes_in_the_application_transaction_are_heard_after_its_commit(
    triobus_runtime: Runtime,
) -> None:
    runtime = triobus_runtime
    events = heard(runtime)
    async with runtime.transaction() as conn:
        sent = await runtime.bus.send("d", "T", uuid.uuid4(), {}, conn=conn)
        assert events == []  # not committed yet
    assert events == [CommandSent(domain="d", command_type="T", command_id=sent.command_id)]

    async def rolled_back() -> None:
        async with runtime.transaction() as conn:
            await runtime.bus.send("d", "T", uuid.uuid4(), {}, conn=conn)
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError, match="rolled back"):
        await rolled_back()
    assert len(events) == 1  # nothing of what rolled back


async def test_a_batch_is_heard_member_by_member_then_completed_once(
    triobus_runtime: Runtime,
) -> None:
    runtime = triobus_runtime
    events = heard(runtime)

    @runtime.registry.handler("d", "Work")
    async def work(command: Command, ctx: HandlerContext) -> None:
        pass

    ids = [uuid.uuid4() for _ in range(3)]
    batch_id = await runtime.bus.create_batch("d", [BatchCommand("Work", i, {}) for i in ids])
    await runtime.drain("d")
    assert [(e.command_id, e.batch_id) for e in of(events, CommandSent)] == [
        (i, batch_id) for i in ids
    ]
    (completed,) = of(events, BatchCompleted)
    assert (completed.domain, completed.batch_id) == ("d", batch_id)
    assert completed.counts is not None and completed.counts.completed == 3
    # a cancel that completes a batch is heard as the operator's action and a completion
    doomed = await runtime.bus.create_batch("d", [BatchCommand("Work", uuid.uuid4(), {})])
    await runtime.bus.cancel_batch("d", doomed, reason="no", operator="bob")
    acted = of(events, OperatorActed)
    assert acted == [
        OperatorActed(action="cancel_batch", domain="d", operator="bob", count=1, batch_id=doomed)
    ]
    assert [e.batch_id for e in of(events, BatchCompleted)] == [batch_id, doomed]


async def test_a_failing_batch_callback_is_heard(
    triobus_runtime: Runtime, eventually: Eventually
) -> None:
    runtime = triobus_runtime
    events = heard(runtime)

    async def broken(batch: object) -> None:
        raise ValueError("no report today")

    batch_id = await runtime.bus.create_batch("d", [BatchCommand("T", uuid.uuid4(), {})])
    await runtime.watch_batch("d", batch_id, broken)
    await runtime.bus.cancel_batch("d", batch_id, reason="done")

    async def failed() -> bool:  # the callback runs in the batch actor
        return bool(of(events, BatchCallbackFailed))

    await eventually(failed)
    assert of(events, BatchCallbackFailed) == [
        BatchCallbackFailed(domain="d", batch_id=batch_id, error="ValueError: no report today")
    ]


async def test_a_claim_after_an_expired_lease_is_heard(
    triobus_runtime: Runtime, eventually: Eventually
) -> None:
    runtime = triobus_runtime
    events = heard(runtime)

    @runtime.registry.handler("d", "T")
    async def handle(command: Command, ctx: HandlerContext) -> None:
        pass

    sent = await runtime.bus.send("d", "T", uuid.uuid4(), {})
    async with runtime.pool.connection() as conn:  # a worker that claims, then dies
        (claim,) = await claim_commands(
            conn, "d", limit=1, visibility_timeout=0.1, default_max_attempts=5
        )
    assert not claim.lease_expired
    await runtime.start_worker("d", poll_interval=0.05)

    async def finished() -> bool:
        return bool(of(events, CommandFinished))

    await eventually(finished)
    key: dict[str, Any] = {
        "domain": "d",
        "command_type": "T",
        "command_id": sent.command_id,
        "attempt": 2,
    }
    assert of(events, LeaseExpired) == [LeaseExpired(**key)]
    (claimed,) = of(events, CommandClaimed)
    assert claimed.attempt == 2 and claimed.waited >= 0


async def test_a_database_outage_and_its_end_are_heard_once(
    proxy: Proxy, eventually: Eventually
) -> None:
    async with open_runtime(proxy.dsn, migrate=False, retention=None) as runtime:
        events = heard(runtime)
        await runtime.start_worker("d", poll_interval=0.05)
        proxy.cut()

        async def over() -> bool:
            return bool(of(events, DatabaseRecovered))

        await eventually(over)
        assert [type(e) for e in events if not isinstance(e, CommandClaimed)] == [
            DatabaseUnavailable,
            DatabaseRecovered,
        ]
        assert of(events, DatabaseRecovered)[0].seconds >= 0


async def test_a_failing_listener_is_logged_and_the_work_goes_on(
    triobus_runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = triobus_runtime

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    runtime.events.subscribe(broken)
    events = heard(runtime)

    @runtime.registry.handler("d", "T")
    async def handle(command: Command, ctx: HandlerContext) -> None:
        pass

    sent = await runtime.bus.send("d", "T", uuid.uuid4(), {})
    await runtime.drain("d")
    command = await runtime.bus.get_command("d", sent.command_id)
    assert command is not None and command.status is CommandStatus.COMPLETED
    assert [type(e) for e in events] == [CommandSent, CommandClaimed, CommandFinished]
    failures = [r for r in caplog.records if r.getMessage().startswith("an event listener")]
    assert len(failures) == 3 and failures[0].exc_info is not None


async def test_an_unsubscribed_listener_hears_nothing_more(triobus_runtime: Runtime) -> None:
    runtime = triobus_runtime
    events: list[Event] = []
    unsubscribe = runtime.events.subscribe(events.append)
    assert listened(runtime)
    await runtime.bus.send("d", "T", uuid.uuid4(), {})
    unsubscribe()
    assert not listened(runtime)
    await runtime.bus.send("d", "T", uuid.uuid4(), {})
    assert len(events) == 1
    with pytest.raises(ValidationError, match="listener must be callable, got int"):
        runtime.events.subscribe(5)  # type: ignore[arg-type]
