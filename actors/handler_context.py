"""What a handler is given besides its command: the attempt, the bus, its transaction.

`ctx.send` and `ctx.create_batch` send follow-up commands. In a handler registered with
`transactional=True` they are written in the attempt's transaction (`ctx.conn`) and
commit with the command's completion, or not at all: exactly-once follow-ups. In any
other handler they are sent at once, on their own: if the attempt then fails and runs
again, they are sent again (at-least-once; a fixed `command_id` makes the second send a
`DuplicateCommandError` instead of a second command).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

import attrs

from triobus.actors.transaction import Transaction
from triobus.persistence.errors import InvalidOperationError
from triobus.persistence.records import BatchCommand, FollowUpCommand, SendResult

if TYPE_CHECKING:
    from triobus.actors.batch_actor import BatchCallback
    from triobus.actors.bus import CommandBus


@attrs.frozen
class HandlerContext:
    """Which attempt this is (1-based) out of how many; `bus`, the runtime's bus (None
    only for a handler pool run without one, in tests); `conn`, the attempt's
    transaction for a `transactional=True` handler, else None."""

    attempt: int
    max_attempts: int
    bus: CommandBus | None = None
    conn: Transaction | None = None

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
    ) -> SendResult:
        """`bus.send` in this attempt's transaction, if it has one (module docstring)."""
        return await self._bus().send(
            domain,
            command_type,
            command_id,
            data,
            correlation_id=correlation_id,
            reply_to=reply_to,
            max_attempts=max_attempts,
            delay=delay,
            not_before=not_before,
            conn=self.conn,
        )

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
    ) -> UUID:
        """`bus.create_batch` in this attempt's transaction, if it has one; `on_complete`
        is then registered only once the completion has committed."""
        return await self._bus().create_batch(
            domain,
            commands,
            batch_id=batch_id,
            name=name,
            custom_data=custom_data,
            on_complete=on_complete,
            on_complete_command=on_complete_command,
            on_success_command=on_success_command,
            on_failure_command=on_failure_command,
            open=open,
            conn=self.conn,
        )

    def _bus(self) -> CommandBus:
        if self.bus is None:
            raise InvalidOperationError("this handler runs without a bus: it cannot send")
        return self.bus
