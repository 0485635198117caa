"""outcome_of: what is stored when a handler's error details cannot be."""

from __future__ import annotations

import json
import uuid

from triobus.actors import PermanentCommandError, RetryPolicy
from triobus.actors.worker import outcome_of
from triobus.persistence.queue import ClaimedCommand, Outcome

CLAIM = ClaimedCommand(
    domain="d",
    command_id=uuid.uuid4(),
    command_type="T",
    data={},
    correlation_id=uuid.uuid4(),
    reply_to=None,
    batch_id=None,
    attempt=1,
    max_attempts=None,
    lease_token=uuid.uuid4(),
)


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("even repr() fails")


def permanent(details: dict[str, object]) -> object:
    error = PermanentCommandError("BAD", "bad", details)
    result = outcome_of(CLAIM, 3, RetryPolicy(), error=error)
    assert result.outcome is Outcome.MOVED_TO_TSQ and result.error_details_json is not None
    return json.loads(result.error_details_json)


def test_unserialisable_details_are_kept_as_text() -> None:
    assert permanent({"at": {1, 2}}) == {"unserialisable_details": "{'at': {1, 2}}"}


def test_details_whose_repr_fails_are_named_not_raised() -> None:
    assert permanent({"x": Unprintable()}) == {
        "unserialisable_details": "<dict whose str() failed>"
    }
