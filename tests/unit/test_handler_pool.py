"""The handler pool: N handlers at a time, each run turned into a result for the acker,
and a stop that starts nothing waiting and cancels what overruns the grace period."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import attrs
import pytest
import trio
import trio.testing

from triobus.actors import Command, HandlerContext, HandlerRegistry, RetryPolicy
from triobus.actors.handler_pool import HandlerPool
from triobus.actors.in_flight import InFlight
from triobus.actors.messages import AckMessage
from triobus.persistence.queue import ClaimedCommand, HandlerResult, Outcome


def claim(command_type: str = "Work") -> ClaimedCommand:
    command = Command(
        domain="d",
        command_type=command_type,
        command_id=uuid.uuid4(),
        data={},
        correlation_id=uuid.uuid4(),
        reply_to=None,
        batch_id=None,
    )
    return ClaimedCommand(command=command, attempt=1, max_attempts=None, lease_token=uuid.uuid4())


@attrs.define
class Handlers:
    """A "Work" handler that waits for `release`, counting how many run at once."""

    release: trio.Event = attrs.field(factory=trio.Event)
    running: int = 0
    most: int = 0
    started: list[uuid.UUID] = attrs.field(factory=list)

    async def work(self, command: Command, ctx: HandlerContext) -> dict[str, int]:
        self.started.append(command.command_id)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return {"attempt": ctx.attempt}

    async def slow(self, command: Command, ctx: HandlerContext) -> None:
        await trio.sleep_forever()


@attrs.define
class Running:
    pool: HandlerPool
    in_flight: InFlight
    handlers: Handlers
    work: trio.MemorySendChannel[ClaimedCommand]
    messages: trio.MemoryReceiveChannel[AckMessage]
    done: trio.Event

    async def result(self) -> HandlerResult:
        """The next result (this pool runs no transactional handler: none is written)."""
        message = await self.messages.receive()
        assert isinstance(message, HandlerResult)
        return message


@pytest.fixture
async def running(nursery: trio.Nursery, request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    """A pool of 2 handlers with room for 10 waiting commands, and a handler timeout of
    a minute (or `request.param` seconds, for the test that times one out)."""
    handlers = Handlers()
    registry = HandlerRegistry()
    registry.register("d", "Work", handlers.work)
    registry.register("d", "Slow", handlers.slow)
    in_flight = InFlight(concurrency=2, prefetch=10)
    pool = HandlerPool(
        domain="d",
        registry=registry,
        in_flight=in_flight,
        concurrency=2,
        retry_policy=RetryPolicy(backoff=(1.0,)),
        handler_timeout=getattr(request, "param", 60.0),
        max_result_bytes=1000,
    )
    work_send, work_receive = trio.open_memory_channel[ClaimedCommand](10)
    result_send, result_receive = trio.open_memory_channel[AckMessage](10)
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await pool.run(work_receive, result_send, task_status=task_status)
        done.set()

    await nursery.start(run)
    yield Running(pool, in_flight, handlers, work_send, result_receive, done)
    nursery.cancel_scope.cancel()


def give(running: Running, *claims: ClaimedCommand) -> None:
    running.in_flight.hold(claims)
    for claimed in claims:
        running.work.send_nowait(claimed)


async def test_at_most_concurrency_handlers_run_and_each_run_becomes_a_result(
    running: Running,
) -> None:
    claims = [claim() for _ in range(5)]
    give(running, *claims)
    await trio.testing.wait_all_tasks_blocked()
    assert (running.handlers.running, running.in_flight.waiting) == (2, 3)
    running.handlers.release.set()
    with trio.fail_after(10):
        results = [await running.result() for _ in claims]
    assert running.handlers.most == 2
    assert {r.command_id for r in results} == {c.command.command_id for c in claims}
    assert {(r.outcome, r.result_json) for r in results} == {(Outcome.COMPLETED, '{"attempt":1}')}
    assert (running.in_flight.waiting, running.in_flight.running) == (0, 0)


@pytest.mark.parametrize("running", [0.2], indirect=True)
async def test_a_missing_handler_and_a_timeout_become_their_outcomes(running: Running) -> None:
    give(running, claim("Unknown"), claim("Slow"))
    with trio.fail_after(10):
        results = {(await running.result()).error_code for _ in range(2)}
    assert results == {"NO_HANDLER", "HANDLER_TIMEOUT"}


async def test_stopping_lets_running_handlers_finish_and_starts_no_waiting_command(
    running: Running,
) -> None:
    claims = [claim(), claim(), claim()]
    give(running, *claims)
    await trio.testing.wait_all_tasks_blocked()
    running.pool.stop(grace_period=30.0)
    running.work.close()  # the claimer's end: what waits is still handed out
    running.handlers.release.set()  # the two running ones finish within the grace period
    with trio.fail_after(10):
        await running.done.wait()
        messages = [message async for message in running.messages]
    results = [m for m in messages if isinstance(m, HandlerResult)]
    assert len(results) == len(messages)
    assert set(running.handlers.started) == {c.command.command_id for c in claims[:2]}
    assert {r.command_id for r in results} == set(running.handlers.started)


async def test_a_handler_still_running_after_the_grace_period_is_cancelled_without_a_result(
    running: Running,
) -> None:
    give(running, claim("Slow"))
    await trio.testing.wait_all_tasks_blocked()
    running.pool.stop(grace_period=0.2)
    running.work.close()
    with trio.fail_after(10):
        await running.done.wait()
    with pytest.raises(trio.EndOfChannel):
        await running.messages.receive()  # cancelled by the stop: its command is released
