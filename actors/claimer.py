"""The claimer: one worker's role that claims commands for its idle handlers.

It claims one command per idle handler, plus up to `prefetch` commands to wait for a
handler, in one statement (`FOR UPDATE SKIP LOCKED`), within the room `InFlight` leaves.
When only a few handlers are idle it waits up to `CLAIM_LINGER` for half of them, so
claims stay large. When there is nothing to claim it waits for a NOTIFY hint (through
the runtime's notifier), for room, or for `poll_interval`; an idle worker issues no other
queries. Stopping (`stop()`) ends it between claims: a claim that has committed is always
recorded, so that it is released, never left to its lease.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from triobus.actors.events import CommandClaimed, Events, LeaseExpired
from triobus.actors.in_flight import InFlight
from triobus.actors.notifier import Notifier
from triobus.persistence import tracing
from triobus.persistence.errors import DatabaseError, DatabaseUnavailableError
from triobus.persistence.notifications import Channel
from triobus.persistence.pool import ConnectionPool
from triobus.persistence.queue import ClaimedCommand, claim_commands

logger = logging.getLogger(__name__)

CLAIM_TIMEOUT = 10.0
CLAIM_LINGER = 0.005


class Claimer:
    """Claims the commands of one domain into the handlers' work channel (module docstring).

    `claim_statements` and `claimed` count the claims made and the commands they took.
    """

    def __init__(
        self,
        *,
        domain: str,
        pool: ConnectionPool,
        notifier: Notifier,
        in_flight: InFlight,
        visibility_timeout: float,
        default_max_attempts: int,
        poll_interval: float,
        claim_batch: int,
        note_error: Callable[[str], None],
        events: Events | None = None,
    ) -> None:
        self.domain = domain
        self._events = Events() if events is None else events
        self._pool = pool
        self._notifier = notifier
        self._in_flight = in_flight
        self._visibility_timeout = visibility_timeout
        self._default_max_attempts = default_max_attempts
        self._poll_interval = poll_interval
        self._claim_batch = claim_batch
        self._note_error = note_error
        self._scope = trio.CancelScope()
        self.claim_statements = 0
        self.claimed = 0

    def stop(self) -> None:
        """Claim no more; the work channel closes once a claim under way is recorded."""
        self._scope.cancel()

    async def run(
        self,
        work_send: trio.MemorySendChannel[ClaimedCommand],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        in_flight = self._in_flight
        async with work_send:
            with self._scope, self._notifier.subscribe(Channel.COMMAND, self.domain) as hints:
                task_status.started()
                while True:
                    room = in_flight.room()
                    if 0 < room < self._claim_batch and len(in_flight):
                        await self._linger_for_room()
                        room = in_flight.room()
                    claimed = await self._claim(room) if room > 0 else []
                    for claim in claimed:
                        await work_send.send(claim)
                    if len(claimed) < room or room == 0:
                        await self._wait_for_work(hints)

    async def _linger_for_room(self) -> None:
        """Wait briefly for half the handlers to be idle: fewer, larger claims."""
        with trio.move_on_after(CLAIM_LINGER):
            while self._in_flight.room() < self._claim_batch:
                await self._in_flight.changed()

    async def _claim(self, limit: int) -> list[ClaimedCommand]:
        """Claim up to `limit` commands and record them as in flight.

        Shielded: a claim that commits is recorded even if this task is cancelled
        meanwhile, so that stopping releases it (cancelled mid-statement, it would hold its
        commands until their leases expire and count an attempt that never ran). Bounded
        by `CLAIM_TIMEOUT`: only a claim whose answer takes longer is left to its lease.
        """
        started_ns = tracing.now_ns()
        try:
            with trio.CancelScope(shield=True), trio.fail_after(CLAIM_TIMEOUT):
                async with self._pool.connection() as conn:
                    claimed = await claim_commands(
                        conn,
                        self.domain,
                        limit=limit,
                        visibility_timeout=self._visibility_timeout,
                        default_max_attempts=self._default_max_attempts,
                    )
        except DatabaseError as ex:
            self._failed(ex)
            return []
        except trio.TooSlowError:  # an unreachable database, as far as this worker can tell
            self._failed(DatabaseUnavailableError(f"no answer within {CLAIM_TIMEOUT:.0f} s"))
            return []
        self.claim_statements += 1
        self.claimed += len(claimed)
        tracing.claimed(self.domain, started_ns, len(claimed))
        self._in_flight.hold(claimed)
        for claim in claimed:
            logger.debug(
                "claimed %s/%s attempt %d", self.domain, claim.command.command_id, claim.attempt
            )
        if self._events.active:
            self._emit(claimed)
        return claimed

    def _emit(self, claimed: list[ClaimedCommand]) -> None:
        emit = self._events.emit
        for claim in claimed:
            command = claim.command
            if claim.lease_expired:
                emit(
                    LeaseExpired(
                        domain=command.domain,
                        command_type=command.command_type,
                        command_id=command.command_id,
                        attempt=claim.attempt,
                    )
                )
            emit(
                CommandClaimed(
                    domain=command.domain,
                    command_type=command.command_type,
                    command_id=command.command_id,
                    attempt=claim.attempt,
                    waited=claim.waited,
                )
            )

    def _failed(self, error: DatabaseError) -> None:
        self._note_error(f"claim failed: {error}")
        self._pool.outage.report(error, f"worker {self.domain!r} could not claim")

    async def _wait_for_work(self, hints: trio.MemoryReceiveChannel[None]) -> None:
        """Wait for a NOTIFY hint, room in flight, or the poll interval."""
        with trio.move_on_after(self._poll_interval):
            async with trio.open_nursery() as nursery:

                async def first_of(wait: Callable[[], Awaitable[object]]) -> None:
                    await wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(first_of, hints.receive)
                nursery.start_soon(first_of, self._in_flight.changed)
