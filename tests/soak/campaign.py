"""The fault campaign: a batch runs while workers are SIGKILLed, PostgreSQL restarts, or
backends are terminated; afterwards nothing may be lost or doubled.

    python tests/soak/campaign.py [--trials 20] [--commands 5000] [--faults 3]

(run it with the project's environment: `.venv/bin/python tests/soak/campaign.py`). The
test suite runs each scenario once on a small batch (tests/integration/test_faults.py).
Every other trial's batch has members that fail (a business rule). Every trial checks,
against the database: every command COMPLETED (or FAILED, if it was to fail), exactly one
terminal audit event and exactly one reply per command, the batch complete with exact
counts and exactly one BATCH_COMPLETED event, and its follow-up commands: on_complete
once, and on_success once if no member failed, else on_failure once, nothing else; and in
the creating process, the callback exactly once.
"""

from __future__ import annotations

import argparse
import logging
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from triobus.actors import (
    BatchCommand,
    BatchMetadata,
    BusinessRuleError,
    Command,
    FollowUpCommand,
    FollowUpEvent,
    HandlerContext,
    HandlerRegistry,
    Runtime,
    open_runtime,
)
from triobus.persistence.databases import create_database, drop_database, migrate
from triobus.persistence.driver import connect
from triobus.persistence.embedded import EmbeddedCluster, open_embedded_cluster
from triobus.persistence.new_commands import follow_up_command_id

WORKER_SCRIPT = Path(__file__).parent.parent / "integration" / "worker_process.py"
DOMAIN = "d"
REPLIES = "campaign-replies"
TERMINAL_EVENTS = ("COMPLETED", "FAILED", "BUSINESS_RULE_FAILED", "OPERATOR_CANCEL")
FOLLOW_UP_DOMAIN = "f"  # nobody works it: the follow-ups stay as they were written


def follow_up(event: FollowUpEvent) -> FollowUpCommand:
    return FollowUpCommand(domain=FOLLOW_UP_DOMAIN, command_type=str(event))


@attrs.frozen
class TrialResult:
    scenario: str
    commands: int
    faults: int
    seconds: float
    callbacks: int
    outages_logged: int | None
    redelivered: int  # commands claimed more than once: the faults hit work in flight
    problems: list[str]


def registry() -> HandlerRegistry:
    handlers = HandlerRegistry()

    @handlers.handler(DOMAIN, "Work")
    async def work(command: Command, ctx: HandlerContext) -> dict[str, int]:
        if command.data.get("outcome") == "rule":  # as worker_process.py's "outcome" mode
            raise BusinessRuleError("RULE", "refused by a business rule")
        return {"attempt": ctx.attempt}

    return handlers


async def check_exactly_once(
    dsn: str, batch_id: uuid.UUID, expected: int, failing: int
) -> list[str]:
    """Everything a trial must leave behind; returns what is wrong (empty when all is well)."""
    conn = await connect(dsn)
    try:
        problems = []
        for what, sql, params in [
            (
                "commands not COMPLETED (or FAILED, as they were to)",
                "SELECT count(*) AS n FROM triobus.command WHERE batch_id = %s AND status <>"
                " CASE WHEN data->>'outcome' = 'rule' THEN 'FAILED' ELSE 'COMPLETED' END",
                (batch_id,),
            ),
            (
                "commands without exactly one terminal audit event",
                "SELECT count(*) AS n FROM triobus.command c WHERE c.batch_id = %s AND"
                " (SELECT count(*) FROM triobus.audit a WHERE a.domain = c.domain"
                "  AND a.subject_id = c.command_id AND a.event_type = ANY(%s)) <> 1",
                (batch_id, list(TERMINAL_EVENTS)),
            ),
            (
                "commands without exactly one reply",
                "SELECT count(*) AS n FROM triobus.command c WHERE c.batch_id = %s AND"
                " (SELECT count(*) FROM triobus.reply r WHERE r.domain = c.domain"
                "  AND r.command_id = c.command_id) <> 1",
                (batch_id,),
            ),
            (
                "BATCH_COMPLETED events other than one",
                "SELECT abs(count(*) - 1) AS n FROM triobus.audit"
                " WHERE subject_id = %s AND event_type = 'BATCH_COMPLETED'",
                (batch_id,),
            ),
        ]:
            row = await conn.fetch_one(sql, params)
            if row is None or row["n"] != 0:
                problems.append(f"{what}: {row['n'] if row else '?'}")
        batch = await conn.fetch_one(
            "SELECT status, total_count, completed_count, failed_count FROM triobus.batch"
            " WHERE batch_id = %s",
            (batch_id,),
        )
        if batch != {
            "status": "COMPLETED_WITH_FAILURES" if failing else "COMPLETED",
            "total_count": expected,
            "completed_count": expected - failing,
            "failed_count": failing,
        }:
            problems.append(f"batch row: {batch}")
        rows = await conn.fetch_all(  # a follow-up's correlation id is its batch's id
            "SELECT command_type, command_id FROM triobus.command"
            " WHERE domain = %s AND correlation_id = %s ORDER BY command_type",
            (FOLLOW_UP_DOMAIN, batch_id),
        )
        events = [FollowUpEvent.ON_COMPLETE]
        events.append(FollowUpEvent.ON_FAILURE if failing else FollowUpEvent.ON_SUCCESS)
        wanted = [
            {"command_type": str(e), "command_id": follow_up_command_id(DOMAIN, batch_id, e)}
            for e in sorted(events)
        ]
        if rows != wanted:
            problems.append(f"follow-ups: {[r['command_type'] for r in rows]}")
        return problems
    finally:
        await conn.close()


