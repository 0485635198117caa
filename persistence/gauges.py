"""SQL for the database gauges: how many commands wait per domain and status, and how
long the oldest runnable one has waited.

One statement refreshes the snapshot, at most one process at a time (a transaction-level
advisory lock, tried, not waited for) and at most once per `max_age` seconds across all
of them; each process then reads the snapshot. The counts read the two partial indexes of
open commands (claimable; in the troubleshooting queue), never the finished ones.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from triobus.persistence.connection import Connection
from triobus.persistence.literals import literal
from triobus.persistence.records import CommandStatus

# pg_try_advisory_xact_lock key of the gauges' refresh: "triobusG", fixed forever.
GAUGES_LOCK_KEY = 0x74726962_75734750

_PENDING = literal(CommandStatus.PENDING)
_IN_PROGRESS = literal(CommandStatus.IN_PROGRESS)
_IN_TSQ = literal(CommandStatus.IN_TROUBLESHOOTING_QUEUE)

REFRESH_GAUGES = f"""
WITH lock AS (
    SELECT pg_try_advisory_xact_lock(%(key)s) AS got
), due AS (
    SELECT 1 FROM lock WHERE got AND NOT EXISTS (
        SELECT 1 FROM triobus.gauge_snapshot
        WHERE computed_at > now() - make_interval(secs => %(max_age)s))
), counted AS (
    SELECT domain, status, count(*) AS commands,
           extract(epoch FROM now() - min(visible_at)
               FILTER (WHERE status = {_PENDING} AND visible_at <= now()))::float8
               AS oldest_runnable_seconds
    FROM triobus.command
    WHERE status IN ({_PENDING}, {_IN_PROGRESS}) AND EXISTS (SELECT 1 FROM due)
    GROUP BY domain, status
    UNION ALL
    SELECT domain, status, count(*), NULL
    FROM triobus.command
    WHERE status = {_IN_TSQ} AND EXISTS (SELECT 1 FROM due)
    GROUP BY domain, status
)
INSERT INTO triobus.gauge_snapshot AS g (only_row, computed_at, gauges)
SELECT true, now(), coalesce(
    (SELECT jsonb_agg(jsonb_build_object('domain', domain, 'status', status,
         'commands', commands, 'oldest_runnable_seconds', oldest_runnable_seconds)
         ORDER BY domain, status) FROM counted),
    '[]'::jsonb)
FROM due
ON CONFLICT (only_row) DO UPDATE SET computed_at = EXCLUDED.computed_at, gauges = EXCLUDED.gauges
RETURNING computed_at
"""

SELECT_GAUGES = "SELECT computed_at, gauges FROM triobus.gauge_snapshot"


@attrs.frozen
class DomainGauge:
    """The commands of one domain in one open status; for PENDING, how long the oldest
    runnable one has waited (None: none is runnable now)."""

    domain: str
    status: CommandStatus
    commands: int
    oldest_runnable_seconds: float | None


@attrs.frozen
class GaugeSnapshot:
    computed_at: datetime
    gauges: tuple[DomainGauge, ...]


async def refresh_gauges(conn: Connection, *, max_age: float) -> bool:
    """Recompute the snapshot if it is older than `max_age` seconds and no other process
    is at it; whether this call did."""
    row = await conn.fetch_one(REFRESH_GAUGES, {"key": GAUGES_LOCK_KEY, "max_age": max_age})
    return row is not None


async def select_gauges(conn: Connection) -> GaugeSnapshot | None:
    row = await conn.fetch_one(SELECT_GAUGES)
    if row is None:
        return None
    gauges: list[dict[str, Any]] = row["gauges"]
    return GaugeSnapshot(
        computed_at=row["computed_at"],
        gauges=tuple(
            DomainGauge(
                domain=g["domain"],
                status=CommandStatus(g["status"]),
                commands=int(g["commands"]),
                oldest_runnable_seconds=g["oldest_runnable_seconds"],
            )
            for g in gauges
        ),
    )
