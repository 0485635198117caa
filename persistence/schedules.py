"""Periodic commands in the store: a schedule's checked definition, its row, and the
step that marks its ticks done.

Exactly once per tick, across runtimes and restarts: a tick's command is sent in the
transaction whose `advance` moves the schedule's `sent_through` up to that tick, and
`advance` moves it only forward and only for the definition version the tick was
computed from. Of runtimes racing for one tick, the first commits and the others find
`sent_through` already there (the row lock orders them), so they send nothing; a crash
before the commit undoes both the step and the command. The command id is derived from
the name and the tick as well, so even a second send would be refused by the store.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any
from uuid import UUID

import attrs

from triobus.persistence.connection import Connection, Row
from triobus.persistence.cron import CronTicks, check_cron, check_timezone
from triobus.persistence.errors import ValidationError
from triobus.persistence.json_values import JsonDefault
from triobus.persistence.validation import check_name, check_seconds, encode_payload

DEFAULT_CATCH_UP = 600.0
SCHEDULE_NAMESPACE = UUID("0b0c8d6e-54f5-4c55-8f43-3f8c2a6e1d27")
SCHEDULE_KEY = "schedule"  # the key a tick's command data gets: {"name", "tick"}


def tick_command_id(name: str, tick: datetime) -> UUID:
    """The command id of a schedule's tick: the same in every runtime, for ever."""
    return uuid.uuid5(SCHEDULE_NAMESPACE, f"{name}/{tick.astimezone(UTC).isoformat()}")


# The longest a tick's "schedule" entry gets: the size check at declaration counts it.
_SAMPLE_TICK = "2000-01-01T00:00:00+00:00"


@attrs.frozen(kw_only=True)
class Schedule:
    """A checked schedule definition (see `Runtime.schedule`); `data_json` is its data,
    encoded, without the "schedule" entry each tick's command gets."""

    name: str
    domain: str
    command_type: str
    cron: str
    timezone: str
    data: Mapping[str, Any]
    catch_up: float
    data_json: str = attrs.field(eq=False, repr=False)


def new_schedule(
    name: object,
    domain: object,
    command_type: object,
    cron: object,
    *,
    data: object,
    timezone: object,
    catch_up: object,
    max_payload_bytes: int,
    json_default: JsonDefault | None,
) -> Schedule:
    """Check a definition; raises `ValidationError` naming the schedule."""
    checked_name = check_name("name", name, context="schedule")
    where = f"schedule {checked_name!r}"
    checked_data = {} if data is None else data
    if isinstance(checked_data, Mapping) and SCHEDULE_KEY in checked_data:
        raise ValidationError(
            f"data must not hold the key {SCHEDULE_KEY!r}: each tick's command gets it, with"
            f" the schedule's name and the tick ({where})"
        )
    data_json = encode_payload(
        "data", checked_data, max_bytes=max_payload_bytes, context=where, json_default=json_default
    )
    # The size limit holds for the tick's command, "schedule" entry included.
    encode_payload(
        "data",
        {**json.loads(data_json), SCHEDULE_KEY: {"name": checked_name, "tick": _SAMPLE_TICK}},
        max_bytes=max_payload_bytes,
        context=f"{where}, with its tick",
    )
    assert isinstance(checked_data, Mapping)
    return Schedule(
        name=checked_name,
        domain=check_name("domain", domain, context=where),
        command_type=check_name("command_type", command_type, context=where),
        cron=check_cron(cron, context=where),
        timezone=check_timezone(timezone, context=where),
        data=MappingProxyType(dict(checked_data)),
        catch_up=check_seconds("catch_up", catch_up, context=where),
        data_json=data_json,
    )


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
    conn: Connection, schedule: Schedule, *, now: datetime
) -> ScheduleRecord:
    """Store the definition (see DECLARE_SCHEDULE); the schedule as it now stands."""
    params = {
        "name": schedule.name,
        "domain": schedule.domain,
        "command_type": schedule.command_type,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "data": schedule.data_json,
        "now": now,
    }
    row = await conn.fetch_one(DECLARE_SCHEDULE, params)
    if row is None:  # unchanged: read it (a statement of its own sees a racing insert)
        row = await conn.fetch_one(SELECT_SCHEDULE, (schedule.name,))
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
