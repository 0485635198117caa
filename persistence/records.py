"""The store's vocabulary: status enums and the records read from and written to it.

Enums are `StrEnum`s whose values are what the tables hold (the migrations' CHECK lists
are tested against them). Records are frozen attrs classes, built from rows with
`from_row` so that tests and callers can build them without rows.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime
from types import MappingProxyType
from typing import Any
from uuid import UUID

import attrs

from triobus.persistence.connection import Row


class CommandStatus(enum.StrEnum):
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    IN_TROUBLESHOOTING_QUEUE = "IN_TROUBLESHOOTING_QUEUE"

    @property
    def is_terminal(self) -> bool:
        """Terminal states are final: a command reaches one at most once (invariant 1)."""
        return self in (CommandStatus.COMPLETED, CommandStatus.FAILED, CommandStatus.CANCELED)


_COMMAND_STATUSES = MappingProxyType({status.value: status for status in CommandStatus})


class BatchStatus(enum.StrEnum):
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    COMPLETED_WITH_FAILURES = "COMPLETED_WITH_FAILURES"

    @property
    def is_final(self) -> bool:
        """A batch leaves IN_PROGRESS for a final status exactly once (invariant 3)."""
        return self in (BatchStatus.COMPLETED, BatchStatus.COMPLETED_WITH_FAILURES)


class AuditEventType(enum.StrEnum):
    SENT = "SENT"
    RECEIVED = "RECEIVED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    RETRY_SCHEDULED = "RETRY_SCHEDULED"
    RETRY_EXHAUSTED = "RETRY_EXHAUSTED"
    MOVED_TO_TSQ = "MOVED_TO_TSQ"
    BUSINESS_RULE_FAILED = "BUSINESS_RULE_FAILED"
    OPERATOR_RETRY = "OPERATOR_RETRY"
    OPERATOR_CANCEL = "OPERATOR_CANCEL"
    OPERATOR_COMPLETE = "OPERATOR_COMPLETE"
    CANCELED_WITH_BATCH = "CANCELED_WITH_BATCH"
    BATCH_STARTED = "BATCH_STARTED"
    BATCH_CLOSED = "BATCH_CLOSED"
    BATCH_CANCELED = "BATCH_CANCELED"
    BATCH_COMPLETED = "BATCH_COMPLETED"


class ReplyOutcome(enum.StrEnum):
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


@attrs.frozen
class SendResult:
    """What `send` stored: the command's key and the correlation id used everywhere."""

    domain: str
    command_id: UUID
    correlation_id: UUID


@attrs.frozen(kw_only=True)
class Command:
    """A command as its handler receives it. `trace_context` is the W3C trace context of
    the span that sent it (None: none was recorded)."""

    domain: str
    command_type: str
    command_id: UUID
    data: dict[str, Any]
    correlation_id: UUID
    reply_to: str | None
    batch_id: UUID | None
    trace_context: dict[str, str] | None = None

    @classmethod
    def from_row(cls, row: Row) -> Command:
        return cls(
            trace_context=row.get("trace_context"),
            domain=row["domain"],
            command_type=row["command_type"],
            command_id=row["command_id"],
            data=row["data"],
            correlation_id=row["correlation_id"],
            reply_to=row["reply_to"],
            batch_id=row["batch_id"],
        )


@attrs.frozen
class CommandError:
    """The last error a command's handler raised."""

    type: str
    code: str | None
    message: str | None
    details: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Row) -> CommandError | None:
        """The error stored on a command row, if any."""
        if row["error_type"] is None:
            return None
        return cls(
            type=row["error_type"],
            code=row["error_code"],
            message=row["error_message"],
            details=row["error_details"],
        )


