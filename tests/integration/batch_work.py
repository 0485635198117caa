"""A batch of "Work" commands of domain "d" whose data chooses each one's outcome, their
handler, a callback that records its calls, and worker processes that run them."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import trio

from triobus.actors import (
    BatchCommand,
    BatchMetadata,
    BusinessRuleError,
    Command,
    HandlerContext,
    PermanentCommandError,
    Runtime,
)

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
    """One command per outcome: "ok" completes, "rule" fails, "tsq" goes to the TSQ."""
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
