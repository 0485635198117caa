"""Bad input for open_runtime and the Runtime: start_worker, schedule, watch_batch,
unwatch_batch and wait_batch (what every case asserts: cases.py)."""

from __future__ import annotations

import math

import pytest

from tests.integration.bad_input.cases import (
    HUGE,
    UNKNOWN,
    Borrowed,
    Call,
    Case,
    Seed,
    async_function,
    bind,
    case,
    check_bad_input,
    name_cases,
    not_async,
    uuid_cases,
)
from triobus.actors import BatchNotFoundError, Runtime, ValidationError, open_runtime


async def _open(dsn: object, **options: object) -> None:
    options.setdefault("migrate", False)
    async with open_runtime(dsn, **options):  # type: ignore[arg-type]
        raise AssertionError("the runtime opened")


AT = "schedule 'nightly'"


def schedule(rt: Runtime, **change: object) -> object:
    """`rt.schedule` of a good definition with `change` made."""
    definition: dict[str, object] = {
        "name": "nightly",
        "domain": "reports",
        "command_type": "Make",
        "cron": "0 3 * * *",
        "timezone": "Europe/Paris",
        "catch_up": 60,
    } | change
    args = [definition.pop(k) for k in ("name", "domain", "command_type", "cron")]
    return rt.schedule(*args, **definition)  # type: ignore[arg-type]


def open_with(**options: object) -> Call:
    return lambda rt, s: _open(rt.dsn, **options)


