"""SQL for periodic commands: a schedule's row, and the step that marks its ticks done.

Exactly once per tick, across runtimes and restarts: a tick's command is sent in the
transaction whose `advance` moves the schedule's `sent_through` up to that tick, and
`advance` moves it only forward and only for the definition version the tick was
computed from. Of runtimes racing for one tick, the first commits and the others find
`sent_through` already there (the row lock orders them), so they send nothing; a crash
before the commit undoes both the step and the command. The command id is derived from
the name and the tick as well, so even a second send would be refused by the store.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import attrs

from triobus.persistence.connection import Connection, Row
from triobus.persistence.cron import CronTicks

SCHEDULE_NAMESPACE = UUID("0b0c8d6e-54f5-4c55-8f43-3f8c2a6e1d27")
SCHEDULE_KEY = "schedule"  # the key a tick's command data gets: {"name", "tick"}


def tick_command_id(name: str, tick: datetime) -> UUID:
    """The command id of a schedule's tick: the same in every runtime, for ever."""
    return uuid.uuid5(SCHEDULE_NAMESPACE, f"{name}/{tick.astimezone(UTC).isoformat()}")


@attrs.frozen(kw_only=True)
class ScheduleRecord:
    """A schedule as stored: its last declared definition, and how far its ticks are done."""

    name: str
    domain: str
    command_type: str
    cron: str
    timezone: str
    data: dict[str, Any]
    version: int
    declared_at: datetime
    sent_through: datetime
    last_tick: datetime | None

    def next_tick(self, now: datetime) -> datetime:
        """The first tick not done yet that is after `now`."""
        return CronTicks(self.cron, self.timezone).next_after(max(now, self.sent_through))

    @classmethod
    def from_row(cls, row: Row) -> ScheduleRecord:
        return cls(**{field.name: row[field.name] for field in attrs.fields(cls)})


_COLUMNS = (
    "name, domain, command_type, cron, timezone, data, version, declared_at, sent_through,"
    " last_tick"
)

# A new name starts with its ticks after now; a changed definition takes effect from the
# next tick after now (a tick of the old one not yet sent is not sent). Declaring the
# same definition again changes nothing and returns no row.
DECLARE_SCHEDULE = f"""
INSERT INTO triobus.schedule AS s (name, domain, command_type, cron, timezone, data,
    sent_through)
VALUES (%(name)s, %(domain)s, %(command_type)s, %(cron)s, %(timezone)s, %(data)s::jsonb,
    %(now)s)
ON CONFLICT (name) DO UPDATE SET
    domain = EXCLUDED.domain, command_type = EXCLUDED.command_type, cron = EXCLUDED.cron,
    timezone = EXCLUDED.timezone, data = EXCLUDED.data, version = s.version + 1,
    declared_at = now(), sent_through = greatest(s.sent_through, EXCLUDED.sent_through)
WHERE (s.domain, s.command_type, s.cron, s.timezone, s.data)
    IS DISTINCT FROM (EXCLUDED.domain, EXCLUDED.command_type, EXCLUDED.cron,
        EXCLUDED.timezone, EXCLUDED.data)
RETURNING {_COLUMNS}
"""

SELECT_SCHEDULE = f"SELECT {_COLUMNS} FROM triobus.schedule WHERE name = %s"
SELECT_SCHEDULES = f"SELECT {_COLUMNS} FROM triobus.schedule ORDER BY name"

ADVANCE = """
UPDATE triobus.schedule
SET sent_through = %(through)s,
    last_tick = CASE WHEN %(sent)s THEN %(through)s ELSE last_tick END
WHERE name = %(name)s AND version = %(version)s AND sent_through < %(through)s
RETURNING name
"""


async def declare_schedule(
    conn: Connection,
    *,
    name: str,
    domain: str,
    command_type: str,
    cron: str,
    timezone: str,
    data_json: str,
    now: datetime,
) -> ScheduleRecord:
    """Store the definition (see DECLARE_SCHEDULE); the schedule as it now stands."""
    params = {
        "name": name,
        "domain": domain,
        "command_type": command_type,
        "cron": cron,
        "timezone": timezone,
        "data": data_json,
        "now": now,
    }
    row = await conn.fetch_one(DECLARE_SCHEDULE, params)
    if row is None:  # unchanged: read it (a statement of its own sees a racing insert)
        row = await conn.fetch_one(SELECT_SCHEDULE, (name,))
    assert row is not None, "a declared schedule is never deleted"
    return ScheduleRecord.from_row(row)


async def select_schedule(conn: Connection, name: str) -> ScheduleRecord | None:
    row = await conn.fetch_one(SELECT_SCHEDULE, (name,))
    return None if row is None else ScheduleRecord.from_row(row)


async def select_schedules(conn: Connection) -> list[ScheduleRecord]:
    return [ScheduleRecord.from_row(row) for row in await conn.fetch_all(SELECT_SCHEDULES)]


async def advance(
    conn: Connection, name: str, *, version: int, through: datetime, sent: bool
) -> bool:
    """Mark every tick up to `through` done, if definition `version` is current and
    `through` is beyond what is done; whether it was. In the transaction that sends the
    tick `through` (`sent`), or alone for ticks skipped as too late."""
    row = await conn.fetch_one(
        ADVANCE, {"name": name, "version": version, "through": through, "sent": sent}
    )
    return row is not None