@attrs.frozen(kw_only=True)
class CommandMetadata:
    """A command as stored. `max_attempts` is None when the worker's policy decides."""

    domain: str
    command_id: UUID
    command_type: str
    status: CommandStatus
    data: dict[str, Any]
    correlation_id: UUID
    reply_to: str | None
    batch_id: UUID | None
    attempts: int
    max_attempts: int | None
    result: dict[str, Any] | None
    last_error: CommandError | None
    visible_at: datetime
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None  # when it became terminal

    @classmethod
    def from_row(cls, row: Row) -> CommandMetadata:
        return cls(
            domain=row["domain"],
            command_id=row["command_id"],
            command_type=row["command_type"],
            status=CommandStatus(row["status"]),
            data=row["data"],
            correlation_id=row["correlation_id"],
            reply_to=row["reply_to"],
            batch_id=row["batch_id"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            result=row["result"],
            last_error=CommandError.from_row(row),
            visible_at=row["visible_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            finished_at=row["finished_at"],
        )


@attrs.frozen(kw_only=True)
class DomainStatistics:
    """How many commands of a domain are in each status, and how long the oldest
    runnable PENDING command has waited since it became visible (None: none waits)."""

    domain: str
    pending: int
    in_progress: int
    completed: int
    failed: int
    canceled: int
    in_troubleshooting_queue: int
    oldest_pending_seconds: float | None

    @classmethod
    def from_row(cls, row: Row) -> DomainStatistics:
        return cls(**{field.name: row[field.name] for field in attrs.fields(cls)})


@attrs.frozen(kw_only=True)
class TroubleshootingItem:
    """A command waiting in the TSQ for an operator; `entered_at` is when it moved there."""

    domain: str
    command_id: UUID
    command_type: str
    data: dict[str, Any]
    error_type: str | None
    error_code: str | None
    error_message: str | None
    error_details: dict[str, Any] | None
    attempts: int
    max_attempts: int | None
    correlation_id: UUID
    reply_to: str | None
    batch_id: UUID | None
    entered_at: datetime

    @classmethod
    def from_row(cls, row: Row) -> TroubleshootingItem:
        return cls(
            domain=row["domain"],
            command_id=row["command_id"],
            command_type=row["command_type"],
            data=row["data"],
            error_type=row["error_type"],
            error_code=row["error_code"],
            error_message=row["error_message"],
            error_details=row["error_details"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            correlation_id=row["correlation_id"],
            reply_to=row["reply_to"],
            batch_id=row["batch_id"],
            entered_at=row["updated_at"],
        )


@attrs.frozen(kw_only=True)
class AuditEvent:
    """One entry of the audit trail. `subject_id` is the command id (batch id for BATCH_*)."""

    audit_id: int
    domain: str
    subject_id: UUID
    event_type: AuditEventType
    details: dict[str, Any] | None
    occurred_at: datetime

    @classmethod
    def from_row(cls, row: Row) -> AuditEvent:
        return cls(
            audit_id=row["audit_id"],
            domain=row["domain"],
            subject_id=row["subject_id"],
            event_type=AuditEventType(row["event_type"]),
            details=row["details"],
            occurred_at=row["occurred_at"],
        )


@attrs.frozen(kw_only=True)
class Reply:
    """The one reply to a command sent with `reply_to`, written with its terminal state.

    `data` is the handler's result for SUCCESS, the error for FAILED, the reason for
    CANCELED.
    """

    reply_id: int
    queue: str
    domain: str
    command_id: UUID
    correlation_id: UUID
    outcome: ReplyOutcome
    data: dict[str, Any] | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Row) -> Reply:
        return cls(
            reply_id=row["reply_id"],
            queue=row["queue"],
            domain=row["domain"],
            command_id=row["command_id"],
            correlation_id=row["correlation_id"],
            outcome=ReplyOutcome(row["outcome"]),
            data=row["data"],
            created_at=row["created_at"],
        )


@attrs.frozen
class BatchCounts:
    """A batch's counts of members in each counted status (the rest are open: PENDING or
    IN_PROGRESS). The terminal counts never decrease; the troubleshooting count goes up
    and down."""

    completed: int
    failed: int
    canceled: int
    in_troubleshooting: int


class FollowUpEvent(enum.StrEnum):
    """When a batch's follow-up command is sent (the keys of `batch.follow_ups`)."""

    ON_COMPLETE = "ON_COMPLETE"  # the batch completes, whatever its members' outcomes
    ON_SUCCESS = "ON_SUCCESS"  # it completes as COMPLETED and was not canceled
    ON_FAILURE = "ON_FAILURE"  # a first member fails, is canceled or enters the TSQ

    @property
    def argument(self) -> str:
        """The `create_batch` argument that sets it."""
        return f"{self.lower()}_command"


@attrs.frozen
class FollowUpCommand:
    """A command `create_batch` stores with a batch, sent when its event happens (see
    `FollowUpEvent`) by the transaction in which it happens. It is an ordinary command of
    `domain`, whose data is `data` plus the key "batch": the batch's domain, id, status,
    counts and cancel, as of that transaction."""

    domain: str
    command_type: str
    data: dict[str, Any] | None = None
    max_attempts: int | None = None


@attrs.frozen(kw_only=True)
class BatchFollowUp:
    """A follow-up command as stored with its batch; `sent` if its event happened (then
    the command `(command.domain, command_id)` was written in that transaction)."""

    event: FollowUpEvent
    command: FollowUpCommand
    command_id: UUID
    sent: bool


@attrs.frozen(kw_only=True)
class BatchMetadata:
    """A batch and its counts, exact as of the read.

    `total_count = pending + in_progress + completed_count + failed_count +
    canceled_count + in_troubleshooting_count` at every commit. An open batch (`is_open`)
    takes more commands and never completes; a canceled one (`canceled_at` set) is
    closed, and its status says how its members ended.
    """

    domain: str
    batch_id: UUID
    name: str | None
    custom_data: dict[str, Any] | None
    status: BatchStatus
    total_count: int
    completed_count: int
    failed_count: int
    canceled_count: int
    in_troubleshooting_count: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    is_open: bool = False
    first_failure_at: datetime | None = None
    canceled_at: datetime | None = None
    canceled_by: str | None = None
    cancel_reason: str | None = None
    follow_ups: tuple[BatchFollowUp, ...] = ()

    @property
    def is_final(self) -> bool:
        return self.status.is_final

    @property
    def is_canceled(self) -> bool:
        return self.canceled_at is not None

    def follow_up(self, event: FollowUpEvent | str) -> BatchFollowUp | None:
        """The follow-up stored for `event`, if any."""
        return next((f for f in self.follow_ups if f.event == event), None)

    @property
    def counts(self) -> BatchCounts:
        return BatchCounts(
            self.completed_count,
            self.failed_count,
            self.canceled_count,
            self.in_troubleshooting_count,
        )

    @classmethod
    def from_row(cls, row: Row) -> BatchMetadata:
        return cls(
            domain=row["domain"],
            batch_id=row["batch_id"],
            name=row["name"],
            custom_data=row["custom_data"],
            status=BatchStatus(row["status"]),
            total_count=row["total_count"],
            completed_count=row["completed_count"],
            failed_count=row["failed_count"],
            canceled_count=row["canceled_count"],
            in_troubleshooting_count=row["in_troubleshooting_count"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            completed_at=row["completed_at"],
            is_open=row["is_open"],
            first_failure_at=row["first_failure_at"],
            canceled_at=row["canceled_at"],
            canceled_by=row["canceled_by"],
            cancel_reason=row["cancel_reason"],
            follow_ups=_follow_ups(row),
        )


def _follow_ups(row: Row) -> tuple[BatchFollowUp, ...]:
    """The follow-ups stored on a batch row, each with whether its event happened."""
    stored = row["follow_ups"] or {}
    status = BatchStatus(row["status"])
    happened = {
        FollowUpEvent.ON_COMPLETE: status.is_final,
        FollowUpEvent.ON_SUCCESS: status is BatchStatus.COMPLETED and row["canceled_at"] is None,
        FollowUpEvent.ON_FAILURE: row["first_failure_at"] is not None,
    }
    return tuple(
        BatchFollowUp(
            event=event,
            command=FollowUpCommand(
                domain=spec["domain"],
                command_type=spec["command_type"],
                data=spec["data"],
                max_attempts=spec["max_attempts"],
            ),
            command_id=UUID(spec["command_id"]),
            sent=happened[event],
        )
        for event in FollowUpEvent
        if (spec := stored.get(event.value)) is not None
    )


@attrs.frozen
class CommandChange:
    """A committed state change of one command; `batch_completed` if it completed its batch.

    `batch_counts` are its batch's counts as of the commit, when the change changed them.
    """

    domain: str
    command_id: UUID
    status: CommandStatus
    batch_id: UUID | None
    batch_completed: bool
    batch_counts: BatchCounts | None = None

    @classmethod
    def from_rows(cls, rows: Iterable[Row]) -> list[CommandChange]:
        """From the rows of a statement that ends with `batch_counts.select_changes`.

        The acker reads one per result it writes: the statuses are looked up in a table,
        and the counts of a batch, the same on each of its rows, are built once."""
        counts: dict[tuple[int, int, int, int], BatchCounts] = {}
        changes = []
        for row in rows:
            batch_counts = None
            if row["batch_completed_count"] is not None:
                key = (
                    row["batch_completed_count"],
                    row["batch_failed_count"],
                    row["batch_canceled_count"],
                    row["batch_in_troubleshooting_count"],
                )
                batch_counts = counts.get(key)
                if batch_counts is None:
                    batch_counts = counts[key] = BatchCounts(*key)
            changes.append(
                cls(
                    domain=row["domain"],
                    command_id=row["command_id"],
                    status=_COMMAND_STATUSES[row["status"]],
                    batch_id=row["batch_id"],
                    batch_completed=row["batch_completed"],
                    batch_counts=batch_counts,
                )
            )
        return changes


@attrs.frozen
class BatchCommand:
    """One command of a batch, as given to `create_batch` (validated like `send`'s)."""

    command_type: str
    command_id: UUID | str
    data: dict[str, Any]
    correlation_id: UUID | str | None = None
    reply_to: str | None = None
    max_attempts: int | None = None
    delay: float | None = None
    not_before: datetime | None = None
