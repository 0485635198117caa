"""SQL for the database gauges: how many commands wait per domain and status, how long
the oldest runnable one has waited, and how many each domain finished in the last minute.

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
from triobus.persistence.errors import DatabaseError
from triobus.persistence.literals import literal
from triobus.persistence.records import CommandStatus
from triobus.persistence.schema import INSUFFICIENT_PRIVILEGE

# pg_try_advisory_xact_lock key of the gauges' refresh: "triobusG", fixed forever.
GAUGES_LOCK_KEY = 0x74726962_75734750

_PENDING = literal(CommandStatus.PENDING)
_IN_PROGRESS = literal(CommandStatus.IN_PROGRESS)
_IN_TSQ = literal(CommandStatus.IN_TROUBLESHOOTING_QUEUE)

# The domains that have commands, one index probe each (a loose scan of command_newest):
# a CTE `domains (domain)` for a WITH RECURSIVE; `guard` may stop its first probe.
DOMAINS_CTE = """domains AS (
    (SELECT domain FROM triobus.command {guard} ORDER BY domain LIMIT 1)
    UNION ALL
    SELECT (SELECT c.domain FROM triobus.command c WHERE c.domain > d.domain
            ORDER BY c.domain LIMIT 1)
    FROM domains d WHERE d.domain IS NOT NULL
)"""

REFRESH_GAUGES = f"""
WITH RECURSIVE lock AS (
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
), {DOMAINS_CTE.format(guard="WHERE EXISTS (SELECT 1 FROM due)")}, finished AS (
    SELECT domain, count_alone + count_in_batch AS commands FROM (
        SELECT d.domain,
               (SELECT count(*) FROM triobus.command c
                WHERE c.domain = d.domain AND c.batch_id IS NULL
                  AND c.finished_at > now() - interval '1 minute') AS count_alone,
               (SELECT count(*) FROM triobus.command c
                WHERE c.domain = d.domain AND c.batch_id IS NOT NULL
                  AND c.finished_at > now() - interval '1 minute') AS count_in_batch
        FROM domains d
    ) f WHERE count_alone + count_in_batch > 0
)
INSERT INTO triobus.gauge_snapshot AS g (only_row, computed_at, gauges, finished_last_minute)
SELECT true, now(), coalesce(
    (SELECT jsonb_agg(jsonb_build_object('domain', domain, 'status', status,
         'commands', commands, 'oldest_runnable_seconds', oldest_runnable_seconds)
         ORDER BY domain, status) FROM counted),
    '[]'::jsonb),
    coalesce((SELECT jsonb_object_agg(domain, commands) FROM finished), '{{}}'::jsonb)
FROM due
ON CONFLICT (only_row) DO UPDATE SET computed_at = EXCLUDED.computed_at,
    gauges = EXCLUDED.gauges, finished_last_minute = EXCLUDED.finished_last_minute
RETURNING computed_at
"""

SELECT_GAUGES = "SELECT computed_at, gauges, finished_last_minute FROM triobus.gauge_snapshot"


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
    """The gauges as one process computed them at `computed_at`; `finished_last_minute`
    holds, per domain, the commands that finished (any terminal status) in the minute
    before (a domain that finished none is absent)."""

    computed_at: datetime
    gauges: tuple[DomainGauge, ...]
    finished_last_minute: dict[str, int] = attrs.field(factory=dict)

    def of(self, domain: str) -> dict[CommandStatus, DomainGauge]:
        """The open statuses of `domain` it has commands in."""
        return {g.status: g for g in self.gauges if g.domain == domain}


async def refresh_gauges(conn: Connection, *, max_age: float) -> bool:
    """Recompute the snapshot if it is older than `max_age` seconds and no other process
    is at it; whether this call did."""
    row = await conn.fetch_one(REFRESH_GAUGES, {"key": GAUGES_LOCK_KEY, "max_age": max_age})
    return row is not None


async def current_snapshot(conn: Connection, *, max_age: float) -> GaugeSnapshot | None:
    """The snapshot, refreshed first if it is older than `max_age` seconds and no other
    process is at it (None: never computed). A role that may not refresh it reads what
    the other processes keep."""
    try:
        async with conn.transaction():
            await refresh_gauges(conn, max_age=max_age)
    except DatabaseError as ex:
        if ex.sqlstate != INSUFFICIENT_PRIVILEGE:
            raise
    return await select_gauges(conn)


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
        finished_last_minute={d: int(n) for d, n in row["finished_last_minute"].items()},
    )
