"""The CommandBus: how an application sends and looks up commands."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from uuid import UUID

import trio

from triobus.actors.batch_actor import BatchCallback
from triobus.actors.batch_supervisor import BatchSupervisor
from triobus.actors.events import BatchCompleted, CommandSent, Events, OperatorActed
from triobus.actors.notifier import Notifier
from triobus.actors.transaction import (
    Transaction,
    joined,
    statement_connection,
)
from triobus.persistence import audit, batch_operations, batches, commands, replies
from triobus.persistence.json_values import JsonDefault
from triobus.persistence.new_commands import (
    NewCommand,
    checked_batch_key,
    new_batch,
    new_batch_commands,
    new_command,
)
from triobus.persistence.notifications import Channel
from triobus.persistence.pool import ConnectionPool
from triobus.persistence.records import (
    AuditEvent,
    BatchCommand,
    BatchMetadata,
    BatchStatus,
    CommandMetadata,
    CommandStatus,
    DomainStatistics,
    FollowUpCommand,
    Reply,
    SendResult,
)
from triobus.persistence.tracing import command_send_span, send_span
from triobus.persistence.validation import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    check_async_callable,
    check_aware_datetime,
    check_enum,
    check_int_in_range,
    check_limit_offset,
    check_max_payload_bytes,
    check_name,
    check_operator,
    check_optional_uuid,
    check_reason,
    check_reply_ids,
    check_seconds,
    check_uuid,
)


class CommandBus:
    """Sends and queries commands. Every method validates its arguments before any I/O.

    Sends are idempotent by `(domain, command_id)`: a second send of the same id raises
    `DuplicateCommandError` and writes nothing, also when the two sends race, for as long
    as the command is stored (retention removes finished commands: 7 days after they
    finished by default; then the id may be sent again).
    """

    def __init__(
        self,
        pool: ConnectionPool,
        notifier: Notifier,
        batches: BatchSupervisor,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        json_default: JsonDefault | None = None,
        events: Events | None = None,
    ) -> None:
        self._pool = pool
        self.events = Events() if events is None else events
        self.json_default = json_default
        self._notifier = notifier
        self._batches = batches
        self.max_payload_bytes = check_max_payload_bytes("max_payload_bytes", max_payload_bytes)

    async def send(
        self,
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
        conn: Transaction | None = None,
    ) -> SendResult:
        """Store a command and its SENT audit event in one transaction.

        A correlation id is generated when none is given; the same id is stored on the
        command, in its audit trail and in its reply. `max_attempts=None` leaves the
        number of attempts to the worker's retry policy. With `delay` (seconds) or
        `not_before` (an aware datetime) the command is not claimed before that time.
        With `conn` (from `runtime.transaction()`) the command is written in that
        transaction: invisible to workers until it commits, gone if it rolls back; a
        duplicate leaves it usable.
        """
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
            max_payload_bytes=self.max_payload_bytes,
            json_default=self.json_default,
        )
        transaction = joined(conn, self._pool, command.context)
        with command_send_span(command):
            async with statement_connection(self._pool, transaction) as connection:
                sent = await commands.insert_command(connection, command)
        if self.events.active:
            self._emit_sent([command], None, transaction)
        return sent

    def _emit_sent(
        self, sent: Sequence[NewCommand], batch_id: UUID | None, transaction: Transaction | None
    ) -> None:
        self.events.emit_committed(
            [
                CommandSent(
                    domain=c.domain,
                    command_type=c.command_type,
                    command_id=c.command_id,
                    batch_id=batch_id,
                )
                for c in sent
            ],
            transaction,
        )

    async def get_command(self, domain: str, command_id: UUID | str) -> CommandMetadata | None:
        """The command, or None if this domain has no command with this id."""
        checked_domain = check_name("domain", domain)
        checked_id = check_uuid("command_id", command_id, context=f"domain {checked_domain!r}")
        async with self._pool.connection() as conn:
            return await commands.select_command(conn, checked_domain, checked_id)

    async def query_commands(
        self,
        *,
        domain: str | None = None,
        status: CommandStatus | str | None = None,
        command_type: str | None = None,
        correlation_id: UUID | str | None = None,
        batch_id: UUID | str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[CommandMetadata]:
        """Commands matching every given filter, newest first."""
        checked_domain = None if domain is None else check_name("domain", domain)
        context = "all domains" if checked_domain is None else f"domain {checked_domain!r}"
        checked_status = None if status is None else check_enum("status", CommandStatus, status)
        checked_limit, checked_offset = check_limit_offset(limit, offset, context=context)
        checked_type = (
            None
            if command_type is None
            else check_name("command_type", command_type, context=context)
        )
        checked_correlation_id = check_optional_uuid(
            "correlation_id", correlation_id, context=context
        )
        checked_batch_id = check_optional_uuid("batch_id", batch_id, context=context)
        checked_after = (
            None if created_after is None else check_aware_datetime("created_after", created_after)
        )
        checked_before = (
            None
            if created_before is None
            else check_aware_datetime("created_before", created_before)
        )
        async with self._pool.connection() as conn:
            return await commands.select_commands(
                conn,
                domain=checked_domain,
                status=checked_status,
                command_type=checked_type,
                correlation_id=checked_correlation_id,
                batch_id=checked_batch_id,
                created_after=checked_after,
                created_before=checked_before,
                limit=checked_limit,
                offset=checked_offset,
            )

    async def domain_statistics(self, domain: str | None = None) -> list[DomainStatistics]:
        """Commands per status, and the oldest runnable PENDING command's wait, of
        `domain` or of every domain (one scan of their commands: for people)."""
        checked = None if domain is None else check_name("domain", domain)
        async with self._pool.connection() as conn:
            return await commands.select_domain_statistics(conn, checked)

    async def get_audit_trail(
        self, command_id: UUID | str, domain: str | None = None
    ) -> list[AuditEvent]:
        """Audit events of a command (or batch), in the order they happened."""
        checked_domain = None if domain is None else check_name("domain", domain)
        context = "all domains" if checked_domain is None else f"domain {checked_domain!r}"
        checked_id = check_uuid("command_id", command_id, context=context)
        async with self._pool.connection() as conn:
            return await audit.select_audit_trail(conn, checked_id, checked_domain)

    async def read_replies(self, queue: str, *, limit: int = 100) -> list[Reply]:
        """Unacknowledged replies of `queue`, oldest first."""
        checked_queue = check_name("queue", queue)
        checked_limit, _ = check_limit_offset(limit, 0, context=f"queue {checked_queue!r}")
        async with self._pool.connection() as conn:
            return await replies.select_replies(conn, checked_queue, limit=checked_limit)

    async def ack_replies(self, queue: str, reply_ids: Iterable[int]) -> int:
        """Delete acknowledged replies of `queue`; returns how many were deleted."""
        checked_queue = check_name("queue", queue)
        ids = check_reply_ids(reply_ids, context=f"queue {checked_queue!r}")
        async with self._pool.connection() as conn:
            return await replies.delete_replies(conn, checked_queue, ids)

    def iter_replies(
        self, queue: str, *, poll_interval: float = 5.0, batch_size: int = 100
    ) -> AsyncIterator[Reply]:
        """Yield each reply of `queue` once, waiting for new ones (NOTIFY, else polling).

        Yielded replies stay stored until `ack_replies`; this iterator does not yield the
        same reply twice, but a new iterator starts again from the oldest unacknowledged.
        Reply ids are not committed in order, so the iterator remembers what it yielded
        (forgetting what was acknowledged) instead of reading above the last id. The
        arguments are checked by this call, before the first iteration.
        """
        checked_queue = check_name("queue", queue)
        context = f"queue {checked_queue!r}"
        checked_limit = check_int_in_range("batch_size", batch_size, limit=10_000, context=context)
        poll = check_seconds("poll_interval", poll_interval, context=context)
        return self._replies_of(checked_queue, poll, checked_limit)

    async def _replies_of(
        self, checked_queue: str, poll: float, checked_limit: int
    ) -> AsyncIterator[Reply]:
        yielded: set[int] = set()
        with self._notifier.subscribe(Channel.REPLY, checked_queue) as hints:
            while True:
                async with self._pool.connection() as conn:
                    if len(yielded) >= 4 * checked_limit:
                        yielded = await replies.stored_reply_ids(conn, checked_queue, yielded)
                    found = await replies.select_replies(
                        conn, checked_queue, limit=checked_limit, skip=yielded
                    )
                for reply in found:
                    yielded.add(reply.reply_id)
                    yield reply
                if len(found) < checked_limit:
                    with trio.move_on_after(poll):
                        await hints.receive()

    async def create_batch(
        self,
        domain: str,
        commands: Iterable[BatchCommand],
        *,
        batch_id: UUID | str | None = None,
        name: str | None = None,
        custom_data: dict[str, object] | None = None,
        on_complete: BatchCallback | None = None,
        on_complete_command: FollowUpCommand | None = None,
        on_success_command: FollowUpCommand | None = None,
        on_failure_command: FollowUpCommand | None = None,
        open: bool = False,
        conn: Transaction | None = None,
    ) -> UUID:
        """Store a batch and all its commands in one transaction: all or nothing.

        Every command is validated as `send` validates it, before anything is written.
        An id repeated in the batch or already stored raises `DuplicateCommandError` and
        writes nothing. `on_complete(BatchMetadata)` is awaited once when the batch
        completes (see `Runtime.watch_batch`). Returns the batch id.

        The follow-up commands are durable: each is sent by the transaction in which its
        event happens (`FollowUpEvent`), at most once per batch, even if no process
        watches the batch. With `open=True` the batch may start empty and takes more
        commands (`add_to_batch`) until `close_batch`; it never completes while open.

        With `conn` (from `runtime.transaction()`) the batch is written in that
        transaction (a duplicate leaves it usable), and `on_complete` is registered only
        once it has committed: a batch that rolls back gets no callback.
        """
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
            max_payload_bytes=self.max_payload_bytes,
            json_default=self.json_default,
        )
        if on_complete is not None:
            check_async_callable("on_complete", on_complete, context=batch.context)
        transaction = joined(conn, self._pool, batch.context)
        with send_span(batch.domain, batch_id=batch.batch_id, count=len(batch.commands)):
            async with statement_connection(self._pool, transaction) as connection:
                await batches.store_batch(connection, batch)
        if self.events.active:
            self._emit_sent(batch.commands, batch.batch_id, transaction)
        if on_complete is not None:
            watch = functools.partial(
                self._batches.watch, batch.domain, batch.batch_id, on_complete
            )
            if transaction is None:
                await watch()
            else:
                transaction.after_commit(watch)
        return batch.batch_id

    async def add_to_batch(
        self,
        domain: str,
        batch_id: UUID | str,
        commands: Iterable[BatchCommand],
        *,
        conn: Transaction | None = None,
    ) -> None:
        """Add commands to an open batch, all or nothing, validated as `create_batch`
        validates them. Raises `BatchNotFoundError`, `InvalidOperationError` if the batch
        is closed (or canceled, or completed), `DuplicateCommandError` for a taken id."""
        checked_domain, checked_id, context = checked_batch_key(domain, batch_id)
        validated = new_batch_commands(
            checked_domain,
            checked_id,
            commands,
            max_payload_bytes=self.max_payload_bytes,
            json_default=self.json_default,
            context=context,
        )
        transaction = joined(conn, self._pool, context)
        with send_span(checked_domain, batch_id=checked_id, count=len(validated)):
            async with statement_connection(self._pool, transaction) as connection:
                await batch_operations.add_to_batch(
                    connection, checked_domain, checked_id, validated
                )
        if self.events.active:
            self._emit_sent(validated, checked_id, transaction)

    async def close_batch(
        self, domain: str, batch_id: UUID | str, *, conn: Transaction | None = None
    ) -> bool:
        """Close an open batch: it takes no more commands and completes when none of its
        members is open (in this transaction if none is now). Returns whether it
        completed. Raises `BatchNotFoundError`, or `InvalidOperationError` if it is
        closed already."""
        checked_domain, checked_id, context = checked_batch_key(domain, batch_id)
        transaction = joined(conn, self._pool, context)
        async with statement_connection(self._pool, transaction) as connection:
            completed = await batch_operations.close_batch(connection, checked_domain, checked_id)
        if completed and self.events.active:
            self._emit_completed(checked_domain, checked_id, transaction)
        return completed

    def _emit_completed(self, domain: str, batch_id: UUID, transaction: Transaction | None) -> None:
        """A batch closed or canceled to completion (its members' changes emit the rest)."""
        self.events.emit_committed(
            [BatchCompleted(domain=domain, batch_id=batch_id, counts=None)], transaction
        )

    async def cancel_batch(
        self,
        domain: str,
        batch_id: UUID | str,
        *,
        reason: str,
        operator: str | None = None,
        conn: Transaction | None = None,
    ) -> int:
        """Cancel a batch in one transaction: it is closed, and every member PENDING
        (also one waiting out a retry back-off) or in the troubleshooting queue is
        CANCELED, with a CANCELED_WITH_BATCH audit event and a CANCELED reply. Members
        running now finish and their outcome stands, except that one that would retry
        (or move to the TSQ) is canceled then. The batch completes as soon as none of its
        members is open; `BatchMetadata.canceled_at` and `cancel_reason` tell it from a
        batch that merely had failures, and no on_success follow-up is sent.

        Returns how many members were canceled. Raises `BatchNotFoundError`, or
        `InvalidOperationError` if the batch has completed or was canceled already (of
        two concurrent cancels, one wins)."""
        checked_domain, checked_id, context = checked_batch_key(domain, batch_id)
        checked_reason = check_reason(reason, context=context)
        checked_operator = check_operator(operator, context=context)
        transaction = joined(conn, self._pool, context)
        async with statement_connection(self._pool, transaction) as connection:
            canceled, completed = await batch_operations.cancel_batch(
                connection,
                checked_domain,
                checked_id,
                reason=checked_reason,
                operator=checked_operator,
            )
        if self.events.active:
            acted = OperatorActed(
                action="cancel_batch",
                domain=checked_domain,
                operator=checked_operator,
                count=canceled,
                batch_id=checked_id,
            )
            self.events.emit_committed([acted], transaction)
            if completed:
                self._emit_completed(checked_domain, checked_id, transaction)
        return canceled

    async def get_batch(self, domain: str, batch_id: UUID | str) -> BatchMetadata | None:
        """The batch with its counts, or None."""
        checked_domain = check_name("domain", domain)
        checked_id = check_uuid("batch_id", batch_id, context=f"domain {checked_domain!r}")
        async with self._pool.connection() as conn:
            return await batches.select_batch(conn, checked_domain, checked_id)

    async def list_batches(
        self,
        domain: str,
        *,
        status: BatchStatus | str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[BatchMetadata]:
        """Batches of `domain`, newest first."""
        checked_domain = check_name("domain", domain)
        checked_status = None if status is None else check_enum("status", BatchStatus, status)
        checked_limit, checked_offset = check_limit_offset(
            limit, offset, context=f"domain {checked_domain!r}"
        )
        async with self._pool.connection() as conn:
            return await batches.select_batches(
                conn,
                checked_domain,
                status=checked_status,
                limit=checked_limit,
                offset=checked_offset,
            )

    async def list_batch_commands(
        self,
        domain: str,
        batch_id: UUID | str,
        *,
        status: CommandStatus | str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[CommandMetadata]:
        """Commands of one batch (optionally in one status)."""
        checked_domain = check_name("domain", domain)
        checked_id = check_uuid("batch_id", batch_id, context=f"domain {checked_domain!r}")
        return await self.query_commands(
            domain=checked_domain,
            batch_id=checked_id,
            status=status,
            limit=limit,
            offset=offset,
        )
