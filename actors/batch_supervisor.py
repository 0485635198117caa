"""The batch supervisor: runs one `BatchActor` per watched batch, in its own nursery.

It routes committed command changes (from this process's workers and operator actions)
to the actors of watched batches, and runs the reconciliation poll: every
`reconcile_interval` seconds, only while some batch is watched, one query finds watched
batches that are complete, in case their NOTIFY was lost (for instance while the
notifier was reconnecting). Registrations live in memory: a restart loses them, and the
batches still complete; `watch` again after a restart (it fires at once for a batch that
is already complete).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from uuid import UUID

import trio

from triobus.actors.batch_actor import BatchActor, BatchCallback, BatchWatchStatistics
from triobus.actors.events import Events
from triobus.actors.messages import BatchFinished, BatchProgress
from triobus.actors.notifier import Notifier
from triobus.persistence.batches import select_final_batches
from triobus.persistence.errors import BatchNotFoundError, DatabaseError
from triobus.persistence.pool import ConnectionPool
from triobus.persistence.records import BatchCounts, BatchMetadata, CommandChange

logger = logging.getLogger(__name__)

BatchKey = tuple[str, UUID]


class BatchSupervisor:
    """Owns the batch actors (see the module docstring)."""

    def __init__(
        self,
        pool: ConnectionPool,
        notifier: Notifier,
        *,
        callback_timeout: float,
        reconcile_interval: float,
        events: Events | None = None,
    ) -> None:
        self._events = events
        self._pool = pool
        self._notifier = notifier
        self.callback_timeout = callback_timeout
        self.reconcile_interval = reconcile_interval
        self._actors: dict[BatchKey, BatchActor] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await trio.sleep(self.reconcile_interval)
                await self.reconcile_once()

    async def watch(
        self, domain: str, batch_id: UUID, on_complete: BatchCallback | None
    ) -> BatchActor:
        """The batch's actor, started (listening for its completion) if it was not yet;
        `on_complete` replaces any earlier callback (None keeps it). Not cancellable:
        starting an actor does no I/O, and a caller that has committed a batch must not
        lose its callback to a cancellation."""
        key = (domain, batch_id)
        actor = self._actors.get(key)
        if actor is None:
            assert self._nursery is not None, "the batch supervisor is not running"
            actor = BatchActor(
                domain,
                batch_id,
                pool=self._pool,
                notifier=self._notifier,
                on_complete=on_complete,
                callback_timeout=self.callback_timeout,
                events=self._events,
            )
            self._actors[key] = actor
            try:
                with trio.CancelScope(shield=True):
                    await self._nursery.start(self._supervise, actor)
            except BaseException:  # not started (the runtime is closing): nothing to wait for
                del self._actors[key]
                actor.done.set()
                raise
        elif on_complete is not None:
            actor.on_complete = on_complete
        return actor

    def statistics(self) -> tuple[BatchWatchStatistics, ...]:
        return tuple(actor.statistics() for actor in self._actors.values())

    def unwatch(self, domain: str, batch_id: UUID) -> None:
        """Forget the batch's callback; `wait_batch` calls still waiting keep waiting."""
        actor = self._actors.get((domain, batch_id))
        if actor is not None:
            actor.on_complete = None

    async def wait(self, domain: str, batch_id: UUID) -> BatchMetadata:
        """The batch's final metadata, once it is complete."""
        actor = await self.watch(domain, batch_id, None)
        await actor.done.wait()
        if actor.final is None:
            raise BatchNotFoundError(domain, batch_id)
        return actor.final

    def deliver_changes(self, changes: Sequence[CommandChange]) -> None:
        """Route committed changes to the actors of watched batches (the fast path)."""
        progress: dict[BatchKey, BatchCounts] = {}
        completed: set[BatchKey] = set()
        for change in changes:
            if change.batch_id is None or (change.domain, change.batch_id) not in self._actors:
                continue
            key = (change.domain, change.batch_id)
            if change.batch_counts is not None:  # the same for every change of one statement
                progress[key] = change.batch_counts
            if change.batch_completed:
                completed.add(key)
        for key, counts in progress.items():
            self._actors[key].deliver(BatchProgress(*key, counts))
        for key in completed:
            self._actors[key].deliver(BatchFinished(*key))

    async def reconcile_once(self) -> int:
        """Hint every watched batch the database says is complete; returns how many."""
        keys = list(self._actors)
        if not keys:
            return 0
        try:
            async with self._pool.connection() as conn:
                final = await select_final_batches(conn, keys)
        except DatabaseError as ex:
            self._pool.outage.report(ex, "batch reconciliation failed, will retry")
            return 0
        for key in final:
            actor = self._actors.get(key)
            if actor is not None:
                actor.deliver(BatchFinished(*key))
        return len(final)

    async def _supervise(
        self, actor: BatchActor, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await actor.run(task_status=task_status)
        except* BatchNotFoundError as found:  # from inside the actor's nursery: grouped
            logger.error("stopped watching: %s", found.exceptions[0])
        finally:
            actor.done.set()
            if self._actors.get((actor.domain, actor.batch_id)) is actor:
                del self._actors[(actor.domain, actor.batch_id)]
