"""InFlight: what a worker holds from claim to ack, and how much more it may claim."""

from __future__ import annotations

import uuid

import attrs
import trio
import trio.testing

from triobus.actors.in_flight import MIN_ACK_ROOM, InFlight
from triobus.persistence.queue import ClaimedCommand, HandlerResult, Outcome
from triobus.persistence.records import Command


def claim(command_id: uuid.UUID | None = None) -> ClaimedCommand:
    command = Command(
        domain="d",
        command_type="T",
        command_id=command_id or uuid.uuid4(),
        data={},
        correlation_id=uuid.uuid4(),
        reply_to=None,
        batch_id=None,
    )
    return ClaimedCommand(command=command, attempt=1, max_attempts=None, lease_token=uuid.uuid4())


def result_of(claimed: ClaimedCommand) -> HandlerResult:
    return HandlerResult(
        domain="d",
        command_id=claimed.command.command_id,
        lease_token=claimed.lease_token,
        outcome=Outcome.COMPLETED,
    )


def run_one(in_flight: InFlight) -> None:
    in_flight.started()
    in_flight.finished()


def test_handlers_and_prefetch_bound_what_waits_and_runs() -> None:
    in_flight = InFlight(concurrency=2, prefetch=1)
    assert in_flight.room() == 3
    in_flight.hold([claim(), claim(), claim()])
    assert (in_flight.waiting, in_flight.room()) == (3, 0)
    in_flight.started()
    assert (in_flight.waiting, in_flight.running, in_flight.room()) == (2, 1, 0)
    in_flight.finished()  # the slot frees before the acker writes the result
    assert (in_flight.running, in_flight.room(), len(in_flight)) == (0, 1, 3)


def test_results_the_acker_has_not_written_bound_further_claims() -> None:
    in_flight = InFlight(concurrency=1, prefetch=0)
    assert in_flight.bound == 1 + MIN_ACK_ROOM
    held = []
    while in_flight.room():
        held += [claim()]
        in_flight.hold(held[-1:])
        run_one(in_flight)
    assert len(in_flight) == in_flight.bound  # no handler busy, yet no room: the acker lags
    in_flight.settled([result_of(held[0])])
    assert in_flight.room() == 1


def test_a_late_result_of_an_older_claim_settles_nothing() -> None:
    in_flight = InFlight(concurrency=4, prefetch=0)
    first = claim()
    again = attrs.evolve(first, attempt=2, lease_token=uuid.uuid4())  # claimed again
    in_flight.hold([first])
    in_flight.hold([again])
    in_flight.settled([result_of(first)])
    assert in_flight.held() == [again]
    in_flight.settled([result_of(again)])
    assert in_flight.held() == []


def test_forget_all_holds_nothing() -> None:
    in_flight = InFlight(concurrency=4, prefetch=0)
    in_flight.hold([claim(), claim()])
    in_flight.forget_all()
    assert (len(in_flight), in_flight.held()) == (0, [])


async def test_changed_returns_once_room_may_have_been_made_and_coalesces() -> None:
    in_flight = InFlight(concurrency=2, prefetch=0)
    first, second = claim(), claim()
    in_flight.hold([first, second])
    waits: list[str] = []

    async def wait() -> None:
        waits.append("waiting")
        await in_flight.changed()
        waits.append("woken")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert waits == ["waiting"]  # nothing changed yet
        run_one(in_flight)
    assert waits == ["waiting", "woken"]

    run_one(in_flight)
    in_flight.settled([result_of(first), result_of(second)])  # two changes, one wake-up
    waits.clear()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert waits == ["waiting", "waiting", "woken"]
        nursery.cancel_scope.cancel()
