"""Bad input for the troubleshooting queue: list, count, operator retry/cancel/complete,
retry_all, cancel_all and retry_batch (what every case asserts: cases.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.bad_input.cases import (
    UNKNOWN,
    Borrowed,
    Case,
    Seed,
    case,
    check_bad_input,
    json_cases,
    limit_offset_cases,
    name_cases,
    text_cases,
    uuid_cases,
)
from triobus.actors import (
    BatchNotFoundError,
    CommandNotFoundError,
    InvalidOperationError,
    Runtime,
    ValidationError,
)


def _operator_state_cases(name: str, call: Callable[[Any, str, object], object]) -> list[Any]:
    """An operator action on an unknown id, on the wrong domain, on a command not in the TSQ."""
    return [
        case(
            f"{name}-unknown",
            "unknown-id",
            lambda rt, s: call(rt, "d", UNKNOWN),
            CommandNotFoundError,
            "command <unknown> not found in domain 'd'",
            reads=True,
        ),
        case(
            f"{name}-other-domain",
            "wrong-domain",
            lambda rt, s: call(rt, "e", s.parked),
            CommandNotFoundError,
            "command <parked> not found in domain 'e'",
            reads=True,
        ),
        case(
            f"{name}-pending",
            "state",
            lambda rt, s: call(rt, "d", s.pending),
            InvalidOperationError,
            "command <pending> in domain 'd' is PENDING, not in the troubleshooting queue",
            reads=True,
        ),
        case(
            f"{name}-canceled",
            "state",
            lambda rt, s: call(rt, "d", s.canceled),
            InvalidOperationError,
            "command <canceled> in domain 'd' is CANCELED, not in the troubleshooting queue",
            reads=True,
        ),
    ]


TSQ_CASES = [
    # list / count
    *name_cases("tsq_list-domain", "domain", lambda rt, s, v: rt.tsq.list_troubleshooting(v)),
    *name_cases(
        "tsq_list-type",
        "command_type",
        lambda rt, s, v: rt.tsq.list_troubleshooting("d", command_type=v),
        "domain 'd'",
        optional=True,
    ),
    *limit_offset_cases(
        "tsq_list",
        lambda rt, s, v, o: rt.tsq.list_troubleshooting("d", limit=v, offset=o),
        "domain 'd'",
    ),
    *name_cases("tsq_count-domain", "domain", lambda rt, s, v: rt.tsq.count_troubleshooting(v)),
    *name_cases(
        "tsq_count-type",
        "command_type",
        lambda rt, s, v: rt.tsq.count_troubleshooting("d", command_type=v),
        "domain 'd'",
        optional=True,
    ),
    # operator_retry
    *name_cases("retry-domain", "domain", lambda rt, s, v: rt.tsq.operator_retry(v, s.parked)),
    case(
        "retry-conn",
        "wrong-type",
        lambda rt, s: rt.tsq.operator_retry("d", s.parked, conn=object()),
        ValidationError,
        r"conn must be a transaction from runtime\.transaction\(\), got object"
        r" \(domain 'd', command <parked>\)",
    ),
    case(
        "cancel_all-conn",
        "wrong-type",
        lambda rt, s: rt.tsq.cancel_all("d", "why", conn="conn"),
        ValidationError,
        r"conn must be a transaction.*got str \(domain 'd'\)",
    ),
    *uuid_cases(
        "retry-id",
        lambda rt, s, v: rt.tsq.operator_retry("d", v),
        "command_id must be a UUID.*domain 'd'",
    ),
    *text_cases(
        "retry-operator",
        "operator",
        lambda rt, s, v: rt.tsq.operator_retry("d", s.parked, operator=v),
        200,
        "domain 'd', command <parked>",
    ),
    *_operator_state_cases("retry", lambda rt, d, i: rt.tsq.operator_retry(d, i)),
    # operator_cancel
    *name_cases(
        "cancel-domain", "domain", lambda rt, s, v: rt.tsq.operator_cancel(v, s.parked, "r")
    ),
    *uuid_cases(
        "cancel-id",
        lambda rt, s, v: rt.tsq.operator_cancel("d", v, "r"),
        "command_id must be a UUID.*domain 'd'",
    ),
    *text_cases(
        "cancel-reason",
        "reason",
        lambda rt, s, v: rt.tsq.operator_cancel("d", s.parked, v),
        1000,
        "domain 'd', command <parked>",
    ),
    *text_cases(
        "cancel-operator",
        "operator",
        lambda rt, s, v: rt.tsq.operator_cancel("d", s.parked, "r", operator=v),
        200,
        "domain 'd', command <parked>",
    ),
    *_operator_state_cases("cancel", lambda rt, d, i: rt.tsq.operator_cancel(d, i, "r")),
    # operator_complete
    *name_cases(
        "complete-domain", "domain", lambda rt, s, v: rt.tsq.operator_complete(v, s.parked)
    ),
    *uuid_cases(
        "complete-id",
        lambda rt, s, v: rt.tsq.operator_complete("d", v),
        "command_id must be a UUID.*domain 'd'",
    ),
    *json_cases(
        "complete-result",
        "result_data",
        lambda rt, s, v: rt.tsq.operator_complete("d", s.parked, result_data=v),
        "domain 'd', command <parked>",
    ),
    *text_cases(
        "complete-operator",
        "operator",
        lambda rt, s, v: rt.tsq.operator_complete("d", s.parked, operator=v),
        200,
        "domain 'd', command <parked>",
    ),
    *_operator_state_cases("complete", lambda rt, d, i: rt.tsq.operator_complete(d, i)),
    # bulk forms
    *name_cases("retry_batch-domain", "domain", lambda rt, s, v: rt.tsq.retry_batch(v, s.batch)),
    *uuid_cases(
        "retry_batch-id",
        lambda rt, s, v: rt.tsq.retry_batch("d", v),
        "batch_id must be a UUID.*domain 'd'",
    ),
    *text_cases(
        "retry_batch-operator",
        "operator",
        lambda rt, s, v: rt.tsq.retry_batch("d", s.batch, operator=v),
        200,
        "domain 'd', batch <batch>",
    ),
    case(
        "retry_batch-unknown",
        "unknown-id",
        lambda rt, s: rt.tsq.retry_batch("d", UNKNOWN),
        BatchNotFoundError,
        "batch <unknown> not found in domain 'd'",
        reads=True,
    ),
    *name_cases("retry_all-domain", "domain", lambda rt, s, v: rt.tsq.retry_all(v)),
    *name_cases(
        "retry_all-type",
        "command_type",
        lambda rt, s, v: rt.tsq.retry_all("d", command_type=v),
        "domain 'd'",
        optional=True,
    ),
    *text_cases(
        "retry_all-operator",
        "operator",
        lambda rt, s, v: rt.tsq.retry_all("d", operator=v),
        200,
        "domain 'd'",
    ),
    *name_cases("cancel_all-domain", "domain", lambda rt, s, v: rt.tsq.cancel_all(v, "r")),
    *name_cases(
        "cancel_all-type",
        "command_type",
        lambda rt, s, v: rt.tsq.cancel_all("d", "r", command_type=v),
        "domain 'd'",
        optional=True,
    ),
    *text_cases(
        "cancel_all-reason", "reason", lambda rt, s, v: rt.tsq.cancel_all("d", v), 1000, "'d'"
    ),
    *text_cases(
        "cancel_all-operator",
        "operator",
        lambda rt, s, v: rt.tsq.cancel_all("d", "r", operator=v),
        200,
        "domain 'd'",
    ),
]


@pytest.mark.parametrize("bad", TSQ_CASES)
async def test_bad_input_raises_a_specific_error_and_writes_nothing(
    runtime: Runtime, seed: Seed, borrowed: Borrowed, bad: Case
) -> None:
    await check_bad_input(bad, runtime, seed, borrowed)