RUNTIME_CASES = [
    # open_runtime
    *[
        case(
            f"open_runtime-dsn[{i}]",
            kind,
            bind(lambda rt, s, v: _open(v), v),
            ValidationError,
            match,
        )
        for i, (kind, v, match) in enumerate(
            [
                ("wrong-type", 5, "dsn must be a str, got int"),
                ("wrong-type", b"host=x", "dsn must be a str, got bytes"),
                ("empty", "", "dsn must not be empty or blank"),
                ("empty", "  ", "dsn must not be empty or blank"),
                ("nul", "host=localhost\x00dbname=other", "dsn must not contain a NUL"),
                ("quotes", "host='localhost", "dsn is not a valid PostgreSQL connection string"),
                ("unknown-value", "flavour=mint", "dsn is not a valid PostgreSQL connection"),
                ("huge", "x" * 100_000, "dsn is not a valid PostgreSQL connection string"),
            ]
        )
    ],
    *[
        case(f"open_runtime-{option}", kind, open_with(**{option: value}), ValidationError, match)
        for option, kind, value, match in [
            ("registry", "wrong-type", {}, "registry must be a HandlerRegistry, got dict"),
            ("migrate", "wrong-type", "no", "migrate must be a bool, got 'no'"),
            ("driver", "unknown-value", "bogus", "driver 'bogus' is not one of native, thread"),
            ("driver", "empty", "", "driver '' is not one of"),
            ("driver", "wrong-type", 1, "driver 1 is not one of"),
            ("pool_size", "range", 0, "pool_size must be between 1 and 1000, got 0"),
            ("pool_size", "huge", 10**6, "pool_size must be between 1 and 1000"),
            ("pool_size", "wrong-type", "8", "pool_size must be an int"),
            ("max_payload_bytes", "range", 0, "max_payload_bytes must be between 1 and"),
            ("max_payload_bytes", "huge", 2**40, "max_payload_bytes must be between 1 and"),
            ("batch_callback_timeout", "json", math.nan, "batch_callback_timeout must be"),
            ("batch_callback_timeout", "range", 0, "batch_callback_timeout must be"),
            ("batch_reconcile_interval", "range", -1, "batch_reconcile_interval must be"),
            ("batch_reconcile_interval", "json", math.inf, "batch_reconcile_interval must be"),
        ]
    ],
    # start_worker
    *name_cases("start_worker-domain", "domain", lambda rt, s, v: rt.start_worker(v)),
    *[
        case(
            f"start_worker-{option}[{i}]",
            kind,
            bind(lambda rt, s, o: rt.start_worker("d", **o), {option: value}),
            ValidationError,
            f"{match}.*worker of domain 'd'",
        )
        for i, (option, kind, value, match) in enumerate(
            [
                ("concurrency", "range", 0, "concurrency must be between 1 and 10000, got 0"),
                ("concurrency", "wrong-type", "8", "concurrency must be an int"),
                ("concurrency", "huge", 10**9, "concurrency must be between 1 and 10000"),
                ("prefetch", "range", -1, "prefetch must be between 0 and 10000, got -1"),
                ("prefetch", "wrong-type", 1.5, "prefetch must be an int"),
                ("prefetch", "wrong-type", True, "prefetch must be an int"),
                ("prefetch", "huge", 10**9, "prefetch must be between 0 and 10000"),
                (
                    "visibility_timeout",
                    "range",
                    0,
                    "visibility_timeout must be a number of seconds",
                ),
                ("visibility_timeout", "json", math.nan, "visibility_timeout must be a number"),
                ("retry_policy", "wrong-type", {}, "retry_policy must be a RetryPolicy, got dict"),
                ("retry_policy", "wrong-type", 3, "retry_policy must be a RetryPolicy, got int"),
                ("handler_timeout", "range", -1, "handler_timeout must be a number of seconds"),
                ("poll_interval", "range", 0, "poll_interval must be a number of seconds > 0"),
                ("poll_interval", "wrong-type", "5", "poll_interval must be a number of seconds"),
                ("heartbeat_interval", "range", 30.0, "heartbeat_interval .* must be shorter"),
                ("grace_period", "json", math.inf, "grace_period must be a number of seconds"),
                ("registry", "wrong-type", {}, "registry must be a HandlerRegistry, got dict"),
            ]
        )
    ],
    # schedule
    *name_cases("schedule-name", "name", lambda rt, s, v: schedule(rt, name=v), "schedule"),
    *name_cases("schedule-domain", "domain", lambda rt, s, v: schedule(rt, domain=v), AT),
    *name_cases(
        "schedule-command_type", "command_type", lambda rt, s, v: schedule(rt, command_type=v), AT
    ),
    *[
        case(
            f"schedule-{arg}[{i}]",
            kind,
            bind(lambda rt, s, a, v: schedule(rt, **{a: v}), arg, value),
            ValidationError,
            f"{match}.*{AT}",
        )
        for i, (arg, kind, value, match) in enumerate(
            [
                ("cron", "range", "61 * * * *", "cron '61 \\* \\* \\* \\*' is not valid"),
                ("cron", "unknown-value", "* * * *", "must have five fields"),
                ("cron", "unknown-value", "* * * * * * 2030", "must have five fields"),
                ("cron", "unknown-value", "0 0 30 2 *", "is not valid: failed to find"),
                ("cron", "empty", "", "must have five fields"),
                ("cron", "huge", HUGE, "must have five fields"),
                ("cron", "wrong-type", 5, "cron must be a string, got int"),
                ("timezone", "unknown-value", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
                ("timezone", "quotes", "../../etc/passwd", "unknown time zone"),
                ("timezone", "nul", "UTC\x00", "unknown time zone"),
                ("timezone", "wrong-type", None, "timezone must be a string"),
                ("data", "wrong-type", [1], "data must be a JSON object"),
                ("data", "unknown-value", {"schedule": 1}, "must not hold the key 'schedule'"),
                ("data", "huge", {"x": "y" * 1_100_000}, "data is 1100008 bytes as JSON"),
                # it fits alone, not with the "schedule" entry of each tick's command
                ("data", "huge", {"x": "y" * (1024 * 1024 - 20)}, "1048629 bytes as JSON"),
                ("catch_up", "range", 0, "catch_up must be a number of seconds > 0"),
                ("catch_up", "json", math.nan, "catch_up must be a number of seconds"),
            ]
        )
    ],
    # watch_batch, unwatch_batch, wait_batch
    *name_cases(
        "watch_batch-domain", "domain", lambda rt, s, v: rt.watch_batch(v, s.batch, async_function)
    ),
    *uuid_cases(
        "watch_batch-id",
        lambda rt, s, v: rt.watch_batch("d", v, async_function),
        "batch_id must be a UUID.*domain 'd'",
    ),
    case(
        "watch_batch-callback",
        "wrong-type",
        lambda rt, s: rt.watch_batch("d", s.batch, not_async),
        ValidationError,
        "on_complete must be an async callable.*domain 'd', batch <batch>",
    ),
    case(
        "watch_batch-callback-none",
        "wrong-type",
        lambda rt, s: rt.watch_batch("d", UNKNOWN, None),
        ValidationError,
        "on_complete must be an async callable",
    ),
    case(
        "watch_batch-unknown",
        "unknown-id",
        lambda rt, s: rt.watch_batch("d", UNKNOWN, async_function),
        BatchNotFoundError,
        "batch <unknown> not found in domain 'd'",
        reads=True,
    ),
    case(
        "watch_batch-other-domain",
        "wrong-domain",
        lambda rt, s: rt.watch_batch("e", s.batch, async_function),
        BatchNotFoundError,
        "batch <batch> not found in domain 'e'",
        reads=True,
    ),
    *name_cases("unwatch_batch-domain", "domain", lambda rt, s, v: rt.unwatch_batch(v, s.batch)),
    *uuid_cases(
        "unwatch_batch-id",
        lambda rt, s, v: rt.unwatch_batch("d", v),
        "batch_id must be a UUID.*domain 'd'",
    ),
    *name_cases("wait_batch-domain", "domain", lambda rt, s, v: rt.wait_batch(v, s.batch)),
    *uuid_cases(
        "wait_batch-id",
        lambda rt, s, v: rt.wait_batch("d", v),
        "batch_id must be a UUID.*domain 'd'",
    ),
    case(
        "wait_batch-timeout",
        "range",
        lambda rt, s: rt.wait_batch("d", s.batch, timeout=-1),
        ValidationError,
        "timeout must be a number of seconds > 0.*domain 'd', batch <batch>",
    ),
    case(
        "wait_batch-timeout",
        "json",
        lambda rt, s: rt.wait_batch("d", s.batch, timeout=math.nan),
        ValidationError,
        "timeout must be a number of seconds",
    ),
    case(
        "wait_batch-unknown",
        "unknown-id",
        lambda rt, s: rt.wait_batch("d", UNKNOWN, timeout=5),
        BatchNotFoundError,
        "batch <unknown> not found in domain 'd'",
        reads=True,
    ),
    case(
        "wait_batch-other-domain",
        "wrong-domain",
        lambda rt, s: rt.wait_batch("e", s.batch, timeout=5),
        BatchNotFoundError,
        "batch <batch> not found in domain 'e'",
        reads=True,
    ),
]


@pytest.mark.parametrize("bad", RUNTIME_CASES)
async def test_bad_input_raises_a_specific_error_and_writes_nothing(
    runtime: Runtime, seed: Seed, borrowed: Borrowed, bad: Case
) -> None:
    await check_bad_input(bad, runtime, seed, borrowed)
