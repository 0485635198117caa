"""Faults against transactions: processes SIGKILLed while they hold one; afterwards every
write is there exactly once with what it commits with, or not at all.

    python -m tests.soak.transactions [--trials 20] [--commands 1000] [--faults 3]

(from the repository's root, with the project's environment: `.venv/bin/python -m ...`).
The test suite runs each scenario once, smaller (tests/integration/test_transaction_faults.py).
Each trial runs two scenarios, each on a fresh database:

* **transactional handler**: a batch of `commands` runs on a worker process whose
  transactional handler inserts an effect row and sends a follow-up (a fresh id each
  time, so a doubled one would show); the process is SIGKILLed at `faults` random points
  and a fresh one follows. Afterwards, per command: the effect row and the follow-up
  exist exactly once if it is COMPLETED, and not at all otherwise.
* **application transaction**: an application process loops over
  `runtime.transaction()`, inserting its own row and sending a command of the same id,
  and is SIGKILLed `faults` times at random moments (a fresh one follows each time).
  Afterwards every row has its command and every command its row.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from tests.integration.processes import read_line
from tests.soak.campaign import fresh_database, progress_reaches, worker_process
from triobus.actors import BatchCommand, open_runtime
from triobus.persistence.driver import connect
from triobus.persistence.embedded import open_embedded_cluster

APP_SCRIPT = Path(__file__).parent.parent / "integration" / "app_process.py"
DOMAIN = "d"


@attrs.frozen
class TrialResult:
    scenario: str
    writes: int  # commands completed, or application transactions committed
    faults: int
    seconds: float
    hit: int  # redelivered commands, or kills that found a transaction open
    problems: list[str]


async def count(dsn: str, sql: str, params: tuple[object, ...] = ()) -> int:
    conn = await connect(dsn)
    try:
        row = await conn.fetch_one(sql, params)
    finally:
        await conn.close()
    assert row is not None
    return int(row["n"])


# Each names what is wrong; every count must be 0.
HANDLER_CHECKS = {
    "COMPLETED commands without exactly one effect row": """
        SELECT count(*) AS n FROM triobus.command c
        WHERE c.domain = 'd' AND c.status = 'COMPLETED'
          AND (SELECT count(*) FROM effect e WHERE e.command_id = c.command_id) <> 1""",
    "commands not COMPLETED with an effect row": """
        SELECT count(*) AS n FROM triobus.command c
        WHERE c.domain = 'd' AND c.status <> 'COMPLETED'
          AND EXISTS (SELECT FROM effect e WHERE e.command_id = c.command_id)""",
    "COMPLETED commands without exactly one follow-up": """
        SELECT count(*) AS n FROM triobus.command c
        WHERE c.domain = 'd' AND c.status = 'COMPLETED'
          AND (SELECT count(*) FROM triobus.command f
               WHERE f.domain = 'followups' AND f.data->>'of' = c.command_id::text) <> 1""",
    "commands not COMPLETED with a follow-up": """
        SELECT count(*) AS n FROM triobus.command c
        WHERE c.domain = 'd' AND c.status <> 'COMPLETED'
          AND EXISTS (SELECT FROM triobus.command f
                      WHERE f.domain = 'followups' AND f.data->>'of' = c.command_id::text)""",
    "effect rows of no command": """
        SELECT count(*) AS n FROM effect e
        WHERE NOT EXISTS (SELECT FROM triobus.command c WHERE c.command_id = e.command_id)""",
    "commands neither COMPLETED nor in the troubleshooting queue": """
        SELECT count(*) AS n FROM triobus.command
        WHERE domain = 'd' AND status NOT IN ('COMPLETED', 'IN_TROUBLESHOOTING_QUEUE')""",
}

APPLICATION_CHECKS = {
    "application rows without their command": """
        SELECT count(*) AS n FROM app_order o
        WHERE NOT EXISTS (SELECT FROM triobus.command c WHERE c.command_id = o.id)""",
    "commands without their application row": """
        SELECT count(*) AS n FROM triobus.command c
        WHERE NOT EXISTS (SELECT FROM app_order o WHERE o.id = c.command_id)""",
}


async def problems_of(dsn: str, checks: dict[str, str]) -> list[str]:
    found = []
    for what, sql in checks.items():
        n = await count(dsn, sql)
        if n:
            found.append(f"{what}: {n}")
    return found


async def handler_trial(dsn: str, commands: int, faults: int, rng: random.Random) -> TrialResult:
    """A transactional handler's worker process SIGKILLed at random points of a batch."""
    conn = await connect(dsn)
    try:  # no unique key: a doubled effect must be able to show
        await conn.execute("CREATE TABLE effect (command_id uuid NOT NULL, pid int NOT NULL)")
    finally:
        await conn.close()
    started = time.monotonic()
    async with open_runtime(dsn, migrate=False) as runtime, trio.open_nursery() as nursery:
        current: list[trio.Process] = []

        async def start_one() -> None:
            async def run(task_status: trio.TaskStatus[None]) -> None:
                async with worker_process(dsn, mode="effect") as process:
                    current.append(process)
                    task_status.started()
                    await process.wait()

            await nursery.start(run)

        await start_one()
        batch_id = await runtime.bus.create_batch(
            DOMAIN, [BatchCommand("Work", uuid.uuid4(), {}) for _ in range(commands)]
        )
        with trio.fail_after(300):
            for point in sorted(rng.uniform(0.05, 0.95) for _ in range(faults)):
                await progress_reaches(dsn, batch_id, int(point * commands))
                current.pop().kill()
                await start_one()
            while True:  # until no command of the batch can still run
                open_commands = await count(
                    dsn,
                    "SELECT total_count - completed_count - in_troubleshooting_count AS n"
                    " FROM triobus.batch WHERE batch_id = %s",
                    (batch_id,),
                )
                if not open_commands:
                    break
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    return TrialResult(
        scenario="SIGKILL a transactional handler's worker",
        writes=await count(dsn, "SELECT count(*) AS n FROM effect"),
        faults=faults,
        seconds=time.monotonic() - started,
        hit=await count(
            dsn, "SELECT count(*) AS n FROM triobus.command WHERE domain = 'd' AND attempts > 1"
        ),
        problems=await problems_of(dsn, HANDLER_CHECKS),
    )


