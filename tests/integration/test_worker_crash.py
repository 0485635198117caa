"""Workers in separate OS processes killed with SIGKILL: nothing is lost, poison ends in the TSQ."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from tests.integration.processes import read_line
from triobus.actors import (
    AuditEventType,
    Command,
    CommandStatus,
    HandlerContext,
    RetryPolicy,
    Runtime,
)

WORKER_SCRIPT = Path(__file__).with_name("worker_process.py")


async def start_worker_process(dsn: str, mode: str) -> trio.Process:
    return await trio.lowlevel.open_process(
        [sys.executable, str(WORKER_SCRIPT), dsn, "d", mode],
        stdout=subprocess.PIPE,
    )


async def test_sigkilled_worker_loses_nothing(
    triobus_runtime: Runtime, triobus_dsn: str, eventually: Callable[..., Any]
) -> None:
    sent = await triobus_runtime.bus.send("d", "Work", uuid.uuid4(), {}, reply_to="q")
    process = await start_worker_process(triobus_dsn, "block")
    with trio.fail_after(30):
        assert await read_line(process) == "ready"
        assert await read_line(process) == f"started {sent.command_id}"
    process.send_signal(signal.SIGKILL)
    await process.wait()

    @triobus_runtime.registry.handler("d", "Work")
    async def work(command: Command, ctx: HandlerContext) -> dict[str, int]:
        return {"attempt": ctx.attempt}

    await triobus_runtime.start_worker("d", poll_interval=0.1)

    async def completed() -> bool:
        command = await triobus_runtime.bus.get_command("d", sent.command_id)
        assert command is not None
        return command.status == CommandStatus.COMPLETED

    await eventually(completed)
    command = await triobus_runtime.bus.get_command("d", sent.command_id)
    assert command is not None and command.result == {"attempt": 2}
    events = [e.event_type for e in await triobus_runtime.bus.get_audit_trail(sent.command_id)]
    assert events == [
        AuditEventType.SENT,
        AuditEventType.RECEIVED,
        AuditEventType.RECEIVED,
        AuditEventType.COMPLETED,
    ]
    assert len(await triobus_runtime.bus.read_replies("q")) == 1


async def test_poison_message_ends_in_tsq_after_max_attempts(
    triobus_runtime: Runtime, triobus_dsn: str, eventually: Callable[..., Any]
) -> None:
    sent = await triobus_runtime.bus.send("d", "Work", uuid.uuid4(), {}, max_attempts=2)
    for _ in range(2):  # each worker process dies in the handler
        process = await start_worker_process(triobus_dsn, "kill")
        with trio.fail_after(30):
            await process.wait()
        assert process.returncode == -signal.SIGKILL

    # The next claimer finds the lease expired after the last allowed attempt.
    await triobus_runtime.start_worker("d", poll_interval=0.1, retry_policy=RetryPolicy())

    async def in_tsq() -> bool:
        command = await triobus_runtime.bus.get_command("d", sent.command_id)
        assert command is not None
        return command.status == CommandStatus.IN_TROUBLESHOOTING_QUEUE

    await eventually(in_tsq)
    command = await triobus_runtime.bus.get_command("d", sent.command_id)
    assert command is not None and command.attempts == 2
    assert command.last_error is not None and command.last_error.code == "LEASE_EXPIRED"
    events = [e.event_type for e in await triobus_runtime.bus.get_audit_trail(sent.command_id)]
    assert events == [
        AuditEventType.SENT,
        AuditEventType.RECEIVED,
        AuditEventType.RECEIVED,
        AuditEventType.RETRY_EXHAUSTED,
    ]
