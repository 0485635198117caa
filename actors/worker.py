"""The worker actor: runs the handlers of one domain, as a supervisor of small roles.

    claimer --(ClaimedCommand, buffer P)--> handler pool (N tasks)
        --(HandlerResult, buffer N)--> acker                  lease keeper (heartbeat)

* `Claimer` claims commands for idle handlers (plus P prefetched) within the room that
  `InFlight`, the worker's bookkeeping of what it holds, leaves;
* `HandlerPool` runs N handlers at a time and turns each run into a result (`outcomes`);
* `Acker` writes every waiting result in one statement, guarded by the lease tokens;
* `LeaseKeeper` extends the leases of held commands, and releases them when stopping.

Each role is started with `nursery.start` and is running when `start_worker` returns.

Stopping (`stop()`, or leaving the runtime) stops claiming, lets running handlers finish
within `grace_period`, then cancels them; once the acker has written what finished, every
claimed command without a result is released (visible at once, the attempt not counted).
Results that cannot be written (database down) hold the stop at most `RELEASE_TIMEOUT`
beyond the grace period, and the release then gives up after `RELEASE_TIMEOUT` more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import trio

from triobus.actors.acker import Acker
from triobus.actors.claimer import Claimer
from triobus.actors.events import Events
from triobus.actors.handler_pool import HandlerPool
from triobus.actors.handlers import HandlerRegistry
from triobus.actors.in_flight import InFlight
from triobus.actors.lease_keeper import RELEASE_TIMEOUT, LeaseKeeper
from triobus.actors.messages import AckMessage, OnChanges
from triobus.actors.notifier import Notifier
from triobus.actors.outcomes import RetryPolicy
from triobus.actors.transactional import TransactionSlots
from triobus.persistence.errors import ValidationError
from triobus.persistence.json_values import JsonDefault
from triobus.persistence.pool import ConnectionPool
from triobus.persistence.queue import ClaimedCommand
from triobus.persistence.validation import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    check_int_in_range,
    check_max_payload_bytes,
    check_name,
    check_optional_callable,
    check_optional_seconds,
    check_seconds,
    checked_by,
)

if TYPE_CHECKING:
    from triobus.actors.bus import CommandBus


def _check_retry_policy(options: WorkerOptions, attribute: Any, value: object) -> None:
    if not isinstance(value, RetryPolicy):
        raise ValidationError(
            f"retry_policy must be a RetryPolicy, got {type(value).__name__}"
            f" ({options.validation_context})"
        )


def _check_heartbeat_interval(options: WorkerOptions, attribute: Any, value: float | None) -> None:
    check_optional_seconds(attribute.name, value, context=options.validation_context)
    if value is not None and value >= options.visibility_timeout:
        raise ValidationError(
            f"heartbeat_interval ({value} s) must be shorter than visibility_timeout"
            f" ({options.visibility_timeout} s), or leases expire between heartbeats"
            f" ({options.validation_context})"
        )


@attrs.frozen(kw_only=True)
class WorkerOptions:
    """How a worker runs; validated when built (errors name the worker's domain).

    `concurrency` handlers run at once; `prefetch` commands may be claimed ahead of idle
    handlers. A claim's lease lasts `visibility_timeout` and is extended every
    `heartbeat_interval` (default: a third of the timeout). An idle worker polls every
    `poll_interval`. `handler_timeout` (None: none) bounds a handler run; `grace_period`
    the wait for running handlers when stopping. `max_result_bytes` bounds a result, and
    `json_default` encodes its values of types JSON and `json_values` do not cover.
    """

    # Checked in this order: the first bad one is reported.
    domain: str = attrs.field(
        validator=lambda options, attribute, value: check_name("domain", value)
    )
    retry_policy: RetryPolicy = attrs.field(factory=RetryPolicy, validator=_check_retry_policy)
    visibility_timeout: float = attrs.field(default=30.0, validator=checked_by(check_seconds))
    heartbeat_interval: float | None = attrs.field(
        default=None, validator=_check_heartbeat_interval
    )
    concurrency: int = attrs.field(
        default=8, validator=checked_by(check_int_in_range, limit=10_000)
    )
    prefetch: int = attrs.field(
        default=0, validator=checked_by(check_int_in_range, minimum=0, limit=10_000)
    )
    handler_timeout: float | None = attrs.field(
        default=None, validator=checked_by(check_optional_seconds)
    )
    poll_interval: float = attrs.field(default=5.0, validator=checked_by(check_seconds))
    grace_period: float = attrs.field(default=10.0, validator=checked_by(check_seconds))
    max_result_bytes: int = attrs.field(
        default=DEFAULT_MAX_PAYLOAD_BYTES, validator=checked_by(check_max_payload_bytes)
    )
    json_default: JsonDefault | None = attrs.field(
        default=None, validator=checked_by(check_optional_callable)
    )

    @property
    def validation_context(self) -> str:
        return f"worker of domain {self.domain!r}"

    @property
    def effective_heartbeat_interval(self) -> float:
        """`heartbeat_interval`, else a third of `visibility_timeout`."""
        if self.heartbeat_interval is None:
            return self.visibility_timeout / 3
        return self.heartbeat_interval


@attrs.frozen(kw_only=True)
class WorkerStatistics:
    """Counters since the worker started. `in_flight` counts claimed, unacknowledged
    commands, `running` those whose handler runs now; `claim_statements` and
    `ack_batches` count the statements run for them; `last_error` is the last error met,
    a handler's or the database's."""

    domain: str
    claim_statements: int
    claimed: int
    in_flight: int
    running: int
    completed: int
    failed: int
    retried: int
    moved_to_tsq: int
    canceled_with_batch: int
    discarded: int
    ack_batches: int
    last_error: str | None


class Worker:
    """Supervises the roles that run one domain's handlers (see the module docstring)."""

    def __init__(
        self,
        options: WorkerOptions,
        *,
        pool: ConnectionPool,
        registry: HandlerRegistry,
        notifier: Notifier,
        on_acked: OnChanges | None = None,
        bus: CommandBus | None = None,
        transactions: TransactionSlots | None = None,
        events: Events | None = None,
    ) -> None:
        """`bus` is what handlers send follow-ups with (`ctx.send`); `transactions` bounds
        the transactional handlers of the runtime (default: this pool's own slots);
        `events` hears of claims and results (`events.py`)."""
        self.options = options
        self.domain = options.domain
        self._in_flight = InFlight(options.concurrency, options.prefetch)
        self._last_error: str | None = None
        self._claimer = Claimer(
            domain=options.domain,
            pool=pool,
            notifier=notifier,
            in_flight=self._in_flight,
            visibility_timeout=options.visibility_timeout,
            default_max_attempts=options.retry_policy.max_attempts,
            poll_interval=options.poll_interval,
            claim_batch=max(1, options.concurrency // 2),
            note_error=self._note_error,
            events=events,
        )
        self._handlers = HandlerPool(
            domain=options.domain,
            registry=registry,
            in_flight=self._in_flight,
            concurrency=options.concurrency,
            retry_policy=options.retry_policy,
            handler_timeout=options.handler_timeout,
            max_result_bytes=options.max_result_bytes,
            json_default=options.json_default,
            bus=bus,
            transactions=TransactionSlots(pool) if transactions is None else transactions,
        )
        self._acker = Acker(
            domain=options.domain,
            pool=pool,
            in_flight=self._in_flight,
            on_acked=on_acked,
            note_error=self._note_error,
            events=events,
        )
        self._leases = LeaseKeeper(
            domain=options.domain,
            pool=pool,
            in_flight=self._in_flight,
            visibility_timeout=options.visibility_timeout,
            heartbeat_interval=options.effective_heartbeat_interval,
            note_error=self._note_error,
        )
        self._run_scope = trio.CancelScope()
        self._stopped = trio.Event()

    def _note_error(self, error: str) -> None:
        self._last_error = error

    def statistics(self) -> WorkerStatistics:
        acker = self._acker
        return WorkerStatistics(
            domain=self.domain,
            claim_statements=self._claimer.claim_statements,
            claimed=self._claimer.claimed,
            in_flight=len(self._in_flight),
            running=self._in_flight.running,
            completed=acker.completed,
            failed=acker.failed,
            retried=acker.retried,
            moved_to_tsq=acker.moved_to_tsq,
            canceled_with_batch=acker.canceled_with_batch,
            discarded=acker.discarded,
            ack_batches=acker.ack_batches,
            last_error=self._last_error,
        )

    async def stop(self, grace_period: float | None = None) -> None:
        """Stop claiming, let handlers finish within the grace period (the worker's, or
        `grace_period` if shorter: 0 cancels them at once), release the rest."""
        grace = self.options.grace_period
        if grace_period is not None:
            grace = min(grace, check_seconds("grace_period", grace_period, allow_zero=True))
        self._claimer.stop()
        self._handlers.stop(grace)
        # Results that cannot be written (database down) must not hold the stop forever.
        self._run_scope.deadline = min(
            self._run_scope.deadline, trio.current_time() + grace + RELEASE_TIMEOUT
        )
        await self._stopped.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        work_send, work_receive = trio.open_memory_channel[ClaimedCommand](self.options.prefetch)
        ack_send, ack_receive = trio.open_memory_channel[AckMessage](self.options.concurrency)
        try:
            with self._run_scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._leases.run)
                    async with trio.open_nursery() as pipeline:
                        await pipeline.start(self._acker.run, ack_receive)
                        await pipeline.start(self._handlers.run, work_receive, ack_send)
                        await pipeline.start(self._claimer.run, work_send)
                        task_status.started()
                    nursery.cancel_scope.cancel()  # the pipeline has drained: no more leases
        finally:  # also when cancelled from outside or crashing: claimed work is given back
            with trio.CancelScope(shield=True):
                await self._leases.release_all()
            self._stopped.set()
