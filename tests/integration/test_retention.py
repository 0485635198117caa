"""Retention: what pruning removes, what it never removes, one pruner at a time, and the
maintenance actor. Rows are aged by moving their timestamps back in the database."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import trio

from tests.integration.batch_work import commands, register_work
from triobus.actors import BatchCommand, FollowUpCommand, Runtime, open_runtime
from triobus.actors.maintenance import (
    PRUNE_LOCK_KEY,
    PruneLockTaken,
    Pruner,
    RetentionPolicy,
    run_maintenance,
)
from triobus.persistence.driver import connect
from triobus.persistence.errors import DatabaseError
from triobus.persistence.pool import open_pool
from triobus.persistence.retention import Removed

DAY = 86_400.0


async def sql(dsn: str, query: str, params: Any = None) -> list[dict[str, Any]]:
    conn = await connect(dsn)
    try:
        return await conn.fetch_all(query, params)
    finally:
        await conn.close()


async def age(dsn: str, days: float) -> None:
    """Move every timestamp back by `days`: what is there now finished that long ago."""
    shift = f"interval '{float(days)} days'"
    for statement in (
        f"UPDATE triobus.command SET finished_at = finished_at - {shift},"
        f" created_at = created_at - {shift}, updated_at = updated_at - {shift}",
        f"UPDATE triobus.batch SET completed_at = completed_at - {shift},"
        f" created_at = created_at - {shift}",
        f"UPDATE triobus.reply SET created_at = created_at - {shift}",
    ):
        await sql(dsn, statement + " RETURNING 1")


async def rows(dsn: str) -> dict[str, int]:
    counted = await sql(
        dsn,
        "SELECT (SELECT count(*) FROM triobus.command) AS command,"
        " (SELECT count(*) FROM triobus.audit) AS audit,"
        " (SELECT count(*) FROM triobus.reply) AS reply,"
        " (SELECT count(*) FROM triobus.batch) AS batch",
    )
    return {k: int(v) for k, v in counted[0].items()}


async def statuses(runtime: Runtime) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for command in await runtime.bus.query_commands(limit=1000):
        found.setdefault(str(command.status), []).append(command.data.get("outcome", "-"))
    return found


async def work_through(runtime: Runtime, *outcomes: str, reply: bool = True) -> list[uuid.UUID]:
    ids = []
    for outcome in outcomes:
        sent = await runtime.bus.send(
            "d", "Work", uuid.uuid4(), {"outcome": outcome}, reply_to="q" if reply else None
        )
        ids.append(sent.command_id)
    await runtime.drain("d")
    return ids


async def test_pruning_removes_old_finished_commands_with_their_audit_and_replies(
    triobus_runtime: Runtime, triobus_dsn: str
) -> None:
    runtime = triobus_runtime
    await register_work(runtime)
    await work_through(runtime, "ok", "rule", "tsq")
    await runtime.bus.send("d", "Work", uuid.uuid4(), {"outcome": "ok"}, delay=30 * DAY)
    await age(triobus_dsn, 10)
    recent = await work_through(runtime, "ok")
    before = await rows(triobus_dsn)
    pruner = Pruner(runtime.pool, RetentionPolicy())

    dry = await pruner.prune(dry_run=True)
    assert await rows(triobus_dsn) == before  # a dry run removes nothing
    report = await pruner.prune()
    assert (report.removed, report.replies) == (dry.removed, dry.replies)
    # the completed and the failed command went, with 3 audit rows each; their replies,
    # as old, went first by age; the pending (delayed) one, the one in the TSQ and the
    # recent one stayed
    assert report.removed["d"] == Removed(commands=2, audit_rows=6, replies=0)
    assert report.replies == 2
    assert await statuses(runtime) == {
        "COMPLETED": ["ok"],
        "IN_TROUBLESHOOTING_QUEUE": ["tsq"],
        "PENDING": ["ok"],
    }
    after = await rows(triobus_dsn)
    assert after["audit"] == before["audit"] - 6 and after["reply"] == before["reply"] - 2
    assert await runtime.bus.get_command("d", recent[0]) is not None
    assert (await pruner.prune()).total.nothing  # nothing old is left


async def test_a_completed_batch_goes_whole_and_an_unfinished_one_stays_whole(
    triobus_runtime: Runtime, triobus_dsn: str
) -> None:
    runtime = triobus_runtime
    await register_work(runtime)
    report_command = FollowUpCommand("f", "Report")
    done = await runtime.bus.create_batch(
        "d",
        [BatchCommand("Work", uuid.uuid4(), {"outcome": "ok"}, reply_to="q") for _ in range(3)],
        on_complete_command=report_command,
    )
    held = await runtime.bus.create_batch("d", commands("ok", "ok", "tsq"))
    await runtime.drain("d")
    assert (await runtime.bus.get_batch("d", done)).is_final  # type: ignore[union-attr]
    await age(triobus_dsn, 10)
    report = await Pruner(runtime.pool, RetentionPolicy(replies=None)).prune()
    # the completed batch: its row, its 3 members (3 audit rows and a reply each) and its
    # own 2 BATCH_* events; its follow-up, in domain "f", goes by its own age: it is PENDING
    assert report.removed["d"] == Removed(commands=3, audit_rows=11, replies=3, batches=1)
    assert await runtime.bus.get_batch("d", done) is None
    assert await runtime.bus.list_batch_commands("d", done) == []
    assert await runtime.bus.get_audit_trail(done, domain="d") == []
    # the batch held open by its TSQ member keeps every member, finished ones too
    kept = await runtime.bus.list_batch_commands("d", held)
    assert len(kept) == 3
    assert (await runtime.bus.get_batch("d", held)).total_count == 3  # type: ignore[union-attr]
    assert len(await runtime.bus.query_commands(domain="f")) == 1


async def test_retention_per_domain_none_keeps_and_replies_go_by_age(
    triobus_runtime: Runtime, triobus_dsn: str
) -> None:
    runtime = triobus_runtime
    for domain in ("d", "e"):
        await runtime.bus.send(domain, "T", uuid.uuid4(), {}, reply_to="q")
    await sql(
        triobus_dsn,
        "UPDATE triobus.command SET status = 'CANCELED', finished_at = now() RETURNING 1",
    )
    await sql(
        triobus_dsn,
        "INSERT INTO triobus.reply (queue, domain, command_id, correlation_id, outcome)"
        " SELECT 'q', domain, command_id, correlation_id, 'CANCELED' FROM triobus.command"
        " RETURNING 1",
    )
    await age(triobus_dsn, 3)
    keep_e = RetentionPolicy(commands=DAY, by_domain={"e": None}, replies=None)
    report = await Pruner(runtime.pool, keep_e).prune()
    assert set(report.removed) == {"d"} and report.replies == 0
    assert [c.domain for c in await runtime.bus.query_commands()] == ["e"]
    replies = await Pruner(runtime.pool, RetentionPolicy(commands=None, replies=DAY)).prune()
    assert replies.replies == 1 and replies.removed == {}
    assert RetentionPolicy(commands=0, replies=0).disabled


async def test_a_pruned_id_may_be_sent_again(triobus_runtime: Runtime, triobus_dsn: str) -> None:
    """The idempotency of `send` holds for as long as the command is kept."""
    runtime = triobus_runtime
    await register_work(runtime)
    (command_id,) = await work_through(runtime, "ok", reply=False)
    await age(triobus_dsn, 8)
    await Pruner(runtime.pool, RetentionPolicy()).prune()
    again = await runtime.bus.send("d", "Work", command_id, {"outcome": "ok"})
    assert again.command_id == command_id


async def test_one_pruner_at_a_time(
    triobus_runtime: Runtime, triobus_dsn: str, eventually: Callable[..., Any]
) -> None:
    runtime = triobus_runtime
    await register_work(runtime)
    await work_through(runtime, "ok", "ok")
    await age(triobus_dsn, 10)
    holder = await connect(triobus_dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock(%s)", (PRUNE_LOCK_KEY,))
        pruner = Pruner(runtime.pool, RetentionPolicy())
        with pytest.raises(PruneLockTaken):  # the maintenance actor leaves the round
            await pruner.prune()
        waited: list[Removed] = []

        async def prune_when_free() -> None:  # the CLI waits for it
            waited.append((await pruner.prune(wait=True)).total)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(prune_when_free)

            async def waiting_on_the_lock() -> bool:
                return bool(
                    await sql(
                        triobus_dsn,
                        "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                    )
                )

            await eventually(waiting_on_the_lock)
            assert waited == [] and len(await runtime.bus.query_commands()) == 2
            await holder.execute("SELECT pg_advisory_unlock(%s)", (PRUNE_LOCK_KEY,))
        assert waited[0].commands == 2
    finally:
        await holder.close()


async def test_a_runtime_prunes_in_the_background(
    triobus_dsn: str, eventually: Callable[..., Any]
) -> None:
    async with open_runtime(triobus_dsn, migrate=False, retention=None) as runtime:
        await register_work(runtime)
        await work_through(runtime, "ok", "ok", "ok")
    await age(triobus_dsn, 2)
    async with open_runtime(
        triobus_dsn,
        migrate=False,
        retention=RetentionPolicy(commands=DAY),
        maintenance_interval=0.05,
    ) as runtime:

        async def pruned() -> bool:
            return (await rows(triobus_dsn))["command"] == 0

        await eventually(pruned)


async def test_a_role_that_may_not_delete_turns_its_pruning_off_with_one_line(
    role_dsns: dict[str, str],
    triobus_dsn: str,
    caplog: pytest.LogCaptureFixture,
    eventually: Callable[..., Any],
) -> None:
    async with open_runtime(triobus_dsn, migrate=False, retention=None) as owner:
        await owner.bus.send("d", "T", uuid.uuid4(), {})  # a domain to prune
    caplog.set_level(logging.WARNING, logger="triobus.actors.maintenance")
    async with open_runtime(role_dsns["worker"], migrate=False, maintenance_interval=0.05):

        async def said() -> bool:
            return any("pruning is off" in r.getMessage() for r in caplog.records)

        await eventually(said)  # the runtime's own maintenance actor says it
    assert sum("pruning is off" in r.getMessage() for r in caplog.records) == 1
    # ... once, and then stops: the actor returns instead of trying again each round
    caplog.clear()
    async with open_pool(role_dsns["worker"], max_size=2) as pool:
        with trio.fail_after(10):
            await run_maintenance(Pruner(pool, RetentionPolicy()), 0.01)
    assert sum("pruning is off" in r.getMessage() for r in caplog.records) == 1


def test_a_bad_retention_is_refused() -> None:
    with pytest.raises(ValueError, match="retention must be a number of seconds"):
        RetentionPolicy(commands="7d")
    with pytest.raises(ValueError, match="domain"):
        RetentionPolicy(by_domain={"a b": 1.0})
    with pytest.raises(ValueError, match="by_domain must be a mapping"):
        RetentionPolicy(by_domain=[("d", 1.0)])


async def test_a_chunk_that_times_out_is_halved_and_never_waits_long_for_a_lock(
    triobus_runtime: Runtime, triobus_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A chunk blocked past the statement timeout (here by a row lock the test holds on
    the oldest finished command) is retried at half the size, down to MIN_CHUNK, then once
    without the statement timeout, where the lock timeout stops it; nothing was removed."""
    runtime = triobus_runtime
    await register_work(runtime)
    await work_through(runtime, "ok", "ok", "ok", reply=False)
    await age(triobus_dsn, 10)
    oldest = (await runtime.bus.query_commands(limit=1000))[-1]
    caplog.set_level(logging.INFO, logger="triobus.actors.maintenance")
    holder = await connect(triobus_dsn)
    try:
        async with holder.transaction():
            await holder.execute(
                "SELECT 1 FROM triobus.command WHERE command_id = %s FOR UPDATE",
                (oldest.command_id,),
            )
            pruner = Pruner(
                runtime.pool, RetentionPolicy(replies=None), chunk=40, statement_timeout=0.2
            )
            with pytest.raises(DatabaseError) as raised:
                await pruner.prune()
        assert raised.value.sqlstate == "55P03"  # lock_timeout
        timed_out = [r.getMessage() for r in caplog.records if "timed out" in r.getMessage()]
        assert timed_out == [
            "a prune chunk timed out: 20 per statement now",
            "a prune chunk timed out: 10 per statement now",
            "a prune chunk of 10 timed out at the smallest size: running it without the"
            " statement timeout",
        ]
        assert len(await runtime.bus.query_commands()) == 3
    finally:
        await holder.close()
    assert (await pruner.prune()).total.commands == 3  # the lock gone, all goes


async def test_a_batch_too_big_for_the_statement_timeout_is_still_removed_whole(
    triobus_runtime: Runtime, triobus_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With a 1 ms statement timeout no chunk of a 1,000-member batch fits: the chunk
    halves down to one batch, which then runs without the timeout, each batch whole."""
    runtime = triobus_runtime
    await register_work(runtime)
    for _ in range(2):
        await runtime.bus.create_batch("d", commands(*["ok"] * 1000))
    await runtime.drain("d", timeout=120)
    await age(triobus_dsn, 10)
    caplog.set_level(logging.INFO, logger="triobus.actors.maintenance")
    pruner = Pruner(runtime.pool, RetentionPolicy(), batch_chunk=4, statement_timeout=0.001)
    report = await pruner.prune()
    assert (report.total.batches, report.total.commands) == (2, 2000)
    assert await rows(triobus_dsn) == {"command": 0, "audit": 0, "reply": 0, "batch": 0}
    messages = [r.getMessage() for r in caplog.records]
    assert "a prune chunk timed out: 1 per statement now" in messages
    assert any("timed out at the smallest size" in m for m in messages)
