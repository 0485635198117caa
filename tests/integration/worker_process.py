"""A worker in its own OS process: python worker_process.py DSN DOMAIN MODE [CONCURRENCY]

MODE "block": the handler prints "started <command_id>" and blocks forever.
MODE "kill": the handler kills its own process with SIGKILL (a poison message).
MODE "outcome": the handler does what `command.data["outcome"]` says: "ok" completes,
"rule" raises BusinessRuleError, "tsq" raises PermanentCommandError.
The process prints "ready" once its worker is claiming, and runs until killed.
"""

from __future__ import annotations

import os
import signal
import sys

import trio

from triobus.actors import (
    BusinessRuleError,
    Command,
    HandlerContext,
    HandlerRegistry,
    PermanentCommandError,
    open_runtime,
)


async def main(dsn: str, domain: str, mode: str, concurrency: int) -> None:
    registry = HandlerRegistry()

    @registry.handler(domain, "Work")
    async def work(command: Command, ctx: HandlerContext) -> dict[str, int] | None:
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "block":
            print(f"started {command.command_id}", flush=True)
            await trio.sleep_forever()
        outcome = command.data.get("outcome", "ok")
        if outcome == "rule":
            raise BusinessRuleError("RULE", "refused by a business rule")
        if outcome == "tsq":
            raise PermanentCommandError("NEEDS_OPERATOR", "an operator must decide")
        return {"pid": os.getpid()}

    async with open_runtime(dsn, registry=registry, migrate=False) as runtime:
        await runtime.start_worker(
            domain, concurrency=concurrency, visibility_timeout=1.0, poll_interval=0.1
        )
        print("ready", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    dsn, domain, mode = sys.argv[1:4]
    concurrency = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    trio.run(main, dsn, domain, mode, concurrency)
