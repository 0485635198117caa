"""Whether the database is reachable: one record per pool, shared by all that use it."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from triobus.persistence.errors import DatabaseError, DatabaseUnavailableError

if TYPE_CHECKING:
    from triobus.persistence.driver import DriverConnection

logger = logging.getLogger(__name__)


class Outage:
    """Whether the database is reachable, shared by everything that uses one pool, so an
    outage is logged once when it starts and once when it ends, however many tasks meet it.

    Only a connection opened after an outage began proves it over: a statement that
    still succeeds on an older one (the server is shutting down but has not reached
    that backend yet) does not; and a loss met late on a connection from before the
    last recovery (`DatabaseUnavailableError.stale`) belongs to the outage already logged.
    Times are `time.monotonic()`, like `DriverConnection.opened_at`. `on_lost(error)`
    and `on_recovered(seconds)`, when set, are told too (the runtime's events).
    """

    def __init__(self) -> None:
        self.since: float | None = None  # when the current outage began
        self.ended_at = -math.inf  # when the last outage ended
        self.count = 0
        self.on_lost: Callable[[str], object] | None = None
        self.on_recovered: Callable[[float], object] | None = None

    def report(self, error: DatabaseError, doing: str) -> None:
        """Log `error`, met while `doing`: an unreachable database once per outage,
        any other error every time."""
        if not isinstance(error, DatabaseUnavailableError):
            logger.warning("%s: %s", doing, error)
        elif self.since is None and not error.stale:
            self.since = time.monotonic()
            self.count += 1
            logger.warning(
                "database unavailable (%s: %s); retrying with back-off and jitter", doing, error
            )
            if self.on_lost is not None:
                self.on_lost(f"{doing}: {error}")
        else:
            logger.debug("%s: %s", doing, error)

    def lost(self, error: DatabaseUnavailableError, conn: DriverConnection) -> None:
        """`error` was met on `conn`: mark it stale if `conn` predates the last recovery."""
        error.stale = conn.opened_at < self.ended_at

    def predates(self, conn: DriverConnection) -> bool:
        """Whether `conn` was opened before the current outage began (likely lost too)."""
        return self.since is not None and conn.opened_at < self.since

    def recovered(self, connected_at: float) -> None:
        """A statement succeeded on a connection opened at `connected_at`."""
        if self.since is not None and connected_at >= self.since:
            self.ended_at = time.monotonic()
            seconds = self.ended_at - self.since
            logger.warning("database reachable again after %.1f s", seconds)
            self.since = None
            if self.on_recovered is not None:
                self.on_recovered(seconds)
