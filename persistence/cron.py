"""Cron expressions and their ticks, in a time zone (parsing by croniter).

An expression has five fields (minute hour day-of-month month day-of-week), or six with
seconds as the sixth, or is an alias such as ``@hourly``. Ticks are computed in the
schedule's time zone (so ``0 9 * * *`` in Europe/Paris is 09:00 there, summer and winter)
and returned as aware UTC datetimes: a tick is an instant, and so is its command's id.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime

import attrs
from croniter import CroniterError, croniter

from triobus.persistence.errors import ValidationError

CRON_MAX_LENGTH = 200


def check_cron(cron: object, *, context: str) -> str:
    """A cron expression croniter accepts, with five or six fields (or an @alias)."""
    if not isinstance(cron, str):
        raise ValidationError(f"cron must be a string, got {type(cron).__name__} ({context})")
    fields = cron.split()
    if (not cron.startswith("@") and len(fields) not in (5, 6)) or len(cron) > CRON_MAX_LENGTH:
        raise ValidationError(
            f"cron {cron!r:.80} must have five fields (minute hour day month weekday), or"
            f" six with seconds last ({context})"
        )
    try:
        croniter(cron, datetime.now(UTC)).get_next(datetime)  # "0 0 30 2 *" has no tick
    except (CroniterError, ValueError) as ex:
        raise ValidationError(f"cron {cron!r:.80} is not valid: {ex} ({context})") from None
    return " ".join(fields)


def check_timezone(timezone: object, *, context: str) -> str:
    """An IANA time zone name, such as "UTC" or "Europe/Paris"."""
    if not isinstance(timezone, str):
        raise ValidationError(
            f"timezone must be a string, got {type(timezone).__name__} ({context})"
        )
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown time zone {timezone!r:.80} ({context})") from None
    return timezone


@attrs.frozen
class CronTicks:
    """The ticks of a checked cron expression in a checked time zone."""

    cron: str
    timezone: str

    def after(self, instant: datetime) -> Iterator[datetime]:
        """The ticks strictly after `instant` (aware), in order, as UTC datetimes."""
        start = instant.astimezone(zoneinfo.ZoneInfo(self.timezone))
        ticks = croniter(self.cron, start)
        while True:
            yield ticks.get_next(datetime).astimezone(UTC)

    def next_after(self, instant: datetime) -> datetime:
        return next(self.after(instant))

    def between(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """The ticks in (start, end], in order (lazily: a long catch-up is many ticks)."""
        for tick in self.after(start):
            if tick > end:
                return
            yield tick
