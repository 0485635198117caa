"""Lookups of what does not exist find None or nothing and write nothing; quotes,
semicolons and unicode in values are stored verbatim, never run as SQL."""

from __future__ import annotations

import inspect
import uuid
from typing import Any

import pytest

from tests.integration.bad_input.cases import INJECTION, UNKNOWN, Call, Seed, snapshot
from triobus.actors import Runtime, open_runtime

LOOKUPS: list[Any] = [
    pytest.param(
        lambda rt, s: rt.bus.get_command("e", s.pending), None, id="get_command-other-domain"
    ),
    pytest.param(lambda rt, s: rt.bus.get_command("d", UNKNOWN), None, id="get_command-unknown"),
    pytest.param(lambda rt, s: rt.bus.get_batch("e", s.batch), None, id="get_batch-other-domain"),
    pytest.param(lambda rt, s: rt.bus.list_batches("e"), [], id="list_batches-unknown-domain"),
    pytest.param(
        lambda rt, s: rt.bus.list_batch_commands("e", s.batch), [], id="list_batch_commands-other"
    ),
    pytest.param(lambda rt, s: rt.bus.query_commands(domain="e"), [], id="query-unknown-domain"),
    pytest.param(lambda rt, s: rt.bus.get_audit_trail(s.pending, "e"), [], id="audit-other-domain"),
    pytest.param(lambda rt, s: rt.bus.read_replies("nobody"), [], id="read_replies-unknown-queue"),
    pytest.param(lambda rt, s: rt.bus.ack_replies("nobody", [1, 2, 3]), 0, id="ack-other-queue"),
    pytest.param(lambda rt, s: rt.tsq.count_troubleshooting("e"), 0, id="tsq_count-unknown-domain"),
    pytest.param(lambda rt, s: rt.tsq.list_troubleshooting("e"), [], id="tsq_list-unknown-domain"),
    pytest.param(lambda rt, s: rt.tsq.retry_all("e"), 0, id="retry_all-unknown-domain"),
    pytest.param(
        lambda rt, s: rt.tsq.cancel_all("d", "r", command_type="Work"), 0, id="cancel_all-no-match"
    ),
]


@pytest.mark.parametrize(("lookup", "expected"), LOOKUPS)
async def test_lookups_of_what_does_not_exist_find_nothing_and_write_nothing(
    runtime: Runtime, seed: Seed, lookup: Call, expected: object
) -> None:
    before = await snapshot(runtime.pool)
    result = lookup(runtime, seed)
    assert inspect.isawaitable(result)
    assert await result == expected
    assert await snapshot(runtime.pool) == before


async def test_sql_in_values_is_stored_verbatim(seeded_dsn: str, seed: Seed) -> None:
    """Quotes, semicolons and unicode in free text and payloads are values, never SQL."""
    async with open_runtime(seeded_dsn, migrate=False) as runtime:
        await _store_sql_like_values(runtime, seed)


async def _store_sql_like_values(runtime: Runtime, seed: Seed) -> None:
    reason = 'r\'); DELETE FROM triobus.audit; -- Zoë ☃ "quoted"'
    operator = "o'; DROP TABLE triobus.command; --"
    await runtime.tsq.operator_cancel("d", seed.parked, reason, operator=operator)
    trail = await runtime.bus.get_audit_trail(seed.parked, domain="d")
    assert trail[-1].details == {"operator": operator, "reason": reason}
    data: dict[str, object] = {
        INJECTION: INJECTION,
        "ü": ["'", '"', ";", "\\", "%s", "%(x)s", "$1"],
    }
    sent = await runtime.bus.send("d", "T", uuid.uuid4(), data)
    stored = await runtime.bus.get_command("d", sent.command_id)
    assert stored is not None and stored.data == data
    after = await snapshot(runtime.pool)
    assert after["command"][0] == 5 and after["audit"][0] > 0
