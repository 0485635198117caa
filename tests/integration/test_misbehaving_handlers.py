"""Handlers that misbehave: the runtime stays up and the command ends in a defined state."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import trio

from triobus.actors import (
    Command,
    CommandStatus,
    HandlerContext,
    RetryPolicy,
    Runtime,
    open_runtime,
)

ONE_ATTEMPT = RetryPolicy(max_attempts=1, backoff=(0.0,))


class CustomBaseError(BaseException):
    pass


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("even str() fails")


async def outcome(
    runtime: Runtime, eventually: Callable[..., Any], command_type: str
) -> tuple[CommandStatus, str | None]:
    """Send one command of `command_type` and wait until it leaves IN_PROGRESS/PENDING."""
    sent = await runtime.bus.send("d", command_type, uuid.uuid4(), {})

    async def settled() -> tuple[CommandStatus, str | None] | None:
        command = await runtime.bus.get_command("d", sent.command_id)
        assert command is not None
        if command.status in (CommandStatus.PENDING, CommandStatus.IN_PROGRESS):
            return None
        return command.status, command.last_error.type if command.last_error else None

    result: tuple[CommandStatus, str | None] = await eventually(settled)
    return result


@pytest.mark.parametrize(
    "exception",
    [GeneratorExit, CustomBaseError, UnprintableError],
    ids=lambda e: e.__name__,
)
async def test_a_handler_raising_a_base_exception_fails_only_its_command(
    triobus_runtime: Runtime, eventually: Callable[..., Any], exception: type[BaseException]
) -> None:
    @triobus_runtime.registry.handler("d", "Raise")
    async def raise_it(command: Command, ctx: HandlerContext) -> None:
        raise exception()

    @triobus_runtime.registry.handler("d", "Fine")
    async def fine(command: Command, ctx: HandlerContext) -> None:
        return None

    worker = await triobus_runtime.start_worker("d", retry_policy=ONE_ATTEMPT)
    assert await outcome(triobus_runtime, eventually, "Raise") == (
        CommandStatus.IN_TROUBLESHOOTING_QUEUE,
        exception.__name__,
    )
    # The worker and the runtime are still up.
    assert await outcome(triobus_runtime, eventually, "Fine") == (CommandStatus.COMPLETED, None)
    assert worker.statistics().last_error is not None


async def test_a_handler_that_cancels_its_own_scope_completes(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    @triobus_runtime.registry.handler("d", "SelfCancel")
    async def self_cancel(command: Command, ctx: HandlerContext) -> dict[str, bool]:
        with trio.CancelScope() as scope:
            scope.cancel()
            await trio.sleep_forever()
        return {"cancelled_itself": scope.cancelled_caught}

    await triobus_runtime.start_worker("d")
    assert await outcome(triobus_runtime, eventually, "SelfCancel") == (
        CommandStatus.COMPLETED,
        None,
    )


async def test_an_asyncio_handler_that_cancels_its_own_task_fails_only_its_command(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    @triobus_runtime.registry.handler("d", "AioSelfCancel", asyncio=True)
    async def aio_self_cancel(command: Command, ctx: HandlerContext) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(10)

    @triobus_runtime.registry.handler("d", "Fine")
    async def fine(command: Command, ctx: HandlerContext) -> None:
        return None

    await triobus_runtime.start_worker("d", retry_policy=ONE_ATTEMPT)
    status, _ = await outcome(triobus_runtime, eventually, "AioSelfCancel")
    assert status is CommandStatus.IN_TROUBLESHOOTING_QUEUE
    assert await outcome(triobus_runtime, eventually, "Fine") == (CommandStatus.COMPLETED, None)


@pytest.mark.parametrize("exception", [KeyboardInterrupt, SystemExit], ids=lambda e: e.__name__)
async def test_ctrl_c_or_exit_in_a_handler_stops_the_runtime_and_releases_the_command(
    triobus_dsn: str, triobus_runtime: Runtime, exception: type[BaseException]
) -> None:
    """Trio delivers a real Ctrl-C into whatever code runs, a handler included: the
    process must stop, not retry the command; what was claimed is given back."""

    async def interrupt(command: Command, ctx: HandlerContext) -> None:
        raise exception()

    async def run_until_stopped() -> None:
        async with open_runtime(triobus_dsn, migrate=False) as runtime:
            runtime.registry.register("d", "Interrupt", interrupt)
            await runtime.start_worker("d")
            await runtime.bus.send("d", "Interrupt", command_id, {})
            await trio.sleep_forever()

    command_id = uuid.uuid4()
    with pytest.raises(BaseException) as raised:  # noqa: PT011 - checked below
        await run_until_stopped()
    error = raised.value
    assert isinstance(error, exception) or (
        isinstance(error, BaseExceptionGroup) and error.subgroup(exception) is not None
    )
    command = await triobus_runtime.bus.get_command("d", command_id)
    assert command is not None
    assert (command.status, command.attempts) == (CommandStatus.PENDING, 0)
