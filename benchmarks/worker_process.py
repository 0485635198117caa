"""A benchmark worker process:

    python worker_process.py DSN DOMAIN CONCURRENCY [gated] [transactional] [PREFETCH]

Runs a no-op handler for command type "Noop" in DOMAIN; prints "ready" when claiming and
"rss <bytes>" each time it reads a line "rss" on standard input; runs until killed.
With "gated", it prints "ready" once its runtime is open and starts claiming only when it
reads a line "go" (the peers scenario times the processing phase from there). With
"transactional", the handler is transactional and inserts one row into `bench_effect`
(created here), committed with the completion; the pool has a connection for each
handler and two more. PREFETCH is `start_worker`'s `prefetch` (default 0).
"""

from __future__ import annotations

import sys

import trio

from triobus.actors import Command, HandlerContext, HandlerRegistry, open_runtime


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


async def main(
    dsn: str, domain: str, concurrency: int, gated: bool, transactional: bool, prefetch: int
) -> None:
    registry = HandlerRegistry()

    async def noop(command: Command, ctx: HandlerContext) -> None:
        return None

    async def insert(command: Command, ctx: HandlerContext) -> None:
        assert ctx.conn is not None
        await ctx.conn.execute("INSERT INTO bench_effect VALUES (%s)", (command.command_id,))

    handle = insert if transactional else noop
    registry.register(domain, "Noop", handle, transactional=transactional)
    pool_size = concurrency + 2 if transactional else 10
    async with open_runtime(dsn, registry=registry, migrate=False, pool_size=pool_size) as runtime:
        if transactional:
            async with runtime.transaction() as conn:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS bench_effect (command_id uuid PRIMARY KEY)"
                )
        stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
        if gated:
            print("ready", flush=True)
            line = bytearray()
            while not line.endswith(b"\n"):
                byte = await stdin.receive_some(1)
                if not byte:
                    return
                line += byte
        await runtime.start_worker(domain, concurrency=concurrency, prefetch=prefetch)
        if not gated:
            print("ready", flush=True)
        async for chunk in stdin:
            for _ in chunk.decode().split():
                print(f"rss {rss_bytes()}", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    options = sys.argv[4:]
    gated = "gated" in options
    transactional = "transactional" in options
    prefetch = next((int(o) for o in options if o.isdigit()), 0)
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), gated, transactional, prefetch)
