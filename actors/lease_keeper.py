"""The lease keeper: one worker's role that keeps the leases of the commands it holds.

While the worker runs it extends the lease of every held command each
`heartbeat_interval` (a long handler keeps its command); when the worker stops it
releases every held command without a result: visible again at once, the attempt not
counted. Both skip rows another statement holds (SKIP LOCKED), so they never wait on an
ack or a claim. A release that cannot reach the database within `RELEASE_TIMEOUT` is
left to the leases, which expire.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from triobus.actors.in_flight import InFlight
from triobus.persistence.errors import DatabaseError
from triobus.persistence.pool import ConnectionPool
from triobus.persistence.queue import extend_leases_if_claimed, release_if_claimed

logger = logging.getLogger(__name__)

RELEASE_TIMEOUT = 10.0


class LeaseKeeper:
    """Extends and finally releases one worker's leases (see the module docstring)."""

    def __init__(
        self,
        *,
        domain: str,
        pool: ConnectionPool,
        in_flight: InFlight,
        visibility_timeout: float,
        heartbeat_interval: float,
        note_error: Callable[[str], None],
    ) -> None:
        self.domain = domain
        self._pool = pool
        self._in_flight = in_flight
        self._visibility_timeout = visibility_timeout
        self._heartbeat_interval = heartbeat_interval
        self._note_error = note_error

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Extend the held leases every heartbeat interval, until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self._heartbeat_interval)
            claims = self._in_flight.held()
            if not claims:
                continue
            try:
                async with self._pool.connection() as conn:
                    await extend_leases_if_claimed(
                        conn, self.domain, claims, self._visibility_timeout
                    )
            except DatabaseError as ex:
                self._note_error(f"heartbeat failed: {ex}")
                self._pool.outage.report(ex, f"worker {self.domain!r} could not extend leases")

    async def release_all(self) -> None:
        """Release every held command; afterwards none is held."""
        claims = self._in_flight.held()
        if not claims:
            return
        try:
            with trio.fail_after(RELEASE_TIMEOUT):
                async with self._pool.connection() as conn:
                    released = await release_if_claimed(conn, self.domain, claims)
            logger.info("worker %r released %d unacknowledged commands", self.domain, released)
        except (DatabaseError, trio.TooSlowError) as ex:
            logger.warning(
                "worker %r could not release %d commands (their leases will expire): %s",
                self.domain,
                len(claims),
                ex,
            )
        self._in_flight.forget_all()
