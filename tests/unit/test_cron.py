"""Cron expressions: their checks, their ticks in a time zone, and the ids of ticks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from triobus.persistence.cron import CronTicks, check_cron, check_timezone
from triobus.persistence.errors import ValidationError
from triobus.persistence.schedules import tick_command_id

DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)


def test_a_sixth_field_is_seconds() -> None:
    ticks = CronTicks("* * * * * */20", "UTC")
    assert list(ticks.between(DEC_1, DEC_1 + timedelta(minutes=1))) == [
        DEC_1 + timedelta(seconds=s) for s in (20, 40, 60)
    ]


def test_ticks_are_in_the_schedule_time_zone_summer_and_winter() -> None:
    ticks = CronTicks("0 9 * * *", "Europe/Paris")
    assert ticks.next_after(DEC_1) == datetime(2026, 12, 1, 8, tzinfo=UTC)
    assert ticks.next_after(datetime(2026, 7, 1, tzinfo=UTC)) == datetime(2026, 7, 1, 7, tzinfo=UTC)


def test_an_hourly_schedule_keeps_its_pace_through_a_dst_change() -> None:
    start = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # Paris springs forward at 01:00 UTC
    paris = CronTicks("30 * * * *", "Europe/Paris")
    ticks = list(paris.between(start, start + timedelta(hours=4)))
    assert ticks == [start + timedelta(hours=h) for h in (1, 2, 3, 4)]


def test_ticks_are_strictly_after_the_instant_and_between_includes_the_end() -> None:
    ticks = CronTicks("* * * * * *", "UTC")
    assert ticks.next_after(DEC_1) == DEC_1 + timedelta(seconds=1)
    assert list(ticks.between(DEC_1, DEC_1 + timedelta(seconds=2))) == [
        DEC_1 + timedelta(seconds=1),
        DEC_1 + timedelta(seconds=2),
    ]
    assert list(ticks.between(DEC_1, DEC_1)) == []


@pytest.mark.parametrize(
    ("cron", "expected"), [("@daily", "@daily"), ("0  6 * * mon-fri", "0 6 * * mon-fri")]
)
def test_good_expressions_are_kept_normalised(cron: str, expected: str) -> None:
    assert check_cron(cron, context="schedule 'x'") == expected


def test_errors_name_the_schedule() -> None:
    with pytest.raises(ValidationError, match=r"\(schedule 'x'\)$"):
        check_cron("nope", context="schedule 'x'")
    with pytest.raises(ValidationError, match=r"unknown time zone 'Nowhere' \(schedule 'x'\)"):
        check_timezone("Nowhere", context="schedule 'x'")


def test_tick_ids_differ_by_name_and_tick_and_not_by_offset() -> None:
    tick = datetime(2026, 12, 1, 6, tzinfo=UTC)
    ids = {
        tick_command_id("a", tick),
        tick_command_id("b", tick),
        tick_command_id("a", tick + timedelta(seconds=1)),
    }
    assert len(ids) == 3
    assert tick_command_id("a", tick) == tick_command_id("a", tick.astimezone())
