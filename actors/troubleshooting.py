"""The troubleshooting queue (TSQ): where commands that cannot succeed wait for an operator.

An operator retries a command (back to PENDING, attempts reset, visible at once),
cancels it (CANCELED, with a CANCELED reply) or completes it by hand (COMPLETED, with a
SUCCESS reply carrying `result_data`). Each single-command action is one transaction
that locks the row: of two operators acting on one command at once, exactly one
succeeds and the other gets `InvalidOperationError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from triobus.actors.events import Events, OperatorActed
from triobus.actors.messages import OnChanges
from triobus.actors.transaction import (
    Transaction,
    joined,
    statement_connection,
)
from triobus.persistence.batch_operations import lock_tsq_members
from triobus.persistence.errors import (
    BatchNotFoundError,
    CommandNotFoundError,
    InvalidOperationError,
)
from triobus.persistence.json_values import JsonDefault
from triobus.persistence.new_commands import checked_batch_key
from triobus.persistence.pool import ConnectionPool
from triobus.persistence.records import CommandChange, CommandStatus, TroubleshootingItem
from triobus.persistence.troubleshooting import (
    OperatorAction,
    apply_operator_action,
    count_troubleshooting,
    lock_batch,
    lock_command_status,
    select_troubleshooting,
)
from triobus.persistence.validation import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    check_limit_offset,
    check_name,
    check_operator,
    check_reason,
    check_uuid,
    encode_payload,
)


def _optional_type(command_type: str | None, domain: str) -> str | None:
    if command_type is None:
        return None
    return check_name("command_type", command_type, context=f"domain {domain!r}")


class TroubleshootingQueue:
    """Lists the TSQ and applies the operator's actions (see the module docstring)."""

    def __init__(
        self,
        pool: ConnectionPool,
        on_changed: OnChanges | None = None,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        json_default: JsonDefault | None = None,
        events: Events | None = None,
    ) -> None:
        self._events = Events() if events is None else events
        self._json_default = json_default
        self._pool = pool
        self._on_changed = on_changed
        self._max_payload_bytes = max_payload_bytes

    async def list_troubleshooting(
        self, domain: str, *, command_type: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[TroubleshootingItem]:
        """Commands of `domain` in the TSQ, the longest waiting first."""
        checked_domain = check_name("domain", domain)
        checked_type = _optional_type(command_type, checked_domain)
        checked_limit, checked_offset = check_limit_offset(
            limit, offset, context=f"domain {checked_domain!r}"
        )
        async with self._pool.connection() as conn:
            return await select_troubleshooting(
                conn,
                checked_domain,
                command_type=checked_type,
                limit=checked_limit,
                offset=checked_offset,
            )

    async def count_troubleshooting(self, domain: str, *, command_type: str | None = None) -> int:
        checked_domain = check_name("domain", domain)
        checked_type = _optional_type(command_type, checked_domain)
        async with self._pool.connection() as conn:
            return await count_troubleshooting(conn, checked_domain, command_type=checked_type)

    async def operator_retry(
        self,
        domain: str,
        command_id: UUID | str,
        *,
        data: dict[str, object] | None = None,
        operator: str | None = None,
        conn: Transaction | None = None,
    ) -> None:
        """Send a TSQ command back to PENDING with its attempts reset, visible now.

        With `data`, the command runs again with that data instead (checked as `send`
        checks it); the OPERATOR_RETRY audit event records whether it changed and the
        previous data, besides the operator.
        """
        checked_domain, checked_id, context = self._key(domain, command_id)
        data_json = self._encoded("data", data, context)
        await self._act_on_one(
            OperatorAction.RETRY,
            checked_domain,
            checked_id,
            operator=check_operator(operator, context=context),
            data_json=data_json,
            conn=joined(conn, self._pool, context),
        )

    async def operator_cancel(
        self,
        domain: str,
        command_id: UUID | str,
        reason: str,
        *,
        operator: str | None = None,
        conn: Transaction | None = None,
    ) -> None:
        """Cancel a TSQ command for good; its reply (if any) is CANCELED with `reason`."""
        checked_domain, checked_id, context = self._key(domain, command_id)
        await self._act_on_one(
            OperatorAction.CANCEL,
            checked_domain,
            checked_id,
            operator=check_operator(operator, context=context),
            reason=check_reason(reason, context=context),
            conn=joined(conn, self._pool, context),
        )

    async def operator_complete(
        self,
        domain: str,
        command_id: UUID | str,
        *,
        result_data: dict[str, object] | None = None,
        operator: str | None = None,
        conn: Transaction | None = None,
    ) -> None:
        """Complete a TSQ command by hand; its reply (if any) is SUCCESS with `result_data`."""
        checked_domain, checked_id, context = self._key(domain, command_id)
        result_json = self._encoded("result_data", result_data, context)
        await self._act_on_one(
            OperatorAction.COMPLETE,
            checked_domain,
            checked_id,
            operator=check_operator(operator, context=context),
            result_json=result_json,
            conn=joined(conn, self._pool, context),
        )

    async def retry_all(
        self,
        domain: str,
        *,
        command_type: str | None = None,
        operator: str | None = None,
        conn: Transaction | None = None,
    ) -> int:
        """Retry every TSQ command of `domain` (of one type, if given); returns the count."""
        checked_domain = check_name("domain", domain)
        context = f"domain {checked_domain!r}"
        return await self._act_on_all(
            OperatorAction.RETRY,
            checked_domain,
            _optional_type(command_type, checked_domain),
            operator=check_operator(operator, context=context),
            conn=joined(conn, self._pool, context),
        )

    async def cancel_all(
        self,
        domain: str,
        reason: str,
        *,
        command_type: str | None = None,
        operator: str | None = None,
        conn: Transaction | None = None,
    ) -> int:
        """Cancel every TSQ command of `domain` (of one type, if given); returns the count."""
        checked_domain = check_name("domain", domain)
        context = f"domain {checked_domain!r}"
        return await self._act_on_all(
            OperatorAction.CANCEL,
            checked_domain,
            _optional_type(command_type, checked_domain),
            operator=check_operator(operator, context=context),
            reason=check_reason(reason, context=context),
            conn=joined(conn, self._pool, context),
        )

    async def retry_batch(
        self,
        domain: str,
        batch_id: UUID | str,
        *,
        operator: str | None = None,
        conn: Transaction | None = None,
    ) -> int:
        """Retry every member of the batch that is in the TSQ, in one transaction (one
        OPERATOR_RETRY event each); returns the count. Raises `BatchNotFoundError`, or
        `InvalidOperationError` for a canceled batch."""
        checked_domain, checked_id, context = checked_batch_key(domain, batch_id)
        checked_operator = check_operator(operator, context=context)
        transaction = joined(conn, self._pool, context)
        async with (
            statement_connection(self._pool, transaction) as connection,
            connection.transaction(),
        ):
            await lock_tsq_members(connection, checked_domain, checked_id)
            canceled = await lock_batch(connection, checked_domain, checked_id)
            if canceled is None:
                raise BatchNotFoundError(checked_domain, checked_id)
            if canceled:
                raise InvalidOperationError(
                    f"batch {checked_id} in domain {checked_domain!r} was canceled:"
                    " retrying its members does not apply"
                )
            changed = await apply_operator_action(
                connection,
                OperatorAction.RETRY,
                checked_domain,
                batch_id=checked_id,
                operator=checked_operator,
            )
        self._notify(
            changed, transaction, "retry_batch", checked_domain, checked_operator, checked_id
        )
        return len(changed)

    def _encoded(self, kind: str, payload: object, context: str) -> str | None:
        """An operator's payload (None: none given), checked as a send's data is."""
        if payload is None:
            return None
        return encode_payload(
            kind,
            payload,
            max_bytes=self._max_payload_bytes,
            context=context,
            json_default=self._json_default,
        )

    @staticmethod
    def _key(domain: str, command_id: UUID | str) -> tuple[str, UUID, str]:
        checked_domain = check_name("domain", domain)
        checked_id = check_uuid("command_id", command_id, context=f"domain {checked_domain!r}")
        return checked_domain, checked_id, f"domain {checked_domain!r}, command {checked_id}"

    async def _act_on_one(
        self,
        action: OperatorAction,
        domain: str,
        command_id: UUID,
        *,
        operator: str | None,
        reason: str | None = None,
        result_json: str | None = None,
        data_json: str | None = None,
        conn: Transaction | None,
    ) -> None:
        # A transaction of its own, or a savepoint in the caller's (left usable if it fails).
        async with statement_connection(self._pool, conn) as connection, connection.transaction():
            status = await lock_command_status(connection, domain, command_id)
            if status is None:
                raise CommandNotFoundError(domain, command_id)
            if status is not CommandStatus.IN_TROUBLESHOOTING_QUEUE:
                raise InvalidOperationError(
                    f"command {command_id} in domain {domain!r} is {status}, not in the "
                    f"troubleshooting queue: operator {action.name.lower()} does not apply"
                )
            changed = await apply_operator_action(
                connection,
                action,
                domain,
                command_id=command_id,
                operator=operator,
                reason=reason,
                result_json=result_json,
                data_json=data_json,
            )
        self._notify(changed, conn, action.lower(), domain, operator)

    async def _act_on_all(
        self,
        action: OperatorAction,
        domain: str,
        command_type: str | None,
        *,
        operator: str | None,
        reason: str | None = None,
        conn: Transaction | None,
    ) -> int:
        async with statement_connection(self._pool, conn) as connection:
            changed = await apply_operator_action(
                connection,
                action,
                domain,
                command_type=command_type,
                operator=operator,
                reason=reason,
            )
        self._notify(changed, conn, f"{action.lower()}_all", domain, operator)
        return len(changed)

    def _notify(
        self,
        changed: Sequence[CommandChange],
        conn: Transaction | None,
        action: str,
        domain: str,
        operator: str | None,
        batch_id: UUID | None = None,
    ) -> None:
        """Hand the changes on once they are committed (now, or after `conn` commits), and
        emit the operator's `action`."""
        if self._events.active:
            acted = OperatorActed(
                action=action,
                domain=domain,
                operator=operator,
                count=len(changed),
                command_ids=tuple(c.command_id for c in changed),
                batch_id=batch_id,
            )
            self._events.emit_committed([acted], conn)
        on_changed = self._on_changed
        if on_changed is None or not changed:
            return
        if conn is None:
            on_changed(changed)
            return

        async def hand_on() -> None:
            on_changed(changed)

        conn.after_commit(hand_on)
