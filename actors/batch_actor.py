"""The batch actor: supervises one watched batch until it completes, then awaits its
completion callback exactly once.

Its inbox (a bounded memory channel) receives `BatchProgress` counts from this
process's workers and operator actions, and `BatchFinished` hints from them, from the
notifier (the batch was completed by another process) and from the supervisor's
reconciliation poll. It holds the batch's counts: read from the database when it starts,
advanced by the progress messages. A hint makes it read the batch; once the database says the batch
is complete, it awaits `on_complete(BatchMetadata)` in its own nursery, under a
deadline. An exception or timeout there is logged with the batch id and goes no further:
workers, ackers and the runtime never see it. The actor then ends: one invocation, ever.
A batch that is not stored (it never completes) ends the actor with `BatchNotFoundError`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from uuid import UUID

import attrs
import trio

from triobus.actors.events import BatchCallbackFailed, Events
from triobus.actors.messages import BatchFinished, BatchMessage, BatchProgress
from triobus.actors.notifier import Notifier
from triobus.persistence.backoff import backoff_delays
from triobus.persistence.batches import select_batch
from triobus.persistence.errors import BatchNotFoundError, DatabaseError
from triobus.persistence.notifications import Channel, batch_payload
from triobus.persistence.pool import ConnectionPool
from triobus.persistence.records import BatchCounts, BatchMetadata

logger = logging.getLogger(__name__)

BatchCallback = Callable[[BatchMetadata], Awaitable[object]]
INBOX_SIZE = 256


@attrs.frozen(kw_only=True)
class BatchWatchStatistics:
    """What a batch actor holds: the counts it knows (None before its first read), how many
    messages it handled and how many times it read the batch."""

    domain: str
    batch_id: UUID
    counts: BatchCounts | None
    messages: int
    reads: int
    has_callback: bool


class BatchActor:
    """One watched batch (see the module docstring). `on_complete` may change until it fires."""

    def __init__(
        self,
        domain: str,
        batch_id: UUID,
        *,
        pool: ConnectionPool,
        notifier: Notifier,
        on_complete: BatchCallback | None,
        callback_timeout: float,
        events: Events | None = None,
    ) -> None:
        self._events = Events() if events is None else events
        self.domain = domain
        self.batch_id = batch_id
        self.on_complete = on_complete
        self.callback_timeout = callback_timeout
        self.batch: BatchMetadata | None = None  # as this actor knows it
        self.final: BatchMetadata | None = None
        self.done = trio.Event()
        self.messages = 0
        self.reads = 0
        self._pool = pool
        self._notifier = notifier
        self._inbox_send, self._inbox = trio.open_memory_channel[BatchMessage](INBOX_SIZE)

    def statistics(self) -> BatchWatchStatistics:
        return BatchWatchStatistics(
            domain=self.domain,
            batch_id=self.batch_id,
            counts=None if self.batch is None else self.batch.counts,
            messages=self.messages,
            reads=self.reads,
            has_callback=self.on_complete is not None,
        )

    def deliver(self, message: BatchMessage) -> None:
        """Post a message without waiting. If the inbox is full the message is dropped:
        counts are re-read at completion and the reconciliation poll repeats hints."""
        try:
            self._inbox_send.send_nowait(message)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            logger.debug("batch %s inbox full or closed: dropped %r", self.batch_id, message)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        hint = BatchFinished(self.domain, self.batch_id)
        payload = batch_payload(self.domain, self.batch_id)
        with self._notifier.subscribe(Channel.BATCH, payload) as hints:
            task_status.started()
            async with trio.open_nursery() as nursery:

                async def forward_hints() -> None:
                    async for _ in hints:
                        self.deliver(hint)

                nursery.start_soon(forward_hints)
                final = await self._wait_until_final()
                nursery.cancel_scope.cancel()
        self.final = final
        self.done.set()
        await self._invoke_callback(final)

    async def _wait_until_final(self) -> BatchMetadata:
        # Subscribed first, read second: a completion in between is seen by the read.
        self.batch = await self._read()
        while not self.batch.is_final:
            message = await self._inbox.receive()
            self.messages += 1
            if isinstance(message, BatchProgress):
                self.batch = _advanced(self.batch, message)
            else:
                self.batch = await self._read()
        return self.batch

    async def _read(self) -> BatchMetadata:
        """The batch as stored, retrying while the database is unreachable."""
        delays = backoff_delays()
        while True:
            try:
                async with self._pool.connection() as conn:
                    batch = await select_batch(conn, self.domain, self.batch_id)
            except DatabaseError as ex:
                self._pool.outage.report(ex, f"batch {self.batch_id}: could not read its state")
                await trio.sleep(next(delays))
                continue
            self.reads += 1
            if batch is None:  # watch_batch checks existence; a deleted batch never completes
                raise BatchNotFoundError(self.domain, self.batch_id)
            return batch

    async def _invoke_callback(self, final: BatchMetadata) -> None:
        callback = self.on_complete
        if callback is None:
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._call_logged, callback, final)

    async def _call_logged(self, callback: BatchCallback, final: BatchMetadata) -> None:
        """The one deliberate swallow: a failing callback is logged, never propagated."""
        with trio.move_on_after(self.callback_timeout) as deadline:
            try:
                await callback(final)
            except Exception as ex:
                logger.exception(
                    "on_complete callback of batch %s (domain %r) raised",
                    self.batch_id,
                    self.domain,
                )
                self._failed(f"{type(ex).__name__}: {ex}")
                return
        if deadline.cancelled_caught:
            logger.error(
                "on_complete callback of batch %s (domain %r) timed out after %.1f s"
                " and was cancelled",
                self.batch_id,
                self.domain,
                self.callback_timeout,
            )
            self._failed(f"timed out after {self.callback_timeout:g} s")

    def _failed(self, error: str) -> None:
        if self._events.active:
            self._events.emit(
                BatchCallbackFailed(domain=self.domain, batch_id=self.batch_id, error=error)
            )


def _advanced(batch: BatchMetadata, progress: BatchProgress) -> BatchMetadata:
    """`batch` with `progress` applied: the terminal counts never go back; the
    troubleshooting count is the message's, kept within what the terminal counts leave."""
    counts = progress.counts
    completed = max(batch.completed_count, counts.completed)
    failed = max(batch.failed_count, counts.failed)
    canceled = max(batch.canceled_count, counts.canceled)
    open_left = batch.total_count - completed - failed - canceled
    return attrs.evolve(
        batch,
        completed_count=completed,
        failed_count=failed,
        canceled_count=canceled,
        in_troubleshooting_count=min(counts.in_troubleshooting, open_left),
    )
