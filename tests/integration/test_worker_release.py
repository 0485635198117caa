"""Claimed work is given back however a worker ends: stopped mid-claim, or cancelled."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from triobus.actors import (
    Command,
    CommandStatus,
    HandlerContext,
    Runtime,
    ValidationError,
    open_runtime,
)
from triobus.persistence.commands import insert_command
from triobus.persistence.new_commands import new_command

if TYPE_CHECKING:
    from tests.conftest import Proxy


async def status_and_attempts(runtime: Runtime, command_id: uuid.UUID) -> tuple[str, int]:
    command = await runtime.bus.get_command("d", command_id)
    assert command is not None
    return command.status, command.attempts


async def test_a_claim_that_commits_while_the_worker_stops_is_released(
    triobus_runtime: Runtime, proxy: Proxy, eventually: Callable[..., Any]
) -> None:
    """The claim statement commits, then stop() cancels the claimer before the answer
    arrives: the claim must still be recorded and released, not left leased."""
    direct = triobus_runtime
    command_id = uuid.uuid4()
    async with open_runtime(proxy.dsn, migrate=False) as proxied:
        proxied.registry.register("d", "Noop", noop)
        worker = await proxied.start_worker("d", poll_interval=0.05)
        async with direct.pool.connection() as locker, locker.transaction():
            # Claims queue up on this lock; the command is inserted under it.
            await locker.execute("LOCK TABLE triobus.command IN EXCLUSIVE MODE")
            await insert_command(locker, new_command("d", "Noop", command_id, {}))
            # Visible before any claim began: the waiting claim may have started before
            # this transaction did, and its now() is when it started.
            await locker.execute(
                "UPDATE triobus.command SET visible_at = visible_at - interval '1 minute'"
                " WHERE command_id = %(id)s",
                {"id": command_id},
            )
            await eventually(lambda: claim_waiting_for_lock(direct))
            proxy.freeze(answers_only=True)
        # The lock is gone: the waiting claim takes the command and commits; its answer is held.
        assert await eventually(lambda: has_status(direct, command_id, CommandStatus.IN_PROGRESS))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.stop)
            await trio.testing.wait_all_tasks_blocked()
            proxy.thaw()
    assert await status_and_attempts(direct, command_id) == (CommandStatus.PENDING, 0)


async def test_a_worker_cancelled_from_outside_releases_its_commands(
    triobus_dsn: str, triobus_runtime: Runtime
) -> None:
    running = trio.Event()

    async def stuck(command: Command, ctx: HandlerContext) -> None:
        running.set()
        await trio.sleep_forever()

    with trio.CancelScope() as outer:
        async with open_runtime(triobus_dsn, migrate=False) as runtime:
            runtime.registry.register("d", "Stuck", stuck)
            await runtime.start_worker("d")
            sent = await runtime.bus.send("d", "Stuck", uuid.uuid4(), {})
            with trio.fail_after(15):
                await running.wait()
            outer.cancel()
            await trio.sleep_forever()
    assert await status_and_attempts(triobus_runtime, sent.command_id) == (
        CommandStatus.PENDING,
        0,
    )


async def noop(command: Command, ctx: HandlerContext) -> None:
    return None


async def claim_waiting_for_lock(runtime: Runtime) -> bool:
    """The worker's claim statement waits on the lock (not some other statement, such as
    the maintenance actor's prune, which waits on it too)."""
    async with runtime.pool.connection() as conn:
        row = await conn.fetch_one(
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            " AND query LIKE %(claim)s",
            {"claim": "%WITH candidates AS%AS exhausted%"},
        )
    return row is not None and row["n"] > 0


async def has_status(runtime: Runtime, command_id: uuid.UUID, status: CommandStatus) -> bool:
    return (await status_and_attempts(runtime, command_id))[0] == status


async def test_a_stop_without_grace_cancels_running_handlers_at_once_and_releases(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    runtime = triobus_runtime
    started = trio.Event()

    @runtime.registry.handler("d", "Hang")
    async def hang(command: Command, ctx: HandlerContext) -> None:
        started.set()
        await trio.sleep_forever()

    worker = await runtime.start_worker("d", grace_period=3600.0)
    command_id = (await runtime.bus.send("d", "Hang", uuid.uuid4(), {})).command_id
    with trio.fail_after(15):
        await started.wait()
    assert worker.statistics().running == 1
    with pytest.raises(ValidationError, match="grace_period must be a number of seconds >= 0"):
        await worker.stop(grace_period=-1)
    with trio.fail_after(5):  # not the worker's hour
        await runtime.stop_workers(grace_period=0)
    assert await status_and_attempts(runtime, command_id) == (CommandStatus.PENDING, 0)