async def run_batch(
    runtime: Runtime,
    dsn: str,
    commands: int,
    fault_points: list[float],
    inject: Callable[[], Awaitable[None]],
    scenario: str,
    failing: int,
) -> TrialResult:
    """Create the batch (`failing` of its members fail, spread through it), call `inject`
    each time progress passes a fault point, wait for the callback, then check
    everything."""
    calls: list[BatchMetadata] = []
    done = trio.Event()

    async def on_complete(batch: BatchMetadata) -> None:
        calls.append(batch)
        done.set()

    started = time.monotonic()
    every = commands // failing if failing else 0
    batch_id = await runtime.bus.create_batch(
        DOMAIN,
        [
            BatchCommand(
                "Work",
                uuid.uuid4(),
                {"outcome": "rule" if every and i % every == every - 1 else "ok"},
                reply_to=REPLIES,
            )
            for i in range(commands)
        ],
        on_complete=on_complete,
        on_complete_command=follow_up(FollowUpEvent.ON_COMPLETE),
        on_success_command=follow_up(FollowUpEvent.ON_SUCCESS),
        on_failure_command=follow_up(FollowUpEvent.ON_FAILURE),
    )
    with trio.fail_after(300):
        for point in sorted(fault_points):
            await progress_reaches(dsn, batch_id, int(point * commands))
            await inject()
        await done.wait()
    seconds = time.monotonic() - started
    problems = await check_exactly_once(dsn, batch_id, commands, failing)
    conn = await connect(dsn)
    try:
        row = await conn.fetch_one(
            "SELECT count(*) AS n FROM triobus.command WHERE batch_id = %s AND attempts > 1",
            (batch_id,),
        )
    finally:
        await conn.close()
    assert row is not None
    return TrialResult(
        scenario=scenario,
        commands=commands,
        faults=len(fault_points),
        seconds=seconds,
        callbacks=len(calls),
        outages_logged=runtime.pool.statistics().outages,
        redelivered=row["n"],
        problems=problems,
    )


async def progress_reaches(dsn: str, batch_id: uuid.UUID, done: int) -> None:
    """Poll (on a fresh connection each time: backends get terminated) until `done`
    commands of the batch are terminal."""
    while True:
        try:
            conn = await connect(dsn)
            try:
                row = await conn.fetch_one(
                    "SELECT completed_count FROM triobus.batch WHERE batch_id = %s", (batch_id,)
                )
            finally:
                await conn.close()
            if row is not None and row["completed_count"] >= done * 0.99:  # 1 % may fail
                return
        except Exception:  # the server is restarting: ask again
            pass
        await trio.sleep(0.01)


