"""The acker: results written many per statement, guarded by their leases; what the
database refuses is split off and dropped alone."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import attrs
import pytest
import trio

from tests.integration.roles import claim, send, statuses
from triobus.actors.acker import Acker
from triobus.actors.in_flight import InFlight
from triobus.actors.outcomes import RetryPolicy, Returned, outcome_of
from triobus.persistence.pool import ConnectionPool
from triobus.persistence.queue import ClaimedCommand, HandlerResult
from triobus.persistence.records import CommandChange


@attrs.define
class Recorder:
    """What the acker hands on: committed changes, and the errors it notes."""

    changes: list[CommandChange] = attrs.field(factory=list)
    errors: list[str] = attrs.field(factory=list)

    def acked(self, changes: Sequence[CommandChange]) -> None:
        self.changes += changes


def completed(claimed: ClaimedCommand) -> HandlerResult:
    return outcome_of(claimed, Returned({"ok": True}), RetryPolicy())


async def ack_all(
    pool: ConnectionPool, in_flight: InFlight, results: list[HandlerResult]
) -> tuple[Acker, Recorder]:
    """Run an acker over `results`, all waiting in its channel from the start."""
    recorder = Recorder()
    acker = Acker(
        domain="d",
        pool=pool,
        in_flight=in_flight,
        on_acked=recorder.acked,
        note_error=recorder.errors.append,
    )
    send_results, receive_results = trio.open_memory_channel[HandlerResult](len(results))
    async with send_results:
        for result in results:
            send_results.send_nowait(result)
    with trio.fail_after(30):
        await acker.run(receive_results)
    return acker, recorder


async def test_waiting_results_are_written_in_one_statement(queue_pool: ConnectionPool) -> None:
    await send(queue_pool, 5)
    claims = await claim(queue_pool, 5)
    in_flight = InFlight(concurrency=8, prefetch=0)
    in_flight.hold(claims)
    acker, recorder = await ack_all(queue_pool, in_flight, [completed(c) for c in claims])
    assert (acker.ack_batches, acker.completed, acker.discarded) == (1, 5, 0)
    assert {c.command_id for c in recorder.changes} == {c.command.command_id for c in claims}
    assert set(await statuses(queue_pool)) == {c.command.command_id for c in claims}
    assert {s for s, _ in (await statuses(queue_pool)).values()} == {"COMPLETED"}
    assert in_flight.held() == []


async def test_a_result_the_database_refuses_is_split_off_and_dropped_alone(
    queue_pool: ConnectionPool, caplog: pytest.LogCaptureFixture
) -> None:
    await send(queue_pool, 3)
    claims = await claim(queue_pool, 3)
    in_flight = InFlight(concurrency=8, prefetch=0)
    in_flight.hold(claims)
    refused = attrs.evolve(completed(claims[1]), error_details_json="{not json")
    results = [completed(claims[0]), refused, completed(claims[2])]
    acker, recorder = await ack_all(queue_pool, in_flight, results)
    assert acker.completed == 2
    assert {c.command_id for c in recorder.changes} == {
        claims[0].command.command_id,
        claims[2].command.command_id,
    }
    stored = await statuses(queue_pool)
    assert stored[claims[1].command.command_id] == ("IN_PROGRESS", 1)  # left to its lease
    assert recorder.errors and recorder.errors[-1].startswith("ack refused:")
    (record,) = [r for r in caplog.records if "refused by the database" in r.getMessage()]
    assert str(claims[1].command.command_id) in record.getMessage()


async def test_a_result_whose_lease_was_lost_is_discarded(
    queue_pool: ConnectionPool, eventually: Callable[..., Awaitable[list[ClaimedCommand]]]
) -> None:
    await send(queue_pool, 1)
    (first,) = await claim(queue_pool, 1, visibility_timeout=0.001)
    again = await eventually(lambda: claim(queue_pool, 1))  # the lease expired: claimed again
    in_flight = InFlight(concurrency=8, prefetch=0)
    in_flight.hold(again)
    acker, recorder = await ack_all(queue_pool, in_flight, [completed(first)])
    assert (acker.completed, acker.discarded, recorder.changes) == (0, 1, [])
    assert in_flight.held() == again  # the newer claim is still held
    assert (await statuses(queue_pool))[first.command.command_id] == ("IN_PROGRESS", 2)
