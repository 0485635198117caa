"""A worker in its own OS process: python worker_process.py DSN DOMAIN MODE [CONCURRENCY]

MODE "block": the handler prints "started <command_id>" and blocks forever.
MODE "kill": the handler kills its own process with SIGKILL (a poison message).
MODE "outcome": the handler does what `command.data["outcome"]` says: "ok" completes,
"rule" raises BusinessRuleError, "tsq" raises PermanentCommandError.
MODE "effect": a transactional handler inserts a row into the table `effect` (which the
caller creates) and sends a follow-up of type "FollowUp" to domain "followups", a fresh
id each time, its data naming the command: both commit with the completion.
The process prints "ready" once its worker is claiming, and runs until killed.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid

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

    if mode == "effect":
        registry.register(domain, "Work", effect_and_follow_up, transactional=True)
    else:
        registry.register(domain, "Work", work)
    pool_size = concurrency + 2  # a connection for each transactional handler, and two
    async with open_runtime(dsn, registry=registry, migrate=False, pool_size=pool_size) as runtime:
        await runtime.start_worker(
            domain, concurrency=concurrency, visibility_timeout=1.0, poll_interval=0.1
        )
        print("ready", flush=True)
        await trio.sleep_forever()


async def effect_and_follow_up(command: Command, ctx: HandlerContext) -> dict[str, int]:
    assert ctx.conn is not None
    await ctx.conn.execute(
        "INSERT INTO effect (command_id, pid) VALUES (%s, %s)", (command.command_id, os.getpid())
    )
    await ctx.send("followups", "FollowUp", uuid.uuid4(), {"of": str(command.command_id)})
    return {"pid": os.getpid()}


if __name__ == "__main__":
    dsn, domain, mode = sys.argv[1:4]
    concurrency = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    trio.run(main, dsn, domain, mode, concurrency)
