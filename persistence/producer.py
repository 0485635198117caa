"""Sending commands from code that does not run on Trio: sync and asyncio producers that
write on the application's own psycopg 3 connection.

    import psycopg
    from triobus.persistence import producer

    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute("INSERT INTO orders (id) VALUES (%s)", (order_id,))
        producer.send(conn, "shop", "ShipOrder", uuid.uuid4(), {"order": str(order_id)})
    # committed: the order and its command together; Trio workers wake on the commit

`send` and `create_batch` take a `psycopg.Connection`; `send_async` and
`create_batch_async` a `psycopg.AsyncConnection`. They run the statements, validation,
audit rows and NOTIFY of `bus.send` and `bus.create_batch` (the same code: the statements
are written against the `Connection` seam, which the two adapters here implement). They
never commit or roll back the caller's connection: inside its transaction the command
commits with it; in autocommit mode a send commits at once and a batch in a transaction
of its own. A duplicate raises `DuplicateCommandError` and leaves the caller's
transaction usable (a send inserts with ON CONFLICT, a batch runs in a savepoint). A
connection that is closed, busy or in a failed transaction gets a `ValidationError`
before anything is written. This module imports no Trio and none of the runtime.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import psycopg

from triobus.persistence.batch_operations import add_to_batch as store_added
from triobus.persistence.batch_operations import close_batch as store_closed
from triobus.persistence.batches import store_batch
from triobus.persistence.commands import insert_command
from triobus.persistence.connection import (
    AsyncPsycopgConnection,
    Connection,
    Params,
    ParamSet,
    Row,
    TransactionState,
    copy_rows_sync,
    execute_many_sync,
    execute_sync,
    fetch_all_sync,
    transaction_state_of,
    translated_errors,
)
from triobus.persistence.errors import (
    DatabaseError,
    DatabaseUnavailableError,
    DuplicateBatchError,
    DuplicateCommandError,
    TriobusError,
    ValidationError,
)
from triobus.persistence.json_values import JsonDefault
from triobus.persistence.new_commands import (
    NewCommand,
    checked_batch_key,
    new_batch,
    new_batch_commands,
    new_command,
    new_command_id,
)
from triobus.persistence.records import BatchCommand, FollowUpCommand, SendResult
from triobus.persistence.tracing import command_send_span, send_span
from triobus.persistence.validation import DEFAULT_MAX_PAYLOAD_BYTES

__all__ = [
    "BatchCommand",
    "FollowUpCommand",
    "DatabaseError",
    "DatabaseUnavailableError",
    "DuplicateBatchError",
    "DuplicateCommandError",
    "SendResult",
    "TriobusError",
    "ValidationError",
    "add_to_batch",
    "add_to_batch_async",
    "close_batch",
    "close_batch_async",
    "create_batch",
    "create_batch_async",
    "new_command_id",
    "send",
    "send_async",
]

T = TypeVar("T")


def _check_connection(
    conn: object, kind: type[psycopg.Connection[Any] | psycopg.AsyncConnection[Any]], context: str
) -> None:
    if not isinstance(conn, kind):
        raise ValidationError(
            f"conn must be a {kind.__module__}.{kind.__name__}, got {type(conn).__name__}"
            f" ({context})"
        )
    state = transaction_state_of(conn)
    if state not in (TransactionState.IDLE, TransactionState.IN_TRANSACTION):
        raise ValidationError(f"conn is {state}{state.why_unusable} ({context})")


class _SyncConnection(Connection):
    """A `psycopg.Connection` behind the seam: each await completes without suspending,
    so a statement function runs to its end in one step (`_completed`)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = None) -> int:
        return execute_sync(self._conn, sql, params)

    async def fetch_all(self, sql: str, params: Params = None) -> list[Row]:
        return fetch_all_sync(self._conn, sql, params)

    async def execute_many(self, sql: str, params_seq: Iterable[ParamSet]) -> None:
        execute_many_sync(self._conn, sql, params_seq)

    async def copy_rows(
        self, sql: str, rows: Iterable[Sequence[Any]], *, types: Sequence[str] | None = None
    ) -> None:
        copy_rows_sync(self._conn, sql, rows, types)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SyncConnection]:
        """psycopg's own: a savepoint inside a transaction, else BEGIN ... COMMIT."""
        with translated_errors(), self._conn.transaction():
            yield self