@asynccontextmanager
async def app_process(dsn: str) -> AsyncIterator[trio.Process]:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(APP_SCRIPT), dsn], stdout=subprocess.PIPE
    )
    try:
        yield process
    finally:
        process.kill()
        await process.wait()


async def application_trial(dsn: str, faults: int, rng: random.Random) -> TrialResult:
    """An application process SIGKILLed while it loops over transactions."""
    conn = await connect(dsn)
    try:
        await conn.execute("CREATE TABLE app_order (id uuid PRIMARY KEY)")
    finally:
        await conn.close()
    started = time.monotonic()
    open_when_killed = 0
    with trio.fail_after(300):
        for _ in range(faults):
            async with app_process(dsn) as process:
                assert await read_line(process) == "ready"
                # Kill after a random number of lines: wherever its loop then is.
                lines = [await read_line(process) for _ in range(rng.randint(1, 200))]
                process.kill()
                await process.wait()
            if lines[-1].startswith("inside"):
                open_when_killed += 1
    return TrialResult(
        scenario="SIGKILL an application in runtime.transaction()",
        writes=await count(dsn, "SELECT count(*) AS n FROM app_order"),
        faults=faults,
        seconds=time.monotonic() - started,
        hit=open_when_killed,
        problems=await problems_of(dsn, APPLICATION_CHECKS),
    )


async def main(trials: int, commands: int, faults: int, seed: int) -> int:
    rng = random.Random(seed)
    results: list[TrialResult] = []
    async with open_embedded_cluster(settings={"fsync": "off"}) as cluster:
        for trial in range(trials):
            for scenario in ("handler", "application"):
                async with fresh_database(cluster.dsn) as dsn:
                    if scenario == "handler":
                        result = await handler_trial(dsn, commands, faults, rng)
                    else:
                        result = await application_trial(dsn, faults, rng)
                results.append(result)
                print(
                    f"trial {trial + 1:2d} {result.scenario:48s} {result.seconds:6.1f} s"
                    f" writes={result.writes} hit={result.hit}"
                    f" problems={result.problems or 'none'}",
                    flush=True,
                )
    failed = [r for r in results if r.problems]
    print(f"\n{len(results)} trials, {len(failed)} with problems (seed {seed})")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--commands", type=int, default=1000)
    parser.add_argument("--faults", type=int, default=3, help="faults per trial")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.exit(trio.run(main, args.trials, args.commands, args.faults, args.seed))
