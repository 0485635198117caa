"""The handler pool: one worker's role that runs its handlers, `concurrency` at a time.

Each of its tasks takes one claimed command at a time from the work channel, runs the
registered handler (through trio-asyncio for `asyncio=True` handlers, inside the
attempt's transaction for `transactional=True` ones: `transactional.py`) under
`handler_timeout`, and sends what came of it (`outcomes.outcome_of`) to the acker. A
handler's failure, of whatever kind, is its command's failure; only KeyboardInterrupt and
SystemExit propagate (the process is asked to stop), as does a cancellation of the pool.

Stopping (`stop(grace_period)`): no waiting command is started (it is released with the
rest), running handlers may finish within the grace period, then they are cancelled.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

import trio
import trio_asyncio

from triobus.actors.handler_context import HandlerContext
from triobus.actors.handlers import Handler, HandlerRegistry
from triobus.actors.in_flight import InFlight
from triobus.actors.messages import AckMessage
from triobus.actors.outcomes import (
    HandlerRun,
    NoHandler,
    Raised,
    RetryPolicy,
    Returned,
    TimedOut,
    outcome_of,
)
from triobus.actors.transaction import Transaction
from triobus.actors.transactional import TransactionSlots
from triobus.persistence import tracing
from triobus.persistence.errors import InvalidOperationError
from triobus.persistence.json_values import JsonDefault
from triobus.persistence.queue import ClaimedCommand, HandlerResult

if TYPE_CHECKING:
    from triobus.actors.bus import CommandBus


class HandlerPool:
    """Runs the handlers of one domain (see the module docstring)."""

    def __init__(
        self,
        *,
        domain: str,
        registry: HandlerRegistry,
        in_flight: InFlight,
        concurrency: int,
        retry_policy: RetryPolicy,
        handler_timeout: float | None,
        max_result_bytes: int,
        json_default: JsonDefault | None = None,
        bus: CommandBus | None = None,
        transactions: TransactionSlots | None = None,
    ) -> None:
        self.domain = domain
        self._bus = bus
        self._transactions = transactions
        self._registry = registry
        self._in_flight = in_flight
        self._concurrency = concurrency
        self._retry_policy = retry_policy
        self._handler_timeout = handler_timeout
        self._max_result_bytes = max_result_bytes
        self._json_default = json_default
        self._scope = trio.CancelScope()
        self._stopping = False

    def stop(self, grace_period: float) -> None:
        """Start no waiting command; cancel running handlers after `grace_period`."""
        self._stopping = True
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + grace_period)

    async def run(
        self,
        work_receive: trio.MemoryReceiveChannel[ClaimedCommand],
        ack_send: trio.MemorySendChannel[AckMessage],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with work_receive, ack_send:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    for _ in range(self._concurrency):
                        nursery.start_soon(self._task, work_receive.clone(), ack_send.clone())
                    task_status.started()

    async def _task(
        self,
        work_receive: trio.MemoryReceiveChannel[ClaimedCommand],
        ack_send: trio.MemorySendChannel[AckMessage],
    ) -> None:
        async with work_receive, ack_send:
            async for claim in work_receive:
                if self._stopping:
                    continue  # a waiting command is not started: it is released
                self._in_flight.started()
                message = await self._attempt(claim)
                self._in_flight.finished()
                await ack_send.send(message)

    async def _attempt(self, claim: ClaimedCommand) -> AckMessage:
        started = trio.current_time()

        def result_of(run: HandlerRun) -> HandlerResult:
            return outcome_of(
                claim,
                run,
                self._retry_policy,
                max_result_bytes=self._max_result_bytes,
                json_default=self._json_default,
                duration=trio.current_time() - started,
            )

        handler = self._registry.get(self.domain, claim.command.command_type)
        if handler is None:
            return result_of(NoHandler())
        if not handler.transactional:
            return result_of(await self._run(handler, claim, None))
        if self._transactions is None:
            error = InvalidOperationError("this handler pool runs no transactional handler")
            return result_of(Raised(error))
        return await self._transactions.run(
            claim, lambda transaction: self._run(handler, claim, transaction), result_of
        )

    async def _run(
        self, handler: Handler, claim: ClaimedCommand, transaction: Transaction | None
    ) -> HandlerRun:
        command = claim.command
        context = HandlerContext(
            attempt=claim.attempt,
            max_attempts=self._retry_policy.attempts_for(claim),
            bus=self._bus,
            conn=transaction,
        )
        deadline = (
            nullcontext()
            if self._handler_timeout is None
            else trio.move_on_after(self._handler_timeout)
        )
        with tracing.process_span(
            command.domain,
            command.command_type,
            command.command_id,
            claim.attempt,
            command.trace_context,
        ) as failed:
            try:
                with deadline as scope:
                    if handler.runs_on_asyncio:
                        value = await trio_asyncio.aio_as_trio(handler.fn)(command, context)
                    else:
                        value = await handler.fn(command, context)
            except (KeyboardInterrupt, SystemExit):
                raise  # the process is asked to stop (Ctrl-C lands in running code): it does
            except BaseException as ex:  # however a handler fails, it is its command's failure
                await trio.lowlevel.checkpoint_if_cancelled()  # unless this worker is stopping
                failed(ex)
                return Raised(ex)
            if scope is not None and scope.cancelled_caught:
                failed(TimeoutError(f"the handler ran longer than {self._handler_timeout} s"))
                return TimedOut()
            return Returned(value)
