"""Records read from and written to the store: frozen attrs classes built with `from_row`."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs

from triobus.persistence.driver import Row


class CommandStatus(enum.StrEnum):
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    IN_TROUBLESHOOTING_QUEUE = "IN_TROUBLESHOOTING_QUEUE"

    @property
    def is_terminal(self) -> bool:
        return self in (CommandStatus.COMPLETED, CommandStatus.FAILED, CommandStatus.CANCELED)


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
    BATCH_STARTED = "BATCH_STARTED"
    BATCH_COMPLETED = "BATCH_COMPLETED"


@attrs.frozen
class SendResult:
    """What `send` stored: the command's key and the correlation id used everywhere."""

    domain: str
    command_id: UUID
    correlation_id: UUID


@attrs.frozen
class CommandError:
    """The last error a command's handler raised."""

    type: str
    code: str | None
    message: str | None
    details: dict[str, Any] | None


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

    @classmethod
    def from_row(cls, row: Row) -> CommandMetadata:
        error = None
        if row["error_type"] is not None:
            error = CommandError(
                type=row["error_type"],
                code=row["error_code"],
                message=row["error_message"],
                details=row["error_details"],
            )
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
            last_error=error,
            visible_at=row["visible_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
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


class ReplyOutcome(enum.StrEnum):
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


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
class CommandChange:
    """A committed state change of one command; `batch_completed` if it completed its batch.

    `batch_counts` are its batch's (completed, failed, canceled, in_troubleshooting)
    counts as of the commit, when the change changed them.
    """

    domain: str
    command_id: UUID
    status: str
    batch_id: UUID | None
    batch_completed: bool
    batch_counts: tuple[int, int, int, int] | None = None

    @classmethod
    def from_row(cls, row: Row) -> CommandChange:
        return cls(
            domain=row["domain"],
            command_id=row["command_id"],
            status=row["status"],
            batch_id=row["batch_id"],
            batch_completed=row["batch_completed"],
            batch_counts=None
            if row["batch_completed_count"] is None
            else (
                row["batch_completed_count"],
                row["batch_failed_count"],
                row["batch_canceled_count"],
                row["batch_tsq_count"],
            ),
        )


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
