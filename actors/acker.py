"""The acker: one worker's role that writes the results of its handlers.

It writes every result waiting in its channel (up to `MAX_ACK_BATCH`) in one statement,
guarded by each claim's lease token: a late result for a lease that was lost changes
nothing and is counted as discarded. While the database is unreachable it retries with
back-off (the leases guard against writing late); a batch the database refuses for
another reason is split, so one bad result cannot hold back the others, and a single
refused result is logged and dropped (its lease expires and it is claimed again). It
ends when the handlers have closed the channel and every result in it is written.

A transactional handler's completion is written by its own transaction
(`transactional.py`): it arrives as a `WrittenResult`, which the acker only settles,
counts and reports to the batch supervisor, like the results it writes itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from uuid import UUID

import trio

from triobus.actors.events import (
    CommandFinished,
    CommandMovedToTroubleshooting,
    CommandRetried,
    Events,
)
from triobus.actors.in_flight import InFlight
from triobus.actors.messages import AckMessage, OnChanges, WrittenResult
from triobus.persistence.backoff import backoff_delays
from triobus.persistence.errors import DatabaseError, DatabaseUnavailableError
from triobus.persistence.pool import ConnectionPool
from triobus.persistence.queue import HandlerResult, Outcome, ack_if_claimed
from triobus.persistence.records import CommandChange, CommandStatus

logger = logging.getLogger(__name__)

MAX_ACK_BATCH = 500


def _fields(result: HandlerResult) -> dict[str, str]:
    """The fields a structured log line shows (`log_format.FIELDS`)."""
    return {"domain": result.domain, "command_id": str(result.command_id)}


class Acker:
    """Writes one domain's handler results (see the module docstring).

    Counters: `ack_batches` (statements), and the written results by outcome:
    `completed`, `failed` (business rule), `retried`, `moved_to_tsq`;
    `canceled_with_batch` counts retries and TSQ moves that canceled their command
    instead (its batch was canceled); `discarded` counts late results whose lease was lost.
    """

    def __init__(
        self,
        *,
        domain: str,
        pool: ConnectionPool,
        in_flight: InFlight,
        on_acked: OnChanges | None,
        note_error: Callable[[str], None],
        events: Events | None = None,
    ) -> None:
        self.domain = domain
        self._events = Events() if events is None else events
        self._pool = pool
        self._in_flight = in_flight
        self._on_acked = on_acked
        self._note_error = note_error
        self.ack_batches = 0
        self.completed = 0
        self.failed = 0
        self.retried = 0
        self.moved_to_tsq = 0
        self.canceled_with_batch = 0
        self.discarded = 0

    async def run(
        self,
        ack_receive: trio.MemoryReceiveChannel[AckMessage],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        async with ack_receive:
            while True:
                try:
                    batch = [await ack_receive.receive()]
                except trio.EndOfChannel:
                    return
                while len(batch) < MAX_ACK_BATCH:
                    try:
                        batch.append(ack_receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await self._write(batch)

    async def _write(self, batch: list[AckMessage]) -> None:
        to_write = [m for m in batch if isinstance(m, HandlerResult)]
        written = [m for m in batch if isinstance(m, WrittenResult)]
        acked: list[CommandChange] = []
        if to_write:
            acked += await self._ack_with_retry(to_write)
            self.ack_batches += 1
        for message in written:
            acked += message.changes
        results = to_write + [m.result for m in written]
        acked_statuses = {a.command_id: a.status for a in acked}
        self._in_flight.settled(results)
        for result in results:
            status = acked_statuses.get(result.command_id)
            if status is CommandStatus.CANCELED and not result.outcome.status.is_terminal:
                self._count_canceled_with_batch(result)
            elif status is not None:
                self._count(result)
            else:
                self.discarded += 1
                logger.info(
                    "discarded a late result for %s/%s: its lease was lost",
                    result.domain,
                    result.command_id,
                    extra=_fields(result),
                )
        if self._events.active:
            self._emit(results, acked_statuses)
        if self._on_acked is not None and acked:
            self._on_acked(acked)

    def _emit(self, results: list[HandlerResult], statuses: dict[UUID, CommandStatus]) -> None:
        """The events of the results written (not of those discarded)."""
        emit = self._events.emit
        for result in results:
            status = statuses.get(result.command_id)
            if status is None:
                continue
            domain, command_type = result.domain, result.command_type
            command_id, attempt = result.command_id, result.attempt
            emit(
                CommandFinished(
                    domain=domain,
                    command_type=command_type,
                    command_id=command_id,
                    attempt=attempt,
                    outcome=result.outcome,
                    status=status,
                    duration=result.duration,
                )
            )
            if status is CommandStatus.PENDING:
                emit(
                    CommandRetried(
                        domain=domain,
                        command_type=command_type,
                        command_id=command_id,
                        attempt=attempt,
                        delay=result.retry_delay or 0.0,
                    )
                )
            elif status is CommandStatus.IN_TROUBLESHOOTING_QUEUE:
                emit(
                    CommandMovedToTroubleshooting(
                        domain=domain,
                        command_type=command_type,
                        command_id=command_id,
                        attempt=attempt,
                        error_code=result.error_code,
                    )
                )

    def _count_canceled_with_batch(self, result: HandlerResult) -> None:
        """A retry or TSQ move that canceled its command instead: its batch was canceled."""
        self.canceled_with_batch += 1
        logger.info(
            "%s/%s canceled with its batch instead of %s",
            result.domain,
            result.command_id,
            result.outcome.event,
            extra=_fields(result),
        )

    def _count(self, result: HandlerResult) -> None:
        outcome = result.outcome
        logger.debug("%s/%s -> %s", result.domain, result.command_id, outcome.event)
        if outcome is Outcome.COMPLETED:
            self.completed += 1
            return
        self._note_error(f"{result.error_code}: {result.error_message}")
        logger.warning(
            "%s/%s %s: %s: %s",
            result.domain,
            result.command_id,
            outcome.event,
            result.error_code,
            result.error_message,
            extra=_fields(result),
        )
        if outcome is Outcome.RETRY_SCHEDULED:
            self.retried += 1
        elif outcome is Outcome.BUSINESS_RULE_FAILED:
            self.failed += 1
        else:
            self.moved_to_tsq += 1

    async def _ack_with_retry(self, batch: list[HandlerResult]) -> list[CommandChange]:
        """Write results; retry while the database is unreachable, split what it refuses."""
        delays = backoff_delays()
        while True:
            try:
                async with self._pool.connection() as conn:
                    return await ack_if_claimed(conn, batch)
            except DatabaseUnavailableError as ex:
                self._note_error(f"ack failed: {ex}")
                self._pool.outage.report(ex, f"worker {self.domain!r} could not write results")
                await trio.sleep(next(delays))
            except DatabaseError as ex:
                if len(batch) == 1:
                    self._note_error(f"ack refused: {ex}")
                    logger.error(
                        "result for %s/%s refused by the database: %s",
                        batch[0].domain,
                        batch[0].command_id,
                        ex,
                    )
                    return []
                acked: list[CommandChange] = []
                for result in batch:
                    acked += await self._ack_with_retry([result])
                return acked
