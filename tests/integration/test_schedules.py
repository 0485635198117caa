"""Periodic commands: declaring a schedule, its ticks sent exactly once across runtimes,
restarts and retention, catch-up after an outage, changed and conflicting definitions
(bad ones: tests/integration/bad_input/test_runtime_input.py)."""

from __future__ import annotations

import itertools
import logging
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import _eventually
from tests.integration.processes import read_line
from tests.integration.test_retention import sql
from triobus.actors import (
    Command,
    HandlerContext,
    InvalidOperationError,
    RetentionPolicy,
    Runtime,
    open_runtime,
)
from triobus.actors.maintenance import Pruner
from triobus.persistence.schedules import tick_command_id

SCRIPT = Path(__file__).with_name("schedule_process.py")
EVERY_SECOND = "* * * * * *"
SECOND = timedelta(seconds=1)


async def sent_ticks(dsn: str, name: str) -> list[dict[str, Any]]:
    """The commands sent for `name`'s ticks, oldest tick first, with their SENT events."""
    return await sql(
        dsn,
        "SELECT c.domain, c.command_id, c.data,"
        " (c.data->'schedule'->>'tick')::timestamptz AS tick,"
        " (SELECT count(*) FROM triobus.audit a WHERE a.subject_id = c.command_id"
        "  AND a.event_type = 'SENT') AS sent_events"
        " FROM triobus.command c WHERE c.data->'schedule'->>'name' = %s ORDER BY tick",
        (name,),
    )


def assert_every_tick_once(name: str, ticks: list[dict[str, Any]]) -> None:
    """One command per tick, each with its derived id and one SENT event, no tick missing."""
    times = [t["tick"] for t in ticks]
    assert [b - a for a, b in itertools.pairwise(times)] == [SECOND] * (len(times) - 1)
    assert [t["command_id"] for t in ticks] == [tick_command_id(name, tick) for tick in times]
    assert {t["sent_events"] for t in ticks} == {1}


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    await _eventually(check, 30.0)


async def at_least(dsn: str, name: str, count: int) -> None:
    async def enough() -> bool:
        return len(await sent_ticks(dsn, name)) >= count

    await until(enough)


async def test_a_schedule_sends_each_tick_with_its_derived_id_and_data(
    triobus_runtime: Runtime, triobus_dsn: str
) -> None:
    declared_at = datetime.now(UTC)
    record = await triobus_runtime.schedule(
        "report", "reports", "MakeReport", EVERY_SECOND, data={"to": "ops"}
    )
    assert (record.name, record.domain, record.command_type, record.cron) == (
        "report",
        "reports",
        "MakeReport",
        EVERY_SECOND,
    )
    assert (record.timezone, record.data, record.version, record.last_tick) == (
        "UTC",
        {"to": "ops"},
        1,
        None,
    )
    await at_least(triobus_dsn, "report", 3)
    ticks = await sent_ticks(triobus_dsn, "report")
    assert_every_tick_once("report", ticks)
    assert ticks[0]["tick"] > declared_at  # from the next tick on, none before
    assert {t["domain"] for t in ticks} == {"reports"}
    first = ticks[0]
    assert first["data"] == {
        "to": "ops",
        "schedule": {"name": "report", "tick": first["tick"].astimezone(UTC).isoformat()},
    }
    command = await triobus_runtime.bus.get_command("reports", first["command_id"])
    assert command is not None and command.command_type == "MakeReport"
    stored = await sql(triobus_dsn, "SELECT last_tick FROM triobus.schedule")
    assert stored[0]["last_tick"] >= ticks[-1]["tick"]


async def test_three_runtimes_send_every_tick_once_and_restarts_lose_none(
    triobus_dsn: str,
) -> None:
    """Three processes declare one every-second schedule; one is SIGKILLed and restarted
    midway; at the end all are killed, and one restarted after three seconds sends the
    ticks of the outage (its catch-up window is 60 s)."""
    name = "every-second"

    async def start() -> trio.Process:
        process = await trio.lowlevel.open_process(
            [sys.executable, str(SCRIPT), triobus_dsn], stdout=subprocess.PIPE
        )
        with trio.fail_after(30):
            assert await read_line(process) == "ready"
        return process

    async def kill(process: trio.Process) -> None:
        process.send_signal(signal.SIGKILL)
        await process.wait()

    processes = [await start() for _ in range(3)]
    try:
        await at_least(triobus_dsn, name, 8)
        await kill(processes[1])
        await at_least(triobus_dsn, name, 11)
        processes[1] = await start()
        await at_least(triobus_dsn, name, 22)
        for process in processes:
            await kill(process)
        last = (await sent_ticks(triobus_dsn, name))[-1]["tick"]

        async def outage_over() -> bool:  # no runtime runs for three ticks
            now = (await sql(triobus_dsn, "SELECT now() AS now"))[0]["now"]
            return bool(now >= last + 3 * SECOND)

        await until(outage_over)
        processes = [await start()]
        restarted = datetime.now(UTC)

        async def caught_up() -> bool:
            return bool((await sent_ticks(triobus_dsn, name))[-1]["tick"] > restarted)

        await until(caught_up)
    finally:
        for process in processes:
            if process.returncode is None:
                await kill(process)
    ticks = await sent_ticks(triobus_dsn, name)
    assert len(ticks) >= 26
    assert_every_tick_once(name, ticks)


