"""Processes SIGKILLed while they hold a transaction: a transactional handler's effect
and follow-up exist exactly once if its command COMPLETED, else not at all; an
application's row and its send commit both or neither. The long version is
tests/soak/transactions.py (see docs/RELIABILITY.md)."""

from __future__ import annotations

import random

from tests.soak.transactions import application_trial, handler_trial


async def test_worker_processes_with_a_transactional_handler_sigkilled_mid_batch(
    triobus_dsn: str,
) -> None:
    result = await handler_trial(triobus_dsn, 300, 3, random.Random(7))
    assert result.problems == []
    assert result.writes > 0 and result.hit > 0  # the kills hit claimed commands


async def test_application_processes_sigkilled_in_their_transactions(triobus_dsn: str) -> None:
    result = await application_trial(triobus_dsn, 8, random.Random(7))
    assert result.problems == []
    assert result.writes > 0
