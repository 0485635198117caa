"""Acks lock their command rows in (domain, command_id) order, whatever order the results
come in: an ack retried while its first attempt still runs then waits, never deadlocks."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import trio

from triobus.actors import RetryPolicy
from triobus.actors.outcomes import Returned, outcome_of
from triobus.persistence.commands import insert_command
from triobus.persistence.driver import DriverConnection, connect
from triobus.persistence.new_commands import new_command
from triobus.persistence.queue import (
    ClaimedCommand,
    HandlerResult,
    ack_if_claimed,
    claim_commands,
)


def completed(claim: ClaimedCommand) -> HandlerResult:
    return outcome_of(claim, Returned(None), RetryPolicy())


async def waits_for_a_lock(conn: DriverConnection, backend_pid: int) -> bool:
    row = await conn.fetch_one(
        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (backend_pid,)
    )
    return row is not None and row["wait_event_type"] == "Lock"


async def test_an_ack_locks_its_rows_in_command_id_order(
    triobus_dsn: str, eventually: Callable[..., Awaitable[object]]
) -> None:
    first_id, second_id = sorted((uuid.uuid4(), uuid.uuid4()), key=lambda u: u.int)
    holder, acker, observer = [await connect(triobus_dsn) for _ in range(3)]
    try:
        for command_id in (second_id, first_id):  # stored in the other order
            await insert_command(observer, new_command("d", "Noop", command_id, {}))
        # The plan of a real queue (test_query_plans): primary-key lookups, not a scan.
        await acker.execute("SET enable_seqscan = off")
        claims = {
            c.command.command_id: c
            for c in await claim_commands(
                observer, "d", limit=2, visibility_timeout=30.0, default_max_attempts=3
            )
        }
        acked_late: list[uuid.UUID] = []

        async def ack_both_in_reverse() -> None:
            results = [completed(claims[second_id]), completed(claims[first_id])]
            acked_late.extend(c.command_id for c in await ack_if_claimed(acker, results))

        await holder.execute("BEGIN")
        await ack_if_claimed(holder, [completed(claims[first_id])])  # holds the first row
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ack_both_in_reverse)
            await eventually(lambda: waits_for_a_lock(observer, acker.backend_pid))
            # Waiting on the first row, the other ack must not hold the second one.
            await holder.execute(
                "SELECT 1 FROM triobus.command WHERE domain = 'd' AND command_id = %s"
                " FOR UPDATE NOWAIT",
                (second_id,),
            )
            await holder.execute("COMMIT")
        assert acked_late == [second_id]  # the first was acked by the holder meanwhile
    finally:
        for conn in (holder, acker, observer):
            await conn.close()