@asynccontextmanager
async def worker_process(
    dsn: str, concurrency: int = 16, mode: str = "outcome"
) -> AsyncIterator[trio.Process]:
    """A worker process (tests/integration/worker_process.py, in `mode`), once ready."""
    process = await trio.lowlevel.open_process(
        [sys.executable, str(WORKER_SCRIPT), dsn, DOMAIN, mode, str(concurrency)],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            if not chunk:
                raise RuntimeError("worker process ended before it was ready")
            line += chunk
        yield process
    finally:
        process.kill()
        await process.wait()


def failing_of(commands: int, failures: bool) -> int:
    """How many members of a batch fail, in a trial with failures: 1 %."""
    return max(1, commands // 100) if failures else 0


async def sigkill_trial(
    dsn: str, commands: int, faults: int, rng: random.Random, *, failures: bool = False
) -> TrialResult:
    """Worker processes are SIGKILLed at random points of the batch; a fresh one follows."""
    async with open_runtime(dsn, migrate=False, batch_reconcile_interval=0.5) as runtime:
        current: list[trio.Process] = []
        async with trio.open_nursery() as nursery:

            async def start_one() -> None:
                async def run(task_status: trio.TaskStatus[None]) -> None:
                    async with worker_process(dsn) as process:
                        current.append(process)
                        task_status.started()
                        await process.wait()

                await nursery.start(run)

            async def kill_and_replace() -> None:
                current.pop().kill()
                await start_one()

            await start_one()
            result = await run_batch(
                runtime,
                dsn,
                commands,
                [rng.uniform(0.05, 0.95) for _ in range(faults)],
                kill_and_replace,
                "SIGKILL a worker process",
                failing_of(commands, failures),
            )
            nursery.cancel_scope.cancel()
    return result


async def in_process_trial(
    dsn: str,
    commands: int,
    faults: int,
    rng: random.Random,
    inject: Callable[[], Awaitable[None]],
    scenario: str,
    failures: bool,
) -> TrialResult:
    """Two workers (concurrency 16) in this process work the batch while `inject` strikes."""
    async with open_runtime(
        dsn, registry=registry(), migrate=False, batch_reconcile_interval=0.5
    ) as runtime:
        for _ in range(2):
            await runtime.start_worker(DOMAIN, concurrency=16, poll_interval=0.5)
        fault_points = [rng.uniform(0.05, 0.95) for _ in range(faults)]
        return await run_batch(
            runtime,
            dsn,
            commands,
            fault_points,
            inject,
            scenario,
            failing_of(commands, failures),
        )


async def restart_trial(
    cluster: EmbeddedCluster,
    dsn: str,
    commands: int,
    faults: int,
    rng: random.Random,
    *,
    failures: bool = False,
) -> TrialResult:
    """PostgreSQL is restarted (fast shutdown, start) at random points of the batch."""
    scenario = "restart PostgreSQL (fast shutdown)"
    return await in_process_trial(dsn, commands, faults, rng, cluster.restart, scenario, failures)


async def terminate_trial(
    dsn: str, commands: int, faults: int, rng: random.Random, *, failures: bool = False
) -> TrialResult:
    """Every backend of the database but the killer's (workers', acker's, notifier's) is
    terminated with pg_terminate_backend at random points of the batch."""

    async def terminate_all() -> None:
        conn = await connect(dsn)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()

    scenario = "pg_terminate_backend of every backend"
    return await in_process_trial(dsn, commands, faults, rng, terminate_all, scenario, failures)


@asynccontextmanager
async def fresh_database(admin_dsn: str) -> AsyncIterator[str]:
    name = f"campaign_{uuid.uuid4().hex[:12]}"
    dsn = await create_database(admin_dsn, name)
    try:
        await migrate(dsn)
        yield dsn
    finally:
        await drop_database(admin_dsn, name)


async def main(trials: int, commands: int, faults: int, seed: int) -> int:
    logging.getLogger("triobus.actors.acker").setLevel(logging.ERROR)  # not a line per failure
    rng = random.Random(seed)
    results: list[TrialResult] = []
    async with open_embedded_cluster(settings={"fsync": "off"}) as cluster:
        for trial in range(trials):
            failures = trial % 2 == 1
            for scenario in ("sigkill", "restart", "terminate"):
                async with fresh_database(cluster.dsn) as dsn:
                    if scenario == "sigkill":
                        result = await sigkill_trial(dsn, commands, faults, rng, failures=failures)
                    elif scenario == "restart":
                        result = await restart_trial(
                            cluster, dsn, commands, faults, rng, failures=failures
                        )
                    else:
                        result = await terminate_trial(
                            dsn, commands, faults, rng, failures=failures
                        )
                results.append(result)
                print(
                    f"trial {trial + 1:2d} {result.scenario:40s} {result.seconds:6.1f} s"
                    f" failing={failing_of(commands, failures)}"
                    f" callbacks={result.callbacks} outages={result.outages_logged}"
                    f" redelivered={result.redelivered}"
                    f" problems={result.problems or 'none'}",
                    flush=True,
                )
    failed = [r for r in results if r.problems or r.callbacks != 1]
    print(f"\n{len(results)} trials, {len(failed)} with problems (seed {seed})")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--commands", type=int, default=5000)
    parser.add_argument("--faults", type=int, default=3, help="faults per trial")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.exit(trio.run(main, args.trials, args.commands, args.faults, args.seed))