async def test_missed_ticks_within_the_catch_up_window_are_sent_older_ones_skipped(
    triobus_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The schedule's ticks are marked done up to 30 s ago, as if every runtime had been
    down since: one with a 10 s window sends the last ten and logs the rest skipped."""
    async with open_runtime(triobus_dsn, migrate=False, retention=None) as runtime:
        await runtime.schedule("late", "clock", "Tick", EVERY_SECOND, catch_up=10)
    await sql(
        triobus_dsn,
        "UPDATE triobus.schedule SET sent_through = date_trunc('second', now())"
        " - interval '30 seconds' RETURNING 1",
    )
    caplog.set_level(logging.WARNING, logger="triobus.actors.scheduler")
    started = datetime.now(UTC)
    async with open_runtime(triobus_dsn, migrate=False, retention=None) as runtime:
        await runtime.schedule("late", "clock", "Tick", EVERY_SECOND, catch_up=10)
        await at_least(triobus_dsn, "late", 10)
    ticks = await sent_ticks(triobus_dsn, "late")
    assert_every_tick_once("late", ticks)
    assert started - 11 * SECOND <= ticks[0]["tick"] <= started - 9 * SECOND
    skipped = [r.getMessage() for r in caplog.records if "skipped its ticks" in r.getMessage()]
    assert len(skipped) == 1 and "more than catch_up=10 s late" in skipped[0], skipped


async def test_ticks_stay_sent_after_retention_removed_their_commands(
    triobus_dsn: str,
) -> None:
    """Ticks handled and pruned are not sent again by a runtime whose catch-up window
    covers them: the schedule row, not the commands, says they are done."""
    async with open_runtime(triobus_dsn, migrate=False, retention=None) as runtime:

        @runtime.registry.handler("clock", "Tick")
        async def tick(command: Command, ctx: HandlerContext) -> None:
            pass

        await runtime.schedule("kept", "clock", "Tick", EVERY_SECOND, catch_up=3600)
        await at_least(triobus_dsn, "kept", 3)
    handled = await sent_ticks(triobus_dsn, "kept")
    async with open_runtime(triobus_dsn, migrate=False, retention=None) as runtime:
        runtime.registry.handler("clock", "Tick")(tick)
        await runtime.drain("clock")
        report = await Pruner(runtime.pool, RetentionPolicy(commands=0.001)).prune()
        assert report.total.commands == len(handled)
        assert await sent_ticks(triobus_dsn, "kept") == []
        await runtime.schedule("kept", "clock", "Tick", EVERY_SECOND, catch_up=3600)
        await at_least(triobus_dsn, "kept", 2)
    resent = [t for t in await sent_ticks(triobus_dsn, "kept") if t["tick"] <= handled[-1]["tick"]]
    assert resent == []


async def test_a_changed_definition_takes_effect_from_the_next_tick_in_every_runtime(
    triobus_runtime: Runtime, triobus_dsn: str
) -> None:
    await triobus_runtime.schedule("moving", "first", "Tick", EVERY_SECOND)
    await at_least(triobus_dsn, "moving", 2)
    async with open_runtime(triobus_dsn, migrate=False, retention=None) as other:
        changed = await other.schedule("moving", "second", "Tock", EVERY_SECOND, data={"n": 2})
        assert changed.version == 2

    # Only the first runtime runs now: it follows the stored definition.
    async def moved() -> bool:
        ticks = await sent_ticks(triobus_dsn, "moving")
        return [t["domain"] for t in ticks].count("second") >= 3

    await until(moved)
    ticks = await sent_ticks(triobus_dsn, "moving")
    domains = [t["domain"] for t in ticks]
    assert domains == sorted(domains)  # every "first" tick before every "second" one
    assert all(t["tick"] > changed.declared_at for t in ticks if t["domain"] == "second")
    assert all(t["data"]["n"] == 2 for t in ticks if t["domain"] == "second")
    times = [t["tick"] for t in ticks]
    assert len(set(times)) == len(times)


async def test_the_same_definition_declared_again_changes_nothing(
    triobus_runtime: Runtime,
) -> None:
    first = await triobus_runtime.schedule("daily", "reports", "Make", "0 6 * * *")
    again = await triobus_runtime.schedule("daily", "reports", "Make", "0 6 * * *")
    async with open_runtime(triobus_runtime.dsn, migrate=False, retention=None) as other:
        elsewhere = await other.schedule("daily", "reports", "Make", "0 6 * * *")
    assert first == again == elsewhere


async def test_another_definition_under_a_name_this_runtime_declared_is_refused(
    triobus_runtime: Runtime, triobus_dsn: str
) -> None:
    await triobus_runtime.schedule("daily", "reports", "Make", "0 6 * * *")
    with pytest.raises(InvalidOperationError, match="schedule 'daily' is declared"):
        await triobus_runtime.schedule("daily", "reports", "Make", "0 7 * * *")
    stored = await sql(triobus_dsn, "SELECT cron, version FROM triobus.schedule")
    assert stored == [{"cron": "0 6 * * *", "version": 1}]