class _AsyncioConnection(AsyncPsycopgConnection):
    """A `psycopg.AsyncConnection` behind the seam."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_AsyncioConnection]:
        """psycopg's own: a savepoint inside a transaction, else BEGIN ... COMMIT."""
        with translated_errors():
            async with self._conn.transaction():
                yield self


def _completed(statement: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never suspends (it awaits only `_SyncConnection`)."""
    try:
        statement.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    statement.close()
    raise AssertionError("a statement on a sync connection suspended")


def send(
    conn: psycopg.Connection[Any],
    domain: str,
    command_type: str,
    command_id: UUID | str,
    data: dict[str, object],
    *,
    correlation_id: UUID | str | None = None,
    reply_to: str | None = None,
    max_attempts: int | None = None,
    delay: float | None = None,
    not_before: datetime | None = None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    json_default: JsonDefault | None = None,
) -> SendResult:
    """`bus.send` on the caller's sync connection (see the module docstring)."""
    command = new_command(
        domain,
        command_type,
        command_id,
        data,
        correlation_id=correlation_id,
        reply_to=reply_to,
        max_attempts=max_attempts,
        delay=delay,
        not_before=not_before,
        max_payload_bytes=max_payload_bytes,
        json_default=json_default,
    )
    _check_connection(conn, psycopg.Connection, command.context)
    with command_send_span(command):
        return _completed(insert_command(_SyncConnection(conn), command))


async def send_async(
    conn: psycopg.AsyncConnection[Any],
    domain: str,
    command_type: str,
    command_id: UUID | str,
    data: dict[str, object],
    *,
    correlation_id: UUID | str | None = None,
    reply_to: str | None = None,
    max_attempts: int | None = None,
    delay: float | None = None,
    not_before: datetime | None = None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    json_default: JsonDefault | None = None,
) -> SendResult:
    """`bus.send` on the caller's asyncio connection (see the module docstring)."""
    command = new_command(
        domain,
        command_type,
        command_id,
        data,
        correlation_id=correlation_id,
        reply_to=reply_to,
        max_attempts=max_attempts,
        delay=delay,
        not_before=not_before,
        max_payload_bytes=max_payload_bytes,
        json_default=json_default,
    )
    _check_connection(conn, psycopg.AsyncConnection, command.context)
    with command_send_span(command):
        return await insert_command(_AsyncioConnection(conn), command)


def create_batch(
    conn: psycopg.Connection[Any],
    domain: str,
    commands: Iterable[BatchCommand],
    *,
    batch_id: UUID | str | None = None,
    name: str | None = None,
    custom_data: dict[str, object] | None = None,
    on_complete_command: FollowUpCommand | None = None,
    on_success_command: FollowUpCommand | None = None,
    on_failure_command: FollowUpCommand | None = None,
    open: bool = False,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    json_default: JsonDefault | None = None,
) -> UUID:
    """`bus.create_batch` on the caller's sync connection, without a callback (a worker
    process's batch actors, or `get_batch`, follow it; the follow-up commands are
    durable). Returns the batch id."""
    batch = new_batch(
        domain,
        commands,
        batch_id=batch_id,
        name=name,
        custom_data=custom_data,
        on_complete_command=on_complete_command,
        on_success_command=on_success_command,
        on_failure_command=on_failure_command,
        open=open,
        max_payload_bytes=max_payload_bytes,
        json_default=json_default,
    )
    _check_connection(conn, psycopg.Connection, batch.context)
    with send_span(batch.domain, batch_id=batch.batch_id, count=len(batch.commands)):
        _completed(store_batch(_SyncConnection(conn), batch))
    return batch.batch_id


async def create_batch_async(
    conn: psycopg.AsyncConnection[Any],
    domain: str,
    commands: Iterable[BatchCommand],
    *,
    batch_id: UUID | str | None = None,
    name: str | None = None,
    custom_data: dict[str, object] | None = None,
    on_complete_command: FollowUpCommand | None = None,
    on_success_command: FollowUpCommand | None = None,
    on_failure_command: FollowUpCommand | None = None,
    open: bool = False,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    json_default: JsonDefault | None = None,
) -> UUID:
    """`create_batch` on the caller's asyncio connection."""
    batch = new_batch(
        domain,
        commands,
        batch_id=batch_id,
        name=name,
        custom_data=custom_data,
        on_complete_command=on_complete_command,
        on_success_command=on_success_command,
        on_failure_command=on_failure_command,
        open=open,
        max_payload_bytes=max_payload_bytes,
        json_default=json_default,
    )
    _check_connection(conn, psycopg.AsyncConnection, batch.context)
    with send_span(batch.domain, batch_id=batch.batch_id, count=len(batch.commands)):
        await store_batch(_AsyncioConnection(conn), batch)
    return batch.batch_id


def _added(
    domain: str,
    batch_id: UUID | str,
    commands: Iterable[BatchCommand],
    max_payload_bytes: int,
    json_default: JsonDefault | None,
) -> tuple[str, UUID, str, list[NewCommand]]:
    checked_domain, checked_id, context = checked_batch_key(domain, batch_id)
    validated = new_batch_commands(
        checked_domain,
        checked_id,
        commands,
        max_payload_bytes=max_payload_bytes,
        json_default=json_default,
        context=context,
    )
    return checked_domain, checked_id, context, validated


def add_to_batch(
    conn: psycopg.Connection[Any],
    domain: str,
    batch_id: UUID | str,
    commands: Iterable[BatchCommand],
    *,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    json_default: JsonDefault | None = None,
) -> None:
    """`bus.add_to_batch` on the caller's sync connection."""
    checked_domain, checked_id, context, validated = _added(
        domain, batch_id, commands, max_payload_bytes, json_default
    )
    _check_connection(conn, psycopg.Connection, context)
    with send_span(checked_domain, batch_id=checked_id, count=len(validated)):
        _completed(store_added(_SyncConnection(conn), checked_domain, checked_id, validated))


async def add_to_batch_async(
    conn: psycopg.AsyncConnection[Any],
    domain: str,
    batch_id: UUID | str,
    commands: Iterable[BatchCommand],
    *,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    json_default: JsonDefault | None = None,
) -> None:
    """`add_to_batch` on the caller's asyncio connection."""
    checked_domain, checked_id, context, validated = _added(
        domain, batch_id, commands, max_payload_bytes, json_default
    )
    _check_connection(conn, psycopg.AsyncConnection, context)
    with send_span(checked_domain, batch_id=checked_id, count=len(validated)):
        await store_added(_AsyncioConnection(conn), checked_domain, checked_id, validated)


def close_batch(conn: psycopg.Connection[Any], domain: str, batch_id: UUID | str) -> bool:
    """`bus.close_batch` on the caller's sync connection: whether the batch completed."""
    checked_domain, checked_id, context = checked_batch_key(domain, batch_id)
    _check_connection(conn, psycopg.Connection, context)
    return _completed(store_closed(_SyncConnection(conn), checked_domain, checked_id))


async def close_batch_async(
    conn: psycopg.AsyncConnection[Any], domain: str, batch_id: UUID | str
) -> bool:
    """`close_batch` on the caller's asyncio connection."""
    checked_domain, checked_id, context = checked_batch_key(domain, batch_id)
    _check_connection(conn, psycopg.AsyncConnection, context)
    return await store_closed(_AsyncioConnection(conn), checked_domain, checked_id)
