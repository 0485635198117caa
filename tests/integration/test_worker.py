"""Worker actors against a real PostgreSQL: outcomes, audit order, leases, stop."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from triobus.actors import (
    AuditEventType,
    BatchCommand,
    BusinessRuleError,
    Command,
    CommandMetadata,
    CommandStatus,
    HandlerContext,
    PermanentCommandError,
    ReplyOutcome,
    RetryPolicy,
    Runtime,
    TransientCommandError,
    ValidationError,
    open_runtime,
)

E = AuditEventType
FAST = RetryPolicy(max_attempts=3, backoff=(0.05,))


# Leases that no heartbeat extends during a test; `expire_lease` ends one at will.
NO_HEARTBEAT: dict[str, Any] = {"visibility_timeout": 3600.0, "heartbeat_interval": 3000.0}


async def expire_lease(runtime: Runtime, command_id: uuid.UUID) -> None:
    async with runtime.pool.connection() as conn:
        expired = await conn.execute(
            "UPDATE triobus.command SET visible_at = now() - interval '1 second'"
            " WHERE domain = 'd' AND command_id = %s AND status = 'IN_PROGRESS'",
            (command_id,),
        )
    assert expired == 1


async def trail(runtime: Runtime, command_id: uuid.UUID) -> list[AuditEventType]:
    return [e.event_type for e in await runtime.bus.get_audit_trail(command_id)]


async def wait_status(
    runtime: Runtime, eventually: Callable[..., Any], command_id: uuid.UUID, status: CommandStatus
) -> CommandMetadata:
    async def check() -> CommandMetadata | None:
        command = await runtime.bus.get_command("d", command_id)
        return command if command is not None and command.status == status else None

    result: CommandMetadata = await eventually(check)
    return result


async def test_success_stores_result_audit_and_one_reply(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    seen: list[tuple[Command, HandlerContext]] = []

    @triobus_runtime.registry.handler("d", "Add")
    async def add(command: Command, ctx: HandlerContext) -> dict[str, int]:
        seen.append((command, ctx))
        return {"sum": command.data["a"] + command.data["b"]}

    await triobus_runtime.start_worker("d", retry_policy=FAST)
    sent = await triobus_runtime.bus.send(
        "d", "Add", uuid.uuid4(), {"a": 1, "b": 2}, reply_to="d.replies"
    )
    command = await wait_status(
        triobus_runtime, eventually, sent.command_id, CommandStatus.COMPLETED
    )
    assert command.result == {"sum": 3}
    assert command.attempts == 1
    assert await trail(triobus_runtime, sent.command_id) == [E.SENT, E.RECEIVED, E.COMPLETED]
    ((received, ctx),) = seen
    assert received.correlation_id == sent.correlation_id and received.reply_to == "d.replies"
    assert (ctx.attempt, ctx.max_attempts) == (1, 3)
    (reply,) = await triobus_runtime.bus.read_replies("d.replies")
    assert reply.outcome is ReplyOutcome.SUCCESS and reply.data == {"sum": 3}
    assert (reply.command_id, reply.correlation_id) == (sent.command_id, sent.correlation_id)


async def test_the_runtime_payload_limit_bounds_handler_and_operator_results(
    triobus_dsn: str, eventually: Callable[..., Any]
) -> None:
    """`max_payload_bytes` bounds results as it bounds commands: above the 1 MiB default
    when configured so; a result above it goes to the TSQ and never reaches the table."""
    limit = 2 * 1024 * 1024
    above_default = 1024 * 1024 + 10
    async with open_runtime(triobus_dsn, migrate=False, max_payload_bytes=limit) as runtime:

        @runtime.registry.handler("d", "Echo")
        async def echo(command: Command, ctx: HandlerContext) -> dict[str, str]:
            return {"text": "x" * command.data["size"]}

        await runtime.start_worker("d", retry_policy=FAST)
        fits, too_big = [
            await runtime.bus.send("d", "Echo", uuid.uuid4(), {"size": size})
            for size in (above_default, limit)
        ]
        done = await wait_status(runtime, eventually, fits.command_id, CommandStatus.COMPLETED)
        assert done.result == {"text": "x" * above_default}
        refused = await wait_status(
            runtime, eventually, too_big.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE
        )
        assert refused.last_error is not None and refused.result is None
        assert refused.last_error.code == "INVALID_RESULT"
        assert f"the limit is {limit}" in (refused.last_error.message or "")

        with pytest.raises(ValidationError, match=f"the limit is {limit}.*{too_big.command_id}"):
            await runtime.tsq.operator_complete(
                "d", too_big.command_id, result_data={"text": "x" * limit}
            )
        assert (await runtime.bus.get_command("d", too_big.command_id)) == refused
        await runtime.tsq.operator_complete(
            "d", too_big.command_id, result_data={"text": "x" * above_default}
        )
        completed = await runtime.bus.get_command("d", too_big.command_id)
        assert completed is not None and completed.status == CommandStatus.COMPLETED


async def test_transient_errors_retry_with_backoff_then_move_to_tsq(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    attempts: list[int] = []

    @triobus_runtime.registry.handler("d", "Flaky")
    async def flaky(command: Command, ctx: HandlerContext) -> None:
        attempts.append(ctx.attempt)
        raise TransientCommandError("UPSTREAM_DOWN", "upstream is down", {"retry": True})

    await triobus_runtime.start_worker("d", retry_policy=FAST, poll_interval=0.05)
    sent = await triobus_runtime.bus.send("d", "Flaky", uuid.uuid4(), {}, reply_to="q")
    command = await wait_status(
        triobus_runtime, eventually, sent.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE
    )
    assert attempts == [1, 2, 3]
    assert await trail(triobus_runtime, sent.command_id) == [
        E.SENT,
        E.RECEIVED,
        E.RETRY_SCHEDULED,
        E.RECEIVED,
        E.RETRY_SCHEDULED,
        E.RECEIVED,
        E.RETRY_EXHAUSTED,
    ]
    assert command.last_error is not None
    assert (command.last_error.type, command.last_error.code) == (
        "TransientCommandError",
        "UPSTREAM_DOWN",
    )
    assert command.last_error.details == {"retry": True}
    events = await triobus_runtime.bus.get_audit_trail(sent.command_id)
    assert events[2].details is not None and events[2].details["retry_in_seconds"] == 0.05
    assert await triobus_runtime.bus.read_replies("q") == []  # the TSQ is not terminal


async def test_unexpected_exception_is_transient_and_a_later_attempt_can_succeed(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    @triobus_runtime.registry.handler("d", "Once")
    async def once(command: Command, ctx: HandlerContext) -> dict[str, int]:
        if ctx.attempt == 1:
            raise KeyError("missing")
        return {"attempt": ctx.attempt}

    await triobus_runtime.start_worker("d", retry_policy=FAST, poll_interval=0.05)
    sent = await triobus_runtime.bus.send("d", "Once", uuid.uuid4(), {})
    command = await wait_status(
        triobus_runtime, eventually, sent.command_id, CommandStatus.COMPLETED
    )
    assert command.result == {"attempt": 2}
    assert command.last_error is not None and command.last_error.code == "UNHANDLED_EXCEPTION"
    assert command.last_error.type == "KeyError"
    assert await trail(triobus_runtime, sent.command_id) == [
        E.SENT,
        E.RECEIVED,
        E.RETRY_SCHEDULED,
        E.RECEIVED,
        E.COMPLETED,
    ]


async def test_error_text_postgresql_cannot_store_is_escaped_not_lost(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    @triobus_runtime.registry.handler("d", "Odd")
    async def odd(command: Command, ctx: HandlerContext) -> None:
        raise PermanentCommandError("CODE\x00", "lone \ud800 and NUL \x00 " + "x" * 10_000)

    worker = await triobus_runtime.start_worker("d", retry_policy=FAST)
    sent = await triobus_runtime.bus.send("d", "Odd", uuid.uuid4(), {})
    command = await wait_status(
        triobus_runtime, eventually, sent.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE
    )
    assert command.last_error is not None
    assert command.last_error.code == "CODE\\x00"
    message = command.last_error.message or ""
    assert message.startswith("lone \\ud800 and NUL \\x00 xxx")
    assert len(message) == 4000

    async def counted() -> bool:  # the commit is visible before the acker counts it
        return worker.statistics().moved_to_tsq == 1

    await eventually(counted)


async def test_permanent_error_moves_to_tsq_at_once(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    @triobus_runtime.registry.handler("d", "Bad")
    async def bad(command: Command, ctx: HandlerContext) -> None:
        raise PermanentCommandError("BAD_ACCOUNT", "account closed", {"account": 7})

    await triobus_runtime.start_worker("d", retry_policy=FAST)
    sent = await triobus_runtime.bus.send("d", "Bad", uuid.uuid4(), {})
    command = await wait_status(
        triobus_runtime, eventually, sent.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE
    )
    assert command.attempts == 1
    assert command.last_error is not None
    assert (command.last_error.code, command.last_error.message) == (
        "BAD_ACCOUNT",
        "account closed",
    )
    events = await triobus_runtime.bus.get_audit_trail(sent.command_id)
    assert [e.event_type for e in events] == [E.SENT, E.RECEIVED, E.MOVED_TO_TSQ]
    assert events[-1].details is not None
    assert events[-1].details["error_details"] == {"account": 7}


async def test_business_rule_error_fails_with_a_failed_reply(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    @triobus_runtime.registry.handler("d", "Overdraw")
    async def overdraw(command: Command, ctx: HandlerContext) -> None:
        raise BusinessRuleError("INSUFFICIENT_FUNDS", "balance too low")

    await triobus_runtime.start_worker("d", retry_policy=FAST)
    sent = await triobus_runtime.bus.send("d", "Overdraw", uuid.uuid4(), {}, reply_to="q")
    await wait_status(triobus_runtime, eventually, sent.command_id, CommandStatus.FAILED)
    assert await trail(triobus_runtime, sent.command_id) == [
        E.SENT,
        E.RECEIVED,
        E.BUSINESS_RULE_FAILED,
    ]
    (reply,) = await triobus_runtime.bus.read_replies("q")
    assert reply.outcome is ReplyOutcome.FAILED
    assert reply.data == {
        "error_type": "BusinessRuleError",
        "error_code": "INSUFFICIENT_FUNDS",
        "error_message": "balance too low",
    }


async def test_missing_handler_moves_to_tsq_with_a_clear_code(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    await triobus_runtime.start_worker("d", retry_policy=FAST)
    sent = await triobus_runtime.bus.send("d", "Unknown", uuid.uuid4(), {})
    command = await wait_status(
        triobus_runtime, eventually, sent.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE
    )
    assert command.last_error is not None and command.last_error.code == "NO_HANDLER"
    assert "'d'/'Unknown'" in (command.last_error.message or "")


async def test_handler_timeout_is_transient(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    @triobus_runtime.registry.handler("d", "Slow")
    async def slow(command: Command, ctx: HandlerContext) -> None:
        await trio.sleep_forever()

    await triobus_runtime.start_worker(
        "d",
        retry_policy=RetryPolicy(max_attempts=2, backoff=(0.05,)),
        handler_timeout=0.1,
        poll_interval=0.05,
    )
    sent = await triobus_runtime.bus.send("d", "Slow", uuid.uuid4(), {})
    command = await wait_status(
        triobus_runtime, eventually, sent.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE
    )
    assert command.last_error is not None and command.last_error.code == "HANDLER_TIMEOUT"
    assert await trail(triobus_runtime, sent.command_id) == [
        E.SENT,
        E.RECEIVED,
        E.RETRY_SCHEDULED,
        E.RECEIVED,
        E.RETRY_EXHAUSTED,
    ]


async def test_per_command_max_attempts_wins_over_the_policy(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    @triobus_runtime.registry.handler("d", "Fail")
    async def fail(command: Command, ctx: HandlerContext) -> None:
        raise TransientCommandError("NOPE", f"attempt {ctx.attempt} of {ctx.max_attempts}")

    await triobus_runtime.start_worker(
        "d", retry_policy=RetryPolicy(max_attempts=5, backoff=(0.05,)), poll_interval=0.05
    )
    sent = await triobus_runtime.bus.send("d", "Fail", uuid.uuid4(), {}, max_attempts=1)
    command = await wait_status(
        triobus_runtime, eventually, sent.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE
    )
    assert command.last_error is not None and command.last_error.message == "attempt 1 of 1"
    assert await trail(triobus_runtime, sent.command_id) == [
        E.SENT,
        E.RECEIVED,
        E.RETRY_EXHAUSTED,
    ]


async def test_concurrency_runs_that_many_handlers_at_once(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    running = 0
    eight_running = trio.Event()
    release = trio.Event()
    finished = 0

    @triobus_runtime.registry.handler("d", "Hold")
    async def hold(command: Command, ctx: HandlerContext) -> None:
        nonlocal running, finished
        running += 1
        if running == 8:
            eight_running.set()
        await release.wait()
        running -= 1
        finished += 1

    worker = await triobus_runtime.start_worker("d", concurrency=8)
    for _ in range(10):
        await triobus_runtime.bus.send("d", "Hold", uuid.uuid4(), {})
    with trio.fail_after(15):
        await eight_running.wait()
    await trio.testing.wait_all_tasks_blocked(0.05)
    assert running == 8  # not 9 or 10: capacity bounds the claims
    assert worker.statistics().in_flight == 8
    release.set()

    async def all_completed() -> bool:
        return worker.statistics().completed == 10

    await eventually(all_completed)
    assert finished == 10


async def test_asyncio_handler_runs_through_trio_asyncio(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    @triobus_runtime.registry.handler("d", "Aio", asyncio=True)
    async def aio(command: Command, ctx: HandlerContext) -> dict[str, str]:
        await asyncio.sleep(0.01)
        return {"loop": type(asyncio.get_running_loop()).__name__}

    await triobus_runtime.start_worker("d")
    sent = await triobus_runtime.bus.send("d", "Aio", uuid.uuid4(), {})
    command = await wait_status(
        triobus_runtime, eventually, sent.command_id, CommandStatus.COMPLETED
    )
    assert command.result is not None and "Trio" in command.result["loop"]


async def test_lease_overrun_late_result_is_discarded(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    first_attempt_running = trio.Event()
    release_first = trio.Event()

    @triobus_runtime.registry.handler("d", "Lease")
    async def lease(command: Command, ctx: HandlerContext) -> dict[str, int]:
        if ctx.attempt == 1:
            first_attempt_running.set()
            await release_first.wait()
        return {"attempt": ctx.attempt}

    stalled = await triobus_runtime.start_worker("d", concurrency=1, **NO_HEARTBEAT)
    sent = await triobus_runtime.bus.send("d", "Lease", uuid.uuid4(), {}, reply_to="q")
    with trio.fail_after(15):
        await first_attempt_running.wait()
    await expire_lease(triobus_runtime, sent.command_id)
    await triobus_runtime.start_worker("d", poll_interval=0.05)
    command = await wait_status(
        triobus_runtime, eventually, sent.command_id, CommandStatus.COMPLETED
    )
    assert command.result == {"attempt": 2}

    release_first.set()

    async def discarded() -> bool:
        return stalled.statistics().discarded == 1

    await eventually(discarded)
    command_after = await triobus_runtime.bus.get_command("d", sent.command_id)
    assert command_after is not None and command_after.result == {"attempt": 2}
    assert await trail(triobus_runtime, sent.command_id) == [
        E.SENT,
        E.RECEIVED,
        E.RECEIVED,
        E.COMPLETED,
    ]
    assert len(await triobus_runtime.bus.read_replies("q")) == 1


async def test_a_late_result_does_not_forget_a_newer_claim_of_the_same_command(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    running = {1: trio.Event(), 2: trio.Event()}
    release = {1: trio.Event(), 2: trio.Event()}

    @triobus_runtime.registry.handler("d", "Twice")
    async def twice(command: Command, ctx: HandlerContext) -> dict[str, int]:
        running[ctx.attempt].set()
        await release[ctx.attempt].wait()
        return {"attempt": ctx.attempt}

    worker = await triobus_runtime.start_worker(
        "d", concurrency=2, poll_interval=0.05, **NO_HEARTBEAT
    )
    sent = await triobus_runtime.bus.send("d", "Twice", uuid.uuid4(), {})
    with trio.fail_after(15):
        await running[1].wait()
        await expire_lease(triobus_runtime, sent.command_id)
        await running[2].wait()  # the same worker claimed it again
    release[1].set()

    async def discarded() -> bool:
        return worker.statistics().discarded == 1

    await eventually(discarded)
    assert worker.statistics().in_flight == 1  # attempt 2 is still tracked, still leased
    release[2].set()
    command = await wait_status(
        triobus_runtime, eventually, sent.command_id, CommandStatus.COMPLETED
    )
    assert command.result == {"attempt": 2}

    async def nothing_in_flight() -> bool:  # the commit is visible before the acker counts it
        return worker.statistics().in_flight == 0

    await eventually(nothing_in_flight)


async def test_heartbeat_keeps_the_lease_of_a_long_handler(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    running = trio.Event()
    release = trio.Event()

    @triobus_runtime.registry.handler("d", "Long")
    async def long(command: Command, ctx: HandlerContext) -> None:
        running.set()
        await release.wait()

    worker = await triobus_runtime.start_worker(
        "d", concurrency=1, visibility_timeout=0.3, heartbeat_interval=0.05
    )
    sent = await triobus_runtime.bus.send("d", "Long", uuid.uuid4(), {})
    with trio.fail_after(15):
        await running.wait()
    other = await triobus_runtime.start_worker("d", poll_interval=0.05)

    async def lease_extended_past_three_timeouts() -> bool:
        command = await triobus_runtime.bus.get_command("d", sent.command_id)
        assert command is not None and command.attempts == 1  # never reclaimed
        return command.visible_at > command.updated_at + timedelta(seconds=0.9)

    await eventually(lease_extended_past_three_timeouts)
    release.set()
    await wait_status(triobus_runtime, eventually, sent.command_id, CommandStatus.COMPLETED)

    async def counted() -> bool:  # the commit is visible before the acker counts it
        return worker.statistics().completed == 1

    await eventually(counted)
    assert other.statistics().claimed == 0


async def test_delayed_commands_are_not_claimed_before_their_time(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    @triobus_runtime.registry.handler("d", "Tick")
    async def tick(command: Command, ctx: HandlerContext) -> None:
        return None

    bus = triobus_runtime.bus
    later = await bus.send("d", "Tick", uuid.uuid4(), {}, delay=3600)
    at_time = await bus.send(
        "d", "Tick", uuid.uuid4(), {}, not_before=datetime.now(UTC) + timedelta(hours=1)
    )
    past = await bus.send(
        "d", "Tick", uuid.uuid4(), {}, not_before=datetime.now(UTC) - timedelta(seconds=1)
    )
    soon = await bus.send("d", "Tick", uuid.uuid4(), {}, delay=0.2)
    await triobus_runtime.start_worker("d", poll_interval=0.05)
    await wait_status(triobus_runtime, eventually, past.command_id, CommandStatus.COMPLETED)
    done_soon = await wait_status(
        triobus_runtime, eventually, soon.command_id, CommandStatus.COMPLETED
    )
    assert done_soon.visible_at >= done_soon.created_at + timedelta(seconds=0.2)
    for result in (later, at_time):
        command = await bus.get_command("d", result.command_id)
        assert command is not None
        assert (command.status, command.attempts) == (CommandStatus.PENDING, 0)
        assert command.visible_at > datetime.now(UTC) + timedelta(minutes=59)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay": -1}, "delay must be"),
        ({"delay": float("inf")}, "delay must be"),
        ({"not_before": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"delay": 1, "not_before": datetime.now(UTC)}, "not both"),
    ],
)
async def test_bad_schedules_are_rejected(
    triobus_runtime: Runtime, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        await triobus_runtime.bus.send("d", "Tick", uuid.uuid4(), {}, **kwargs)
    assert await triobus_runtime.bus.query_commands() == []


async def test_clean_stop_finishes_quick_handlers_and_releases_the_rest(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    stuck_running = trio.Event()

    @triobus_runtime.registry.handler("d", "Stuck")
    async def stuck(command: Command, ctx: HandlerContext) -> None:
        stuck_running.set()
        await trio.sleep_forever()

    @triobus_runtime.registry.handler("d", "Quick")
    async def quick(command: Command, ctx: HandlerContext) -> None:
        await stuck_running.wait()

    worker = await triobus_runtime.start_worker("d", concurrency=4, grace_period=0.3)
    stuck_sent = await triobus_runtime.bus.send("d", "Stuck", uuid.uuid4(), {})
    with trio.fail_after(15):
        await stuck_running.wait()
    quick_sent = await triobus_runtime.bus.send("d", "Quick", uuid.uuid4(), {})

    async def quick_done() -> bool:
        return worker.statistics().completed == 1

    await eventually(quick_done)
    await worker.stop()
    command = await triobus_runtime.bus.get_command("d", stuck_sent.command_id)
    assert command is not None
    assert (command.status, command.attempts) == (CommandStatus.PENDING, 0)
    assert command.visible_at <= datetime.now(UTC)  # claimable at once, no lease to wait out
    done = await triobus_runtime.bus.get_command("d", quick_sent.command_id)
    assert done is not None and done.status is CommandStatus.COMPLETED
    assert worker.statistics().in_flight == 0


async def test_prefetch_claims_ahead_of_idle_handlers_and_stop_releases_what_waits(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    started: list[uuid.UUID] = []
    finish = trio.Event()

    @triobus_runtime.registry.handler("d", "Slow")
    async def slow(command: Command, ctx: HandlerContext) -> None:
        started.append(command.command_id)
        await finish.wait()

    ids = [
        (await triobus_runtime.bus.send("d", "Slow", uuid.uuid4(), {})).command_id for _ in range(4)
    ]
    worker = await triobus_runtime.start_worker("d", concurrency=1, prefetch=2, grace_period=10)

    async def statuses() -> list[tuple[str, int]]:
        commands = [await triobus_runtime.bus.get_command("d", i) for i in ids]
        return sorted((c.status, c.attempts) for c in commands if c is not None)

    async def claimed_ahead() -> bool:
        return await statuses() == [("IN_PROGRESS", 1)] * 3 + [("PENDING", 0)]

    await eventually(claimed_ahead)  # one running, two waiting for the handler
    assert len(started) == 1
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.stop)
        await trio.testing.wait_all_tasks_blocked()  # stopping, the running one not done
        finish.set()
    assert len(started) == 1  # the waiting ones were not started during the stop
    assert await statuses() == [("COMPLETED", 1)] + [("PENDING", 0)] * 3
    assert worker.statistics().in_flight == 0


async def test_statistics(triobus_runtime: Runtime, eventually: Callable[..., Any]) -> None:
    @triobus_runtime.registry.handler("d", "Ok")
    async def ok(command: Command, ctx: HandlerContext) -> None:
        return None

    @triobus_runtime.registry.handler("d", "No")
    async def no(command: Command, ctx: HandlerContext) -> None:
        raise BusinessRuleError("NO", "refused")

    worker = await triobus_runtime.start_worker("d")
    for command_type in ("Ok", "Ok", "No"):
        await triobus_runtime.bus.send("d", command_type, uuid.uuid4(), {})

    async def all_acked() -> bool:
        stats = worker.statistics()
        return stats.completed + stats.failed == 3

    await eventually(all_acked)
    stats = worker.statistics()
    assert (stats.domain, stats.claimed, stats.completed, stats.failed) == ("d", 3, 2, 1)
    assert stats.claim_statements >= 1
    assert (stats.retried, stats.moved_to_tsq, stats.in_flight) == (0, 0, 0)
    assert stats.last_error == "NO: refused" and stats.ack_batches >= 1
    assert triobus_runtime.statistics().workers == (stats,)


async def test_start_worker_rejects_bad_arguments(triobus_runtime: Runtime) -> None:
    with pytest.raises(ValidationError, match="concurrency"):
        await triobus_runtime.start_worker("d", concurrency=0)
    with pytest.raises(ValidationError, match="visibility_timeout"):
        await triobus_runtime.start_worker("d", visibility_timeout=-1)
    with pytest.raises(ValidationError, match="domain"):
        await triobus_runtime.start_worker(" ")
    with pytest.raises(ValidationError, match="backoff"):
        RetryPolicy(backoff=())
    with pytest.raises(ValidationError, match="backoff"):
        RetryPolicy(backoff=(1.0, 1e12))
    with pytest.raises(ValidationError, match="backoff"):
        RetryPolicy(backoff=5.0)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"poll_interval.*domain 'd'"):
        await triobus_runtime.start_worker("d", poll_interval=1e300)
    with pytest.raises(ValidationError, match=r"heartbeat_interval.*shorter"):
        await triobus_runtime.start_worker("d", visibility_timeout=1.0, heartbeat_interval=2.0)
    with pytest.raises(ValidationError, match="grace_period"):
        await triobus_runtime.start_worker("d", grace_period=float("nan"))
    assert triobus_runtime.statistics().workers == ()


async def test_success_audit_event_does_not_repeat_an_earlier_error(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    @triobus_runtime.registry.handler("d", "Twice")
    async def twice(command: Command, ctx: HandlerContext) -> None:
        if ctx.attempt == 1:
            raise TransientCommandError("FIRST", "first attempt fails")

    await triobus_runtime.start_worker("d", retry_policy=FAST, poll_interval=0.05)
    sent = await triobus_runtime.bus.send("d", "Twice", uuid.uuid4(), {})
    await wait_status(triobus_runtime, eventually, sent.command_id, CommandStatus.COMPLETED)
    events = await triobus_runtime.bus.get_audit_trail(sent.command_id)
    assert events[-1].event_type is E.COMPLETED
    assert events[-1].details == {"attempt": 2}


async def test_heartbeats_racing_acks_never_deadlock(
    triobus_runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    @triobus_runtime.registry.handler("d", "Tick")
    async def tick(command: Command, ctx: HandlerContext) -> None:
        await trio.lowlevel.checkpoint()

    workers = [
        await triobus_runtime.start_worker("d", concurrency=32, heartbeat_interval=0.001)
        for _ in range(2)
    ]
    batch_id = await triobus_runtime.bus.create_batch(
        "d", [BatchCommand("Tick", uuid.uuid4(), {}) for _ in range(3000)]
    )
    batch = await triobus_runtime.wait_batch("d", batch_id, timeout=120)
    assert batch.completed_count == 3000
    assert not [r for r in caplog.records if "deadlock" in r.getMessage()]
    assert all(w.statistics().discarded == 0 for w in workers)


async def test_an_asyncio_handler_works_when_psycopg_was_imported_before_triobus(
    triobus_dsn: str,
) -> None:
    script = Path(__file__).with_name("asyncio_handler_process.py")
    result = await trio.run_process(
        [sys.executable, str(script), triobus_dsn], capture_stdout=True, capture_stderr=True
    )
    assert json.loads(result.stdout) == {"status": "COMPLETED", "result": {"answer": 42}}
