"""What is done to a batch after it is created: cancel it, retry its TSQ members, add
commands to an open batch and close it. Real PostgreSQL, real workers."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from tests.integration.batch_work import commands, register_work
from triobus.actors import (
    AuditEventType,
    BatchCommand,
    BatchNotFoundError,
    BatchStatus,
    Command,
    CommandStatus,
    DuplicateCommandError,
    FollowUpCommand,
    HandlerContext,
    InvalidOperationError,
    PermanentCommandError,
    ReplyOutcome,
    RetryPolicy,
    Runtime,
    TransientCommandError,
)
from triobus.persistence.queue import claim_commands, release_if_claimed

FOLLOW_UPS: dict[str, Any] = {
    "on_complete_command": FollowUpCommand(domain="f", command_type="Report"),
    "on_success_command": FollowUpCommand(domain="f", command_type="Success"),
    "on_failure_command": FollowUpCommand(domain="f", command_type="Failure"),
}


class Gate:
    """A handler of domain "c" whose commands end as their data says; "block" ones wait
    for `release` (and then fail transiently) after setting `started`."""

    def __init__(self, runtime: Runtime) -> None:
        self.started = trio.Event()
        self.release = trio.Event()

        @runtime.registry.handler("c", "Work")
        async def work(command: Command, ctx: HandlerContext) -> dict[str, str]:
            outcome = command.data["outcome"]
            if outcome == "block":
                self.started.set()
                await self.release.wait()
                raise TransientCommandError("LATER", "try again later")
            if outcome == "transient":
                raise TransientCommandError("LATER", "try again later")
            if outcome == "tsq":
                raise PermanentCommandError("NEEDS_OPERATOR", "an operator must decide")
            return {"done": outcome}


def member(outcome: str, **options: Any) -> BatchCommand:
    return BatchCommand("Work", uuid.uuid4(), {"outcome": outcome}, **options)


async def statuses(runtime: Runtime, batch_id: uuid.UUID) -> dict[str, CommandStatus]:
    """The status of each member, by command id (as a str: BatchCommand takes either)."""
    found = await runtime.bus.list_batch_commands("c", batch_id, limit=1000)
    return {str(c.command_id): c.status for c in found}


async def follow_up_types(runtime: Runtime) -> set[str]:
    return {c.command_type for c in await runtime.bus.query_commands(domain="f")}


# -- cancel --------------------------------------------------------------------------------


async def test_cancel_ends_every_waiting_member_and_lets_the_running_one_finish(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    runtime = triobus_runtime
    gate = Gate(runtime)
    done, parked, backing_off, running = (
        member("ok"),
        member("tsq"),
        member("transient"),
        member("block"),
    )
    later = member("ok", delay=3600.0, reply_to="q")
    members = [done, parked, backing_off, running, later]
    batch_id = await runtime.bus.create_batch("c", members, **FOLLOW_UPS)
    worker = await runtime.start_worker(
        "c", poll_interval=0.05, retry_policy=RetryPolicy(max_attempts=5, backoff=(3600.0,))
    )

    async def settled() -> bool:
        found = await statuses(runtime, batch_id)
        return gate.started.is_set() and [found[str(m.command_id)] for m in members] == [
            CommandStatus.COMPLETED,
            CommandStatus.IN_TROUBLESHOOTING_QUEUE,
            CommandStatus.PENDING,  # waiting out its back-off
            CommandStatus.IN_PROGRESS,
            CommandStatus.PENDING,
        ]

    await eventually(settled)
    canceled = await runtime.bus.cancel_batch("c", batch_id, reason="not wanted", operator="bob")
    assert canceled == 3
    batch = await runtime.bus.get_batch("c", batch_id)
    assert batch is not None
    assert batch.status is BatchStatus.IN_PROGRESS  # the running member holds it open
    assert batch.is_canceled and batch.cancel_reason == "not wanted"
    assert batch.canceled_by == "bob" and not batch.is_open
    assert batch.canceled_count == 3 and batch.completed_count == 1

    # the running attempt ends in a retry: it is canceled instead, and the batch completes
    gate.release.set()
    batch = await runtime.wait_batch("c", batch_id, timeout=15)
    assert batch.status is BatchStatus.COMPLETED_WITH_FAILURES
    assert batch.canceled_count == 4 and batch.completed_count == 1
    found = await statuses(runtime, batch_id)
    assert [found[str(m.command_id)] for m in members] == [CommandStatus.COMPLETED] + [
        CommandStatus.CANCELED
    ] * 4

    # the backing-off member's retry counts as one; the running member's, canceled instead,
    # counts as what it became (once the acker has counted it: the batch may complete first)
    async def counted() -> bool:
        stats = worker.statistics()
        return (stats.retried, stats.canceled_with_batch) == (1, 1)

    await eventually(counted)
    trail = await runtime.bus.get_audit_trail(running.command_id, domain="c")
    assert trail[-1].event_type is AuditEventType.CANCELED_WITH_BATCH
    assert trail[-1].details is not None
    assert trail[-1].details["instead_of"] == "RETRY_SCHEDULED"
    trail = await runtime.bus.get_audit_trail(later.command_id, domain="c")
    assert trail[-1].event_type is AuditEventType.CANCELED_WITH_BATCH
    assert trail[-1].details == {"operator": "bob", "reason": "not wanted", "instead_of": "PENDING"}
    [reply] = await runtime.bus.read_replies("q")
    assert reply.command_id == later.command_id and reply.outcome is ReplyOutcome.CANCELED
    assert reply.data == {"reason": "not wanted"}
    events = [e.event_type for e in await runtime.bus.get_audit_trail(batch_id, domain="c")]
    assert events == [
        AuditEventType.BATCH_STARTED,
        AuditEventType.BATCH_CANCELED,
        AuditEventType.BATCH_COMPLETED,
    ]
    # a canceled batch is no success, whatever its members did
    assert await follow_up_types(runtime) == {"Failure", "Report"}
    report = (await runtime.bus.query_commands(domain="f", command_type="Report"))[0]
    assert report.data["batch"]["canceled"] is True
    assert report.data["batch"]["cancel_reason"] == "not wanted"


async def test_a_cancel_with_nothing_running_completes_the_batch_in_its_transaction(
    triobus_runtime: Runtime,
) -> None:
    runtime = triobus_runtime
    batch_id = await runtime.bus.create_batch("c", [member("ok"), member("ok")], **FOLLOW_UPS)
    async with runtime.transaction() as conn:
        assert await runtime.bus.cancel_batch("c", batch_id, reason="r", conn=conn) == 2
        before = await runtime.bus.get_batch("c", batch_id)  # another connection
        assert before is not None and not before.is_canceled
    batch = await runtime.bus.get_batch("c", batch_id)
    assert batch is not None and batch.status is BatchStatus.COMPLETED_WITH_FAILURES
    assert batch.canceled_count == 2 and batch.completed_at is not None
    assert await follow_up_types(runtime) == {"Failure", "Report"}


async def test_a_completed_or_canceled_batch_cannot_be_canceled(triobus_runtime: Runtime) -> None:
    runtime = triobus_runtime
    await register_work(runtime)
    finished = await runtime.bus.create_batch("d", commands("ok"))
    await runtime.start_worker("d", poll_interval=0.05)
    await runtime.wait_batch("d", finished, timeout=15)
    with pytest.raises(InvalidOperationError, match=f"batch {finished} in domain 'd' is COMPLETED"):
        await runtime.bus.cancel_batch("d", finished, reason="late")
    held = await runtime.bus.create_batch("c", [member("ok")])
    await runtime.bus.cancel_batch("c", held, reason="once")
    with pytest.raises(InvalidOperationError, match=f"batch {held} in domain 'c' was canceled"):
        await runtime.bus.cancel_batch("c", held, reason="twice")
    with pytest.raises(BatchNotFoundError):
        await runtime.bus.cancel_batch("c", uuid.uuid4(), reason="none")


async def test_of_two_concurrent_cancels_one_wins(triobus_runtime: Runtime) -> None:
    runtime = triobus_runtime
    for _ in range(5):
        batch_id = await runtime.bus.create_batch("c", [member("ok") for _ in range(50)])
        outcomes: list[object] = []

        async def cancel(reason: str, batch_id: uuid.UUID, outcomes: list[object]) -> None:
            try:
                outcomes.append(await runtime.bus.cancel_batch("c", batch_id, reason=reason))
            except InvalidOperationError as ex:
                outcomes.append(ex)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel, "first", batch_id, outcomes)
            nursery.start_soon(cancel, "second", batch_id, outcomes)
        assert sorted(map(type, outcomes), key=str) == sorted([int, InvalidOperationError], key=str)
        assert 50 in outcomes
        events = await runtime.bus.get_audit_trail(batch_id, domain="c")
        assert [e.event_type for e in events].count(AuditEventType.BATCH_CANCELED) == 1


async def test_a_member_released_at_a_stop_after_its_batch_was_canceled_is_canceled(
    triobus_runtime: Runtime,
) -> None:
    """A prefetched member that never ran goes back to PENDING at a clean stop: not when
    its batch was canceled meanwhile (it would run, or hold the batch open)."""
    runtime = triobus_runtime
    batch_id = await runtime.bus.create_batch("c", [member("ok")])
    async with runtime.pool.connection() as conn:
        [claim] = await claim_commands(
            conn, "c", limit=1, visibility_timeout=30.0, default_max_attempts=3
        )
    assert await runtime.bus.cancel_batch("c", batch_id, reason="r") == 0
    async with runtime.pool.connection() as conn:
        assert await release_if_claimed(conn, "c", [claim]) == 1
    batch = await runtime.bus.get_batch("c", batch_id)
    assert batch is not None and batch.status is BatchStatus.COMPLETED_WITH_FAILURES
    assert set((await statuses(runtime, batch_id)).values()) == {CommandStatus.CANCELED}


# -- retry_batch ---------------------------------------------------------------------------


async def test_retry_batch_sends_every_tsq_member_back_to_pending(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    runtime = triobus_runtime
    await register_work(runtime)
    batch_id = await runtime.bus.create_batch("d", commands("tsq", "tsq", "ok", "rule"))
    await runtime.bus.create_batch("d", commands("tsq"))  # another batch's TSQ member
    await runtime.start_worker("d", poll_interval=0.05)

    async def parked() -> bool:
        return await runtime.tsq.count_troubleshooting("d") == 3

    await eventually(parked)
    await runtime.stop_workers()
    assert await runtime.tsq.retry_batch("d", batch_id, operator="carol") == 2
    pending = await runtime.bus.list_batch_commands("d", batch_id, status="PENDING")
    assert len(pending) == 2
    for command in pending:
        trail = await runtime.bus.get_audit_trail(command.command_id, domain="d")
        assert trail[-1].event_type is AuditEventType.OPERATOR_RETRY
        assert trail[-1].details == {"operator": "carol"}
    assert await runtime.tsq.count_troubleshooting("d") == 1  # the other batch's member
    batch = await runtime.bus.get_batch("d", batch_id)
    assert batch is not None and batch.in_troubleshooting_count == 0
    assert await runtime.tsq.retry_batch("d", batch_id) == 0


async def test_retry_batch_refuses_a_canceled_or_unknown_batch(triobus_runtime: Runtime) -> None:
    runtime = triobus_runtime
    batch_id = await runtime.bus.create_batch("c", [member("ok")])
    await runtime.bus.cancel_batch("c", batch_id, reason="r")
    with pytest.raises(InvalidOperationError, match="was canceled: retrying its members"):
        await runtime.tsq.retry_batch("c", batch_id)
    with pytest.raises(BatchNotFoundError):
        await runtime.tsq.retry_batch("c", uuid.uuid4())


# -- open batches --------------------------------------------------------------------------


async def test_an_open_batch_takes_commands_and_completes_only_once_closed(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    runtime = triobus_runtime
    await register_work(runtime)
    batch_id = await runtime.bus.create_batch("d", [], open=True, **FOLLOW_UPS)
    batch = await runtime.bus.get_batch("d", batch_id)
    assert batch is not None and batch.is_open and batch.total_count == 0
    await runtime.start_worker("d", poll_interval=0.05)
    await runtime.bus.add_to_batch("d", batch_id, commands("ok", "ok"))

    async def both_done() -> bool:
        batch = await runtime.bus.get_batch("d", batch_id)
        return batch is not None and batch.completed_count == 2

    await eventually(both_done)
    batch = await runtime.bus.get_batch("d", batch_id)
    assert batch is not None and batch.status is BatchStatus.IN_PROGRESS  # open: not done
    await runtime.bus.add_to_batch("d", batch_id, commands("ok"))
    assert await runtime.bus.close_batch("d", batch_id) is False  # one member is open
    # closed, and completed too if the last member has just finished
    with pytest.raises(InvalidOperationError, match=r"is (closed|COMPLETED): adding commands"):
        await runtime.bus.add_to_batch("d", batch_id, commands("ok"))
    batch = await runtime.wait_batch("d", batch_id, timeout=15)
    assert batch.status is BatchStatus.COMPLETED and batch.total_count == 3
    assert await follow_up_types(runtime) == {"Report", "Success"}
    with pytest.raises(InvalidOperationError, match="is COMPLETED: close does not apply"):
        await runtime.bus.close_batch("d", batch_id)


async def test_an_empty_open_batch_completes_when_closed(triobus_runtime: Runtime) -> None:
    runtime = triobus_runtime
    batch_id = await runtime.bus.create_batch("d", [], open=True, **FOLLOW_UPS)
    assert await runtime.bus.close_batch("d", batch_id) is True
    batch = await runtime.bus.get_batch("d", batch_id)
    assert batch is not None and batch.status is BatchStatus.COMPLETED
    assert batch.total_count == 0 and not batch.is_open
    assert await follow_up_types(runtime) == {"Report", "Success"}


async def test_adding_a_taken_id_adds_nothing(triobus_runtime: Runtime) -> None:
    runtime = triobus_runtime
    first = member("ok")
    batch_id = await runtime.bus.create_batch("c", [first], open=True)
    with pytest.raises(DuplicateCommandError, match=str(first.command_id)):
        await runtime.bus.add_to_batch("c", batch_id, [member("ok"), first])
    batch = await runtime.bus.get_batch("c", batch_id)
    assert batch is not None and batch.total_count == 1
    assert len(await statuses(runtime, batch_id)) == 1


async def test_adds_closes_and_last_acks_racing_complete_the_batch_once(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    """Producers add to open batches while workers finish their members and the batches
    are closed: each completes exactly once, with every member counted."""
    runtime = triobus_runtime
    await register_work(runtime)
    await runtime.start_worker("d", concurrency=8, poll_interval=0.05)
    batch_ids = [
        await runtime.bus.create_batch("d", commands("ok"), open=True, **FOLLOW_UPS)
        for _ in range(6)
    ]

    async def fill_and_close(batch_id: uuid.UUID) -> None:
        for _ in range(5):
            await runtime.bus.add_to_batch("d", batch_id, commands("ok", "ok", "ok"))
            await trio.lowlevel.checkpoint()
        await runtime.bus.close_batch("d", batch_id)

    async with trio.open_nursery() as nursery:
        for batch_id in batch_ids:
            nursery.start_soon(fill_and_close, batch_id)
    for batch_id in batch_ids:
        batch = await runtime.wait_batch("d", batch_id, timeout=30)
        assert batch.status is BatchStatus.COMPLETED
        assert batch.total_count == batch.completed_count == 16
        events = [e.event_type for e in await runtime.bus.get_audit_trail(batch_id, domain="d")]
        assert events.count(AuditEventType.BATCH_COMPLETED) == 1
    found = await runtime.bus.query_commands(domain="f", limit=100)
    assert sorted((c.data["batch"]["batch_id"], c.command_type) for c in found) == sorted(
        (str(b), t) for b in batch_ids for t in ("Report", "Success")
    )


async def test_a_cancel_racing_with_acks_of_retries_leaves_no_member_waiting(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    """Members fail and retry (after an hour) while the batch is canceled: whether an ack
    commits just before the cancel or just after, no member is left PENDING, so the batch
    completes (a member left waiting an hour would hold it open)."""
    runtime = triobus_runtime
    Gate(runtime)
    await runtime.start_worker(
        "c",
        concurrency=16,
        poll_interval=0.05,
        retry_policy=RetryPolicy(max_attempts=100, backoff=(3600.0,)),
    )
    for after in (0, 10, 40, 120, 190):
        batch_id = await runtime.bus.create_batch("c", [member("transient") for _ in range(200)])

        async def retried(batch_id: uuid.UUID = batch_id, after: int = after) -> bool:
            found = await runtime.bus.list_batch_commands(
                "c", batch_id, status="PENDING", limit=1000
            )
            return sum(c.attempts > 0 for c in found) >= after

        await eventually(retried)
        await runtime.bus.cancel_batch("c", batch_id, reason="race")
        batch = await runtime.wait_batch("c", batch_id, timeout=30)
        assert batch.canceled_count == 200 and batch.total_count == 200


async def test_a_cancel_racing_with_first_claims_and_operators_never_deadlocks(
    triobus_runtime: Runtime, eventually: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Claims lock members, then the batch row (to start it); operators lock a member,
    then the row (its counts). A cancel takes its locks in the same order: whatever it
    races with, nobody gets a deadlock error (PostgreSQL would abort one side)."""
    runtime = triobus_runtime
    Gate(runtime)
    await runtime.start_worker("c", concurrency=16, poll_interval=0.05)
    for _ in range(5):  # canceled while its first members are being claimed
        batch_id = await runtime.bus.create_batch("c", [member("ok") for _ in range(300)])
        await runtime.bus.cancel_batch("c", batch_id, reason="at once")
        await runtime.wait_batch("c", batch_id, timeout=30)
    for _ in range(5):  # canceled while operators act on its TSQ members
        members = [member("tsq") for _ in range(6)]
        batch_id = await runtime.bus.create_batch("c", members)

        async def parked(batch_id: uuid.UUID = batch_id) -> bool:
            batch = await runtime.bus.get_batch("c", batch_id)
            return batch is not None and batch.in_troubleshooting_count == 6

        await eventually(parked)
        refused: list[InvalidOperationError] = []

        async def act(call: Callable[[], Awaitable[object]], refused: list[Any]) -> None:
            try:
                await call()
            except InvalidOperationError as ex:  # the other got there first
                refused.append(ex)

        async with trio.open_nursery() as nursery:
            for index, m in enumerate(members):
                tsq = runtime.tsq
                call = (
                    functools.partial(tsq.operator_retry, "c", m.command_id)
                    if index % 2
                    else functools.partial(tsq.operator_cancel, "c", m.command_id, "no")
                )
                nursery.start_soon(act, call, refused)
            nursery.start_soon(
                act, functools.partial(runtime.bus.cancel_batch, "c", batch_id, reason="r"), refused
            )
        await runtime.wait_batch("c", batch_id, timeout=30)
    assert not [r for r in caplog.records if "deadlock" in r.getMessage()]
