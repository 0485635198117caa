"""What a handler run did, and the outcome it leads to: a pure function, no I/O, no Trio.

A run ends in one of four ways (`HandlerRun`): it returned a value, raised, timed out,
or there was no handler. `outcome_of` maps each to one `HandlerResult` (ARCHITECTURE §7):

| run                                        | outcome                                     |
|--------------------------------------------|---------------------------------------------|
| returned a JSON object or None             | COMPLETED, the object stored as the result  |
| returned anything else, or too large       | MOVED_TO_TSQ (code INVALID_RESULT)          |
| raised `BusinessRuleError`                 | BUSINESS_RULE_FAILED (FAILED, terminal)     |
| raised `PermanentCommandError`             | MOVED_TO_TSQ                                |
| raised anything else, or timed out         | RETRY_SCHEDULED after `RetryPolicy`'s delay |
|                                            | while attempts remain, else RETRY_EXHAUSTED |
| no handler registered                      | MOVED_TO_TSQ (code NO_HANDLER)              |
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import attrs

from triobus.actors.handlers import BusinessRuleError, CommandHandlerError, PermanentCommandError
from triobus.persistence.errors import ValidationError
from triobus.persistence.json_values import JsonDefault
from triobus.persistence.queue import ClaimedCommand, HandlerResult, Outcome
from triobus.persistence.validation import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_ATTEMPTS_LIMIT,
    check_int_in_range,
    check_seconds,
    checked_by,
    encode_payload,
    storable_text,
)

ERROR_NAME_LENGTH = 200
ERROR_MESSAGE_LENGTH = 4000
ERROR_DETAILS_BYTES = 64 * 1024


def _check_backoff(instance: RetryPolicy, attribute: Any, value: tuple[float, ...]) -> None:
    if not value:
        raise ValidationError("backoff must be a non-empty sequence of delays")
    for delay in value:
        check_seconds("backoff delay", delay, allow_zero=True, context="RetryPolicy")


def _to_delays(value: Iterable[float]) -> tuple[float, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValidationError(f"backoff must be a sequence of delays, got {value!r:.80}")
    return tuple(value)


@attrs.frozen
class RetryPolicy:
    """Attempts for commands sent without their own `max_attempts`, and back-off delays.

    The delay after failed attempt k is `backoff[k - 1]`, the last one repeating.
    """

    validation_context: ClassVar[str] = "RetryPolicy"

    max_attempts: int = attrs.field(
        default=3, validator=checked_by(check_int_in_range, limit=MAX_ATTEMPTS_LIMIT)
    )
    backoff: tuple[float, ...] = attrs.field(
        default=(10.0, 60.0, 300.0), converter=_to_delays, validator=_check_backoff
    )

    def attempts_for(self, claim: ClaimedCommand) -> int:
        """The command's own `max_attempts`, else this policy's."""
        return claim.max_attempts or self.max_attempts

    def delay_after(self, attempt: int) -> float:
        return self.backoff[min(attempt, len(self.backoff)) - 1]


@attrs.frozen
class Returned:
    """The handler returned `value`."""

    value: object


@attrs.frozen
class Raised:
    """The handler raised `error`."""

    error: BaseException


@attrs.frozen
class TimedOut:
    """The handler ran past the worker's `handler_timeout` and was cancelled."""


@attrs.frozen
class NoHandler:
    """No handler is registered for the command's type."""


HandlerRun = Returned | Raised | TimedOut | NoHandler


def _error_details_json(details: Mapping[str, object] | None) -> str | None:
    """The handler's error details as JSON, encoded once here; text if they cannot be."""
    if details is None:
        return None
    try:
        return encode_payload("details", details, max_bytes=ERROR_DETAILS_BYTES)
    except ValidationError:
        fallback = {"unserialisable_details": storable_text(details, max_length=1000)}
        return encode_payload("details", fallback, max_bytes=ERROR_DETAILS_BYTES)


@attrs.frozen
class _Failure:
    """What is stored about a run that did not complete: type, code, message, details."""

    error_type: str
    code: str
    message: object
    details_json: str | None = None


def _failure(claim: ClaimedCommand, run: HandlerRun) -> _Failure:
    if isinstance(run, Raised) and isinstance(run.error, CommandHandlerError):
        error = run.error
        return _Failure(
            type(error).__name__, error.code, error.message, _error_details_json(error.details)
        )
    if isinstance(run, Raised):
        return _Failure(type(run.error).__name__, "UNHANDLED_EXCEPTION", run.error)
    if isinstance(run, TimedOut):
        return _Failure("HandlerTimeout", "HANDLER_TIMEOUT", "handler timed out")
    command = claim.command
    message = f"no handler registered for {command.domain!r}/{command.command_type!r}"
    return _Failure("HandlerNotFound", "NO_HANDLER", message)


def _failed_outcome(claim: ClaimedCommand, run: HandlerRun, policy: RetryPolicy) -> Outcome:
    error = run.error if isinstance(run, Raised) else None
    if isinstance(error, BusinessRuleError):
        return Outcome.BUSINESS_RULE_FAILED
    if isinstance(error, PermanentCommandError) or isinstance(run, NoHandler):
        return Outcome.MOVED_TO_TSQ
    if claim.attempt < policy.attempts_for(claim):
        return Outcome.RETRY_SCHEDULED
    return Outcome.RETRY_EXHAUSTED


def outcome_of(
    claim: ClaimedCommand,
    run: HandlerRun,
    policy: RetryPolicy,
    *,
    max_result_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    json_default: JsonDefault | None = None,
    duration: float = 0.0,
) -> HandlerResult:
    """The result to acknowledge for `run` of `claim` (the table in the module docstring),
    which took `duration` seconds. Error text is stored as PostgreSQL can store it
    (`storable_text`), never refused."""
    command = claim.command
    result = functools.partial(
        HandlerResult,
        domain=command.domain,
        command_id=command.command_id,
        lease_token=claim.lease_token,
        batch_id=command.batch_id,
        command_type=command.command_type,
        attempt=claim.attempt,
        duration=duration,
    )
    if isinstance(run, Returned):
        try:
            result_json = (
                None
                if run.value is None
                else encode_payload(
                    "handler result",
                    run.value,
                    max_bytes=max_result_bytes,
                    json_default=json_default,
                    context=f"domain {command.domain!r}, command {command.command_id}",
                )
            )
        except ValidationError as ex:
            outcome, failure = Outcome.MOVED_TO_TSQ, _Failure("InvalidResult", "INVALID_RESULT", ex)
        else:
            return result(outcome=Outcome.COMPLETED, result_json=result_json)
    else:
        outcome, failure = _failed_outcome(claim, run, policy), _failure(claim, run)
    return result(
        outcome=outcome,
        retry_delay=(
            policy.delay_after(claim.attempt) if outcome is Outcome.RETRY_SCHEDULED else None
        ),
        error_type=storable_text(failure.error_type, max_length=ERROR_NAME_LENGTH),
        error_code=storable_text(failure.code, max_length=ERROR_NAME_LENGTH),
        error_message=storable_text(failure.message, max_length=ERROR_MESSAGE_LENGTH),
        error_details_json=failure.details_json,
    )
