"""outcome_of: the whole outcome table (ARCHITECTURE §7), and what is stored about errors."""

from __future__ import annotations

import json
import uuid

import attrs
import pytest

from triobus.actors import (
    BusinessRuleError,
    Command,
    PermanentCommandError,
    RetryPolicy,
    TransientCommandError,
)
from triobus.actors.outcomes import (
    HandlerRun,
    NoHandler,
    Raised,
    Returned,
    TimedOut,
    outcome_of,
)
from triobus.persistence.queue import ClaimedCommand, Outcome
from triobus.persistence.records import CommandStatus

CLAIM = ClaimedCommand(
    command=Command(
        domain="d",
        command_id=uuid.uuid4(),
        command_type="T",
        data={},
        correlation_id=uuid.uuid4(),
        reply_to=None,
        batch_id=None,
    ),
    attempt=1,
    max_attempts=None,
    lease_token=uuid.uuid4(),
)
POLICY = RetryPolicy(max_attempts=3, backoff=(1.0, 7.0))


def claim(attempt: int, max_attempts: int | None = None) -> ClaimedCommand:
    return attrs.evolve(CLAIM, attempt=attempt, max_attempts=max_attempts)


TABLE = [
    # (run, attempt, the command's max_attempts, outcome, error code, retry delay)
    (Returned({"total": 3}), 1, None, Outcome.COMPLETED, None, None),
    (Returned(None), 3, None, Outcome.COMPLETED, None, None),
    (Returned(["not", "an", "object"]), 1, None, Outcome.MOVED_TO_TSQ, "INVALID_RESULT", None),
    (Returned({"x": float("nan")}), 1, None, Outcome.MOVED_TO_TSQ, "INVALID_RESULT", None),
    (Raised(BusinessRuleError("NO", "refused")), 1, None, Outcome.BUSINESS_RULE_FAILED, "NO", None),
    (Raised(PermanentCommandError("BROKEN", "fix")), 1, None, Outcome.MOVED_TO_TSQ, "BROKEN", None),
    (Raised(TransientCommandError("FLAKY", "x")), 1, None, Outcome.RETRY_SCHEDULED, "FLAKY", 1.0),
    (Raised(TransientCommandError("FLAKY", "x")), 2, None, Outcome.RETRY_SCHEDULED, "FLAKY", 7.0),
    (Raised(TransientCommandError("FLAKY", "x")), 3, None, Outcome.RETRY_EXHAUSTED, "FLAKY", None),
    (Raised(RuntimeError("bug")), 1, None, Outcome.RETRY_SCHEDULED, "UNHANDLED_EXCEPTION", 1.0),
    (Raised(RuntimeError("bug")), 3, None, Outcome.RETRY_EXHAUSTED, "UNHANDLED_EXCEPTION", None),
    (TimedOut(), 1, None, Outcome.RETRY_SCHEDULED, "HANDLER_TIMEOUT", 1.0),
    (TimedOut(), 3, None, Outcome.RETRY_EXHAUSTED, "HANDLER_TIMEOUT", None),
    # the command's own max_attempts wins over the policy's, both ways
    (TimedOut(), 3, 5, Outcome.RETRY_SCHEDULED, "HANDLER_TIMEOUT", 7.0),
    (TimedOut(), 1, 1, Outcome.RETRY_EXHAUSTED, "HANDLER_TIMEOUT", None),
    (NoHandler(), 1, None, Outcome.MOVED_TO_TSQ, "NO_HANDLER", None),
]


@pytest.mark.parametrize(("run", "attempt", "max_attempts", "outcome", "code", "delay"), TABLE)
def test_every_run_leads_to_its_outcome(
    run: HandlerRun,
    attempt: int,
    max_attempts: int | None,
    outcome: Outcome,
    code: str | None,
    delay: float | None,
) -> None:
    result = outcome_of(claim(attempt, max_attempts), run, POLICY)
    assert (result.outcome, result.error_code, result.retry_delay) == (outcome, code, delay)
    assert (result.domain, result.command_id, result.lease_token) == (
        "d",
        CLAIM.command.command_id,
        CLAIM.lease_token,
    )
    assert (result.error_type is None) == (outcome is Outcome.COMPLETED)


def test_outcomes_lead_to_their_status_and_audit_event() -> None:
    assert {o: (o.status, o.event.value) for o in Outcome} == {
        Outcome.COMPLETED: (CommandStatus.COMPLETED, "COMPLETED"),
        Outcome.RETRY_SCHEDULED: (CommandStatus.PENDING, "RETRY_SCHEDULED"),
        Outcome.RETRY_EXHAUSTED: (CommandStatus.IN_TROUBLESHOOTING_QUEUE, "RETRY_EXHAUSTED"),
        Outcome.MOVED_TO_TSQ: (CommandStatus.IN_TROUBLESHOOTING_QUEUE, "MOVED_TO_TSQ"),
        Outcome.BUSINESS_RULE_FAILED: (CommandStatus.FAILED, "BUSINESS_RULE_FAILED"),
    }


def test_a_result_is_stored_as_json_and_errors_are_described() -> None:
    completed = outcome_of(CLAIM, Returned({"total": 3}), POLICY)
    assert completed.result_json == '{"total":3}'
    failed = outcome_of(CLAIM, Raised(BusinessRuleError("NO", "refused", {"why": 1})), POLICY)
    assert (failed.error_type, failed.error_message) == ("BusinessRuleError", "refused")
    assert failed.error_details_json is not None and json.loads(failed.error_details_json) == {
        "why": 1
    }
    crashed = outcome_of(CLAIM, Raised(KeyError("k")), POLICY)
    assert (crashed.error_type, crashed.error_message) == ("KeyError", "'k'")
    missing = outcome_of(CLAIM, NoHandler(), POLICY)
    assert (missing.error_type, missing.error_message) == (
        "HandlerNotFound",
        "no handler registered for 'd'/'T'",
    )


def test_a_result_over_the_size_limit_goes_to_the_tsq() -> None:
    result = outcome_of(CLAIM, Returned({"x": "y" * 100}), POLICY, max_result_bytes=50)
    assert (result.outcome, result.error_code) == (Outcome.MOVED_TO_TSQ, "INVALID_RESULT")
    assert result.error_message is not None and "limit is 50" in result.error_message


def test_error_text_is_cut_and_made_storable() -> None:
    result = outcome_of(CLAIM, Raised(RuntimeError("nul\x00" + "x" * 5000)), POLICY)
    assert result.error_message is not None and len(result.error_message) == 4000
    assert result.error_message.startswith("nul\\x00")


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("even repr() fails")


def permanent(details: dict[str, object]) -> object:
    error = PermanentCommandError("BAD", "bad", details)
    result = outcome_of(CLAIM, Raised(error), RetryPolicy())
    assert result.outcome is Outcome.MOVED_TO_TSQ and result.error_details_json is not None
    return json.loads(result.error_details_json)


def test_unserialisable_details_are_kept_as_text() -> None:
    assert permanent({"at": {1, 2}}) == {"unserialisable_details": "{'at': {1, 2}}"}


def test_details_whose_repr_fails_are_named_not_raised() -> None:
    assert permanent({"x": Unprintable()}) == {
        "unserialisable_details": "<dict whose str() failed>"
    }
