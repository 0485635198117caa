"""The triobus exception hierarchy.

Every error triobus raises on purpose derives from `TriobusError`; the errors a handler
raises to choose its command's outcome live beside the handlers (`actors/handlers.py`).
Messages name the domain and the id concerned. Errors caused by the caller (bad input, a
duplicate id) are kept apart from errors caused by the world (the database went away).
"""

from __future__ import annotations


class TriobusError(Exception):
    """Root of every error triobus raises on purpose."""


class ValidationError(TriobusError, ValueError):
    """An argument was rejected before anything was written."""


class DuplicateCommandError(TriobusError):
    """A command id is already stored in its domain (sends are idempotent by id)."""

    def __init__(self, domain: str, command_id: object) -> None:
        super().__init__(f"command {command_id} already exists in domain {domain!r}")
        self.domain = domain
        self.command_id = command_id


class DuplicateBatchError(TriobusError):
    """A batch id is already stored in its domain."""

    def __init__(self, domain: str, batch_id: object) -> None:
        super().__init__(f"batch {batch_id} already exists in domain {domain!r}")
        self.domain = domain
        self.batch_id = batch_id


class BatchNotFoundError(TriobusError):
    """No batch with this id exists in this domain."""

    def __init__(self, domain: str, batch_id: object) -> None:
        super().__init__(f"batch {batch_id} not found in domain {domain!r}")
        self.domain = domain
        self.batch_id = batch_id


class CommandNotFoundError(TriobusError):
    """No command with this id exists in this domain."""

    def __init__(self, domain: str, command_id: object) -> None:
        super().__init__(f"command {command_id} not found in domain {domain!r}")
        self.domain = domain
        self.command_id = command_id


class DatabaseError(TriobusError):
    """PostgreSQL reported an error; `sqlstate` is its SQLSTATE code when known."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class UniqueViolationError(DatabaseError):
    """A unique constraint refused a row; `constraint` names it."""

    def __init__(self, message: str, *, constraint: str | None) -> None:
        super().__init__(message, sqlstate="23505")
        self.constraint = constraint


class DatabaseUnavailableError(DatabaseError):
    """The connection was lost, or no connection could be made in time.

    `stale`: lost on a connection opened before the database last came back, so part of
    an outage that has already been logged as over.
    """

    stale = False


class InvalidOperationError(TriobusError):
    """The operation does not apply to the command (or batch) in its current state."""


class SchemaError(TriobusError, RuntimeError):
    """The schema or the migrations shipped with triobus are not as they must be."""
