"""Periodic commands: the actor that sends one schedule's ticks (the definition and its
checks are `persistence/schedules.py`).

Every runtime that declares a schedule runs an actor for it, and each tick is sent once
across all of them and across restarts (`persistence/schedules.py` says how). The actor
follows the definition stored, which is the one last declared by any runtime: so a
changed cron, target or data takes effect from the next tick everywhere. Each round it
reads the schedule, marks the ticks more than `catch_up` seconds late done without
sending them (one WARNING line), sends the due ones in order, each in a transaction of
its own, and sleeps until the next tick (at most `MAX_SLEEP`, to see changes made
elsewhere). Ticks are due by this host's clock. A database error is logged and the
round retried after a growing pause; the runtime goes on.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import attrs
import trio

from triobus.persistence import schedules
from triobus.persistence.commands import insert_command
from triobus.persistence.cron import CronTicks
from triobus.persistence.errors import DuplicateCommandError, TriobusError
from triobus.persistence.json_values import JsonDefault
from triobus.persistence.new_commands import NewCommand, new_command
from triobus.persistence.pool import ConnectionPool
from triobus.persistence.schedules import SCHEDULE_KEY, Schedule, ScheduleRecord, tick_command_id

logger = logging.getLogger(__name__)

MAX_SLEEP = 60.0
MAX_RETRY_PAUSE = 30.0


def tick_command(
    record: ScheduleRecord,
    tick: datetime,
    *,
    max_payload_bytes: int,
    json_default: JsonDefault | None,
) -> NewCommand:
    """The command of `tick`: the stored definition's, with a derived id."""
    data = {**record.data, SCHEDULE_KEY: {"name": record.name, "tick": tick.isoformat()}}
    return new_command(
        record.domain,
        record.command_type,
        tick_command_id(record.name, tick),
        data,
        max_payload_bytes=max_payload_bytes,
        json_default=json_default,
    )


@attrs.define
class ScheduleActor:
    """Sends the ticks of one schedule from one runtime (see the module docstring)."""

    pool: ConnectionPool
    schedule: Schedule
    max_payload_bytes: int
    json_default: JsonDefault | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        failures = 0
        while True:
            try:
                pause = await self.round()
            except TriobusError as ex:
                failures += 1
                pause = min(MAX_RETRY_PAUSE, 0.5 * 2**failures)
                logger.warning(
                    "schedule %r could not send its ticks, trying again in %.1f s: %s",
                    self.schedule.name,
                    pause,
                    ex,
                )
            else:
                failures = 0
            if pause is None:
                return
            await trio.sleep(pause)

    async def round(self) -> float | None:
        """Send what is due; seconds until the next tick (None: the schedule is gone)."""
        name = self.schedule.name
        async with self.pool.connection() as conn:
            record = await schedules.select_schedule(conn, name)
        if record is None:
            logger.warning("schedule %r was deleted: this runtime stops sending it", name)
            return None
        ticks = CronTicks(record.cron, record.timezone)
        now = datetime.now(UTC)
        done = record.sent_through
        cutoff = now - timedelta(seconds=self.schedule.catch_up)
        first_late = ticks.next_after(done)
        if first_late <= cutoff:
            if not await self._advance(record, cutoff, sent=False):
                return 0.0  # another runtime moved it: read again
            logger.warning(
                "schedule %r skipped its ticks from %s to %s: more than catch_up=%g s late",
                name,
                first_late.isoformat(),
                cutoff.isoformat(),
                self.schedule.catch_up,
            )
            done = cutoff
        for tick in ticks.between(done, now):
            if not await self._send(record, tick):
                return 0.0
        until_next = (ticks.next_after(now) - datetime.now(UTC)).total_seconds()
        return min(MAX_SLEEP, max(0.0, until_next))

    async def _advance(self, record: ScheduleRecord, through: datetime, *, sent: bool) -> bool:
        async with self.pool.connection() as conn:
            return await schedules.advance(
                conn, record.name, version=record.version, through=through, sent=sent
            )

    async def _send(self, record: ScheduleRecord, tick: datetime) -> bool:
        """Send `tick`'s command with the step that marks it done; False if the step was
        taken already (another runtime sent it) or the definition changed."""
        command = tick_command(
            record, tick, max_payload_bytes=self.max_payload_bytes, json_default=self.json_default
        )
        async with self.pool.connection() as conn, conn.transaction():
            if not await schedules.advance(
                conn, record.name, version=record.version, through=tick, sent=True
            ):
                return False
            try:
                await insert_command(conn, command)
            except DuplicateCommandError:  # the store holds it already: the tick is done
                logger.warning("schedule %r: tick %s was sent already", record.name, tick)
        return True
