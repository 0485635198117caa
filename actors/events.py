"""Events: what happens in a runtime, for the application to observe (metrics, traces).

`runtime.events.subscribe(listener)` registers a function that is called inline, in the
task where the event happens, with one of the records below; it returns a function that
unsubscribes it. Events about writes come once they are committed (after the
application's transaction, for a `conn=` send or operator action). A listener must be
quick and must not block: it runs on the worker's path. What it raises is logged with
the event and goes no further. With no listener an event costs one test of `active`:
the code that emits one checks it before building the record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from uuid import UUID

import attrs

from triobus.persistence.errors import ValidationError
from triobus.persistence.records import BatchCounts, CommandStatus

if TYPE_CHECKING:
    from triobus.actors.transaction import Transaction

logger = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class CommandSent:
    """A command sent through the bus was stored: by `send` or `ctx.send`, or as a member
    by `create_batch` or `add_to_batch` (not the follow-ups and ticks the store sends)."""

    domain: str
    command_type: str
    command_id: UUID
    batch_id: UUID | None = None


@attrs.frozen(kw_only=True)
class CommandClaimed:
    """A worker claimed a command; `waited` is how long it had been claimable (seconds:
    since it was sent, its back-off ended, or its previous lease expired)."""

    domain: str
    command_type: str
    command_id: UUID
    attempt: int
    waited: float


@attrs.frozen(kw_only=True)
class LeaseExpired:
    """A command was claimed again because the lease of its previous attempt expired (the
    worker holding it stopped or died); `attempt` is the new one."""

    domain: str
    command_type: str
    command_id: UUID
    attempt: int


@attrs.frozen(kw_only=True)
class CommandFinished:
    """A handler run's result is written: `outcome` is what the handler's run led to
    (COMPLETED, BUSINESS_RULE_FAILED, RETRY_SCHEDULED, RETRY_EXHAUSTED, MOVED_TO_TSQ),
    `status` the command's status after it (CANCELED if its batch was canceled), and
    `duration` the handler's run in seconds."""

    domain: str
    command_type: str
    command_id: UUID
    attempt: int
    outcome: str
    status: CommandStatus
    duration: float


@attrs.frozen(kw_only=True)
class CommandRetried:
    """A failed attempt was scheduled to run again after `delay` seconds."""

    domain: str
    command_type: str
    command_id: UUID
    attempt: int
    delay: float


@attrs.frozen(kw_only=True)
class CommandMovedToTroubleshooting:
    """A command entered the troubleshooting queue, to wait for an operator."""

    domain: str
    command_type: str
    command_id: UUID
    attempt: int
    error_code: str | None


@attrs.frozen(kw_only=True)
class OperatorActed:
    """An operator's action, committed: `action` is retry, cancel, complete, retry_all,
    cancel_all, retry_batch or cancel_batch; `count` commands changed (`command_ids`:
    which, except for cancel_batch)."""

    action: str
    domain: str
    operator: str | None
    count: int
    command_ids: tuple[UUID, ...] = ()
    batch_id: UUID | None = None


@attrs.frozen(kw_only=True)
class BatchCompleted:
    """A batch completed in a statement of this runtime: a member's change (then `counts`
    are its final counts: COMPLETED_WITH_FAILURES if any member failed or was canceled),
    or `close_batch` or `cancel_batch` (`counts` None)."""

    domain: str
    batch_id: UUID
    counts: BatchCounts | None


@attrs.frozen(kw_only=True)
class BatchCallbackFailed:
    """A batch's `on_complete` callback raised or timed out (`error` says which)."""

    domain: str
    batch_id: UUID
    error: str


@attrs.frozen(kw_only=True)
class DatabaseUnavailable:
    """The runtime lost the database (once per outage): `error` is what it met."""

    error: str


@attrs.frozen(kw_only=True)
class DatabaseRecovered:
    """The database is reachable again, after an outage of `seconds`."""

    seconds: float


Event = (
    CommandSent
    | CommandClaimed
    | LeaseExpired
    | CommandFinished
    | CommandRetried
    | CommandMovedToTroubleshooting
    | OperatorActed
    | BatchCompleted
    | BatchCallbackFailed
    | DatabaseUnavailable
    | DatabaseRecovered
)
Listener = Callable[[Event], object]


class Events:
    """The runtime's listeners (see the module docstring)."""

    def __init__(self) -> None:
        self._listeners: tuple[Listener, ...] = ()
        self.active = False

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event)` for every event from now on; returns the unsubscriber."""
        if not callable(listener):
            raise ValidationError(f"listener must be callable, got {type(listener).__name__}")
        self._listeners += (listener,)
        self.active = True

        def unsubscribe() -> None:
            self._listeners = tuple(f for f in self._listeners if f is not listener)
            self.active = bool(self._listeners)

        return unsubscribe

    def emit(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("an event listener raised on %r", event)

    def emit_committed(self, events: Sequence[Event], transaction: Transaction | None) -> None:
        """Emit `events` now, or once `transaction` (the application's) has committed."""
        if transaction is None:
            for event in events:
                self.emit(event)
            return

        async def emit_all() -> None:
            for event in events:
                self.emit(event)

        transaction.after_commit(emit_all)
