"""A worker in its own OS process, for crash tests: python worker_process.py DSN DOMAIN MODE

MODE "block": the handler prints "started <command_id>" and blocks forever.
MODE "kill": the handler kills its own process with SIGKILL (a poison message).
"""

from __future__ import annotations

import os
import signal
import sys

import trio

from triobus.actors import Command, HandlerContext, HandlerRegistry, open_runtime


async def main(dsn: str, domain: str, mode: str) -> None:
    registry = HandlerRegistry()

    @registry.handler(domain, "Work")
    async def work(command: Command, ctx: HandlerContext) -> None:
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        print(f"started {command.command_id}", flush=True)
        await trio.sleep_forever()

    async with open_runtime(dsn, registry=registry, migrate=False) as runtime:
        await runtime.start_worker(domain, visibility_timeout=1.0, poll_interval=0.1)
        print("ready", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    dsn, domain, mode = sys.argv[1:4]
    trio.run(main, dsn, domain, mode)
