"""The worker actor: runs the handlers of one domain.

Inside, three roles joined by bounded memory channels::

    claimer --(ClaimedCommand, buffer P)--> handler tasks (N) --(HandlerResult, buffer N)--> acker

* The claimer claims one command per idle handler in one statement: a handler is idle
  once its handler returned, before the acker wrote the result, so claims overlap the
  acker's writes. Claimed commands without a written result stay within
  N + P + max(N, 48) (`_MIN_ACK_ROOM`). When only a few handlers are idle it waits up to
  `_CLAIM_LINGER` for half of them, so claims stay large. When there is nothing to claim
  it waits for a NOTIFY hint (through the runtime's notifier), for capacity, or for
  `poll_interval`; an idle worker issues no other queries.
* With `prefetch` P the claimer also claims up to P commands beyond the idle handlers;
  they wait in the channel's buffer, their leases extended by the heartbeat like any
  claimed command's. That saves handlers waiting for a claim when handlers are short, at
  the price of holding commands another worker could start at once. Once stopping,
  handlers start no waiting command: it is released with the others.
* Each handler task runs one command at a time and turns what the handler did into a
  `HandlerResult` (`outcome_of`).
* The acker writes every result that is waiting in one statement, guarded by the claim's
  lease token: a late result for a lease that was lost changes nothing.
* The heartbeat extends the leases of claimed commands every `heartbeat_interval`.

Stopping (`stop()`, or leaving the runtime) stops claiming, lets running handlers finish
within `grace_period`, then cancels them; once the acker has written what finished, every
claimed command without a result is released (visible at once, the attempt not counted).
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext, suppress
from typing import Any
from uuid import UUID

import attrs
import trio
import trio_asyncio

from triobus.actors.handlers import Command, HandlerContext, HandlerRegistry
from triobus.actors.notifier import COMMAND_CHANNEL, Notifier
from triobus.persistence.driver import ConnectionPool
from triobus.persistence.errors import (
    BusinessRuleError,
    CommandHandlerError,
    DatabaseError,
    DatabaseUnavailableError,
    PermanentCommandError,
    ValidationError,
)
from triobus.persistence.queue import (
    ClaimedCommand,
    HandlerResult,
    Outcome,
    ack_if_claimed,
    claim_commands,
    extend_leases_if_claimed,
    release_if_claimed,
)
from triobus.persistence.records import CommandChange
from triobus.persistence.validation import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_ATTEMPTS_LIMIT,
    check_int_in_range,
    check_seconds,
    encode_payload,
    storable_text,
)

logger = logging.getLogger(__name__)

_MAX_ACK_BATCH = 500
_RELEASE_TIMEOUT = 10.0
_CLAIM_TIMEOUT = 10.0
_CLAIM_LINGER = 0.005
# Claimed commands whose handlers have finished, waiting for the acker, beyond the
# running ones: at least this many, so a small worker keeps claiming while the acker
# writes a batch (16 handlers: +25 % commands/s over twice the concurrency).
_MIN_ACK_ROOM = 48
_ERROR_NAME_LENGTH = 200
_ERROR_MESSAGE_LENGTH = 4000


def _check_backoff(instance: RetryPolicy, attribute: Any, value: tuple[float, ...]) -> None:
    if not value:
        raise ValidationError("backoff must be a non-empty sequence of delays")
    for delay in value:
        check_seconds("backoff delay", delay, allow_zero=True, context="RetryPolicy")


def _to_delays(value: Iterable[float]) -> tuple[float, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValidationError(f"backoff must be a sequence of delays, got {value!r:.80}")
    return tuple(value)


def _check_max_attempts(instance: RetryPolicy, attribute: Any, value: int) -> None:
    check_int_in_range("max_attempts", value, limit=MAX_ATTEMPTS_LIMIT, context="RetryPolicy")


@attrs.frozen
class RetryPolicy:
    """Attempts for commands sent without their own `max_attempts`, and back-off delays.

    The delay after failed attempt k is `backoff[k - 1]`, the last one repeating.
    """

    max_attempts: int = attrs.field(default=3, validator=_check_max_attempts)
    backoff: tuple[float, ...] = attrs.field(
        default=(10.0, 60.0, 300.0), converter=_to_delays, validator=_check_backoff
    )

    def delay_after(self, attempt: int) -> float:
        return self.backoff[min(attempt, len(self.backoff)) - 1]


@attrs.frozen(kw_only=True)
class WorkerStatistics:
    """Counters since the worker started. `in_flight` counts claimed, unacknowledged
    commands; `claim_statements` and `ack_batches` count the statements run for them."""

    domain: str
    claim_statements: int
    claimed: int
    in_flight: int
    completed: int
    failed: int
    retried: int
    moved_to_tsq: int
    discarded: int
    ack_batches: int
    last_error: str | None


@attrs.define
class _Counters:
    claim_statements: int = 0
    claimed: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    moved_to_tsq: int = 0
    discarded: int = 0
    ack_batches: int = 0
    last_error: str | None = None


def _error_details_json(details: Mapping[str, object] | None) -> str | None:
    """The handler's error details as JSON, encoded once here; text if they cannot be."""
    if details is None:
        return None
    try:
        return encode_payload("details", details, max_bytes=64 * 1024)
    except ValidationError:
        fallback = {"unserialisable_details": storable_text(details, max_length=1000)}
        return encode_payload("details", fallback, max_bytes=64 * 1024)


def outcome_of(
    claim: ClaimedCommand,
    max_attempts: int,
    policy: RetryPolicy,
    *,
    value: object = None,
    error: BaseException | None = None,
    timed_out: bool = False,
    max_result_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> HandlerResult:
    """Map what a handler did to its outcome (ARCHITECTURE §7), in one place.

    Business-rule errors fail the command; permanent errors and an invalid result go to
    the troubleshooting queue; anything else (a timeout included) is transient: retried
    after back-off while attempts remain, then moved to the troubleshooting queue.
    """
    result = functools.partial(
        HandlerResult,
        domain=claim.domain,
        command_id=claim.command_id,
        lease_token=claim.lease_token,
    )
    if error is None and not timed_out:
        try:
            result_json = (
                None
                if value is None
                else encode_payload(
                    "handler result",
                    value,
                    max_bytes=max_result_bytes,
                    context=f"domain {claim.domain!r}, command {claim.command_id}",
                )
            )
        except ValidationError as ex:
            return result(
                outcome=Outcome.MOVED_TO_TSQ,
                error_type="InvalidResult",
                error_code="INVALID_RESULT",
                error_message=str(ex),
            )
        return result(outcome=Outcome.COMPLETED, result_json=result_json)

    described: tuple[str, str, object, str | None]
    if isinstance(error, CommandHandlerError):
        described = (
            type(error).__name__,
            error.code,
            error.message,
            _error_details_json(error.details),
        )
    elif error is not None:
        described = (type(error).__name__, "UNHANDLED_EXCEPTION", error, None)
    else:
        described = ("HandlerTimeout", "HANDLER_TIMEOUT", "handler timed out", None)
    error_type, code, message, details = described
    error_type = storable_text(error_type, max_length=_ERROR_NAME_LENGTH)
    code = storable_text(code, max_length=_ERROR_NAME_LENGTH)
    message = storable_text(message, max_length=_ERROR_MESSAGE_LENGTH)

    if isinstance(error, BusinessRuleError):
        outcome, delay = Outcome.BUSINESS_RULE_FAILED, None
    elif isinstance(error, PermanentCommandError):
        outcome, delay = Outcome.MOVED_TO_TSQ, None
    elif claim.attempt < max_attempts:
        outcome, delay = Outcome.RETRY_SCHEDULED, policy.delay_after(claim.attempt)
    else:
        outcome, delay = Outcome.RETRY_EXHAUSTED, None
    return result(
        outcome=outcome,
        retry_delay=delay,
        error_type=error_type,
        error_code=code,
        error_message=message,
        error_details_json=details,
    )


class Worker:
    """Runs the handlers registered for one domain (see the module docstring)."""

    def __init__(
        self,
        *,
        domain: str,
        pool: ConnectionPool,
        registry: HandlerRegistry,
        notifier: Notifier,
        concurrency: int,
        prefetch: int = 0,
        visibility_timeout: float,
        retry_policy: RetryPolicy,
        handler_timeout: float | None,
        poll_interval: float,
        heartbeat_interval: float | None,
        grace_period: float,
        on_acked: Callable[[Sequence[CommandChange]], None] | None = None,
        max_result_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self.domain = domain
        self._pool = pool
        self._registry = registry
        self._notifier = notifier
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.visibility_timeout = visibility_timeout
        self.retry_policy = retry_policy
        self.handler_timeout = handler_timeout
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self._on_acked = on_acked
        self.max_result_bytes = max_result_bytes
        self._in_flight: dict[UUID, ClaimedCommand] = {}
        self._unfinished = 0  # claimed, their handler not yet finished
        self._claim_batch = max(1, concurrency // 2)
        self._max_in_flight = concurrency + prefetch + max(concurrency, _MIN_ACK_ROOM)
        self._counters = _Counters()
        self._claim_scope = trio.CancelScope()
        self._handler_scope = trio.CancelScope()
        self._run_scope = trio.CancelScope()
        self._capacity_send, self._capacity_receive = trio.open_memory_channel[None](1)
        self._stopped = trio.Event()

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(
            domain=self.domain, in_flight=len(self._in_flight), **attrs.asdict(self._counters)
        )

    async def stop(self) -> None:
        """Stop claiming, let handlers finish within the grace period, release the rest."""
        self._claim_scope.cancel()
        self._handler_scope.deadline = min(
            self._handler_scope.deadline, trio.current_time() + self.grace_period
        )
        # Results that cannot be written (database down) must not hold the stop forever.
        self._run_scope.deadline = min(
            self._run_scope.deadline, trio.current_time() + self.grace_period + _RELEASE_TIMEOUT
        )
        await self._stopped.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        work_send, work_receive = trio.open_memory_channel[ClaimedCommand](self.prefetch)
        ack_send, ack_receive = trio.open_memory_channel[HandlerResult](self.concurrency)
        try:
            with self._run_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._heartbeat)
                    async with trio.open_nursery() as pipeline:
                        pipeline.start_soon(self._acker, ack_receive)
                        pipeline.start_soon(self._run_handlers, work_receive, ack_send)
                        await pipeline.start(self._claimer, work_send)
                        task_status.started()
                    nursery.cancel_scope.cancel()
        finally:  # also when cancelled from outside or crashing: claimed work is given back
            with trio.CancelScope(shield=True):
                await self._release_unacknowledged()
            self._stopped.set()

    # -- claimer ------------------------------------------------------------------------

    async def _claimer(
        self,
        work_send: trio.MemorySendChannel[ClaimedCommand],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with work_send:
            with self._claim_scope, self._notifier.subscribe(COMMAND_CHANNEL, self.domain) as hints:
                task_status.started()
                while True:
                    free = self._free_capacity()
                    if 0 < free < self._claim_batch and self._in_flight:
                        await self._linger_for_capacity()
                        free = self._free_capacity()
                    claimed = await self._claim(free) if free > 0 else []
                    for claim in claimed:
                        await work_send.send(claim)
                    if len(claimed) < free or free == 0:
                        await self._wait_for_work(hints)

    def _free_capacity(self) -> int:
        """How many commands to claim now: one per idle handler plus `prefetch` waiting
        ones, so long as claimed commands (waiting, running, or finished and waiting for
        the acker) stay within `_max_in_flight`. A handler slot frees when its handler
        finishes, not when the result is written, so claiming overlaps the acker's writes."""
        return min(
            self.concurrency + self.prefetch - self._unfinished,
            self._max_in_flight - len(self._in_flight),
        )

    async def _linger_for_capacity(self) -> None:
        """Wait briefly for half the capacity to be free: fewer, larger claims."""
        with trio.move_on_after(_CLAIM_LINGER):
            while self._free_capacity() < self._claim_batch:
                await self._capacity_receive.receive()

    async def _claim(self, limit: int) -> list[ClaimedCommand]:
        """Claim up to `limit` commands and record them as in flight.

        Shielded: a claim that commits is recorded even if this task is cancelled
        meanwhile, so that stopping releases it (cancelled mid-statement, it would hold its
        commands until their leases expire and count an attempt that never ran). Bounded
        by `_CLAIM_TIMEOUT`: only a claim whose answer takes longer is left to its lease.
        """
        try:
            with trio.CancelScope(shield=True), trio.fail_after(_CLAIM_TIMEOUT):
                async with self._pool.connection() as conn:
                    claimed = await claim_commands(
                        conn,
                        self.domain,
                        limit=limit,
                        visibility_timeout=self.visibility_timeout,
                        default_max_attempts=self.retry_policy.max_attempts,
                    )
        except DatabaseError as ex:
            self._counters.last_error = f"claim failed: {ex}"
            self._pool.outage.report(ex, f"worker {self.domain!r} could not claim")
            return []
        except trio.TooSlowError:  # an unreachable database, as far as this worker can tell
            silent = DatabaseUnavailableError(f"no answer within {_CLAIM_TIMEOUT:.0f} s")
            self._counters.last_error = f"claim failed: {silent}"
            self._pool.outage.report(silent, f"worker {self.domain!r} could not claim")
            return []
        self._counters.claim_statements += 1
        for claim in claimed:
            self._in_flight[claim.command_id] = claim
            logger.debug("claimed %s/%s attempt %d", self.domain, claim.command_id, claim.attempt)
        self._counters.claimed += len(claimed)
        self._unfinished += len(claimed)
        return claimed

    async def _wait_for_work(self, hints: trio.MemoryReceiveChannel[None]) -> None:
        """Wait for a NOTIFY hint, freed capacity, or the poll interval."""
        with trio.move_on_after(self.poll_interval):
            async with trio.open_nursery() as nursery:

                async def first_of(receive: trio.MemoryReceiveChannel[None]) -> None:
                    await receive.receive()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(first_of, hints)
                nursery.start_soon(first_of, self._capacity_receive)

    # -- handlers -----------------------------------------------------------------------

    async def _run_handlers(
        self,
        work_receive: trio.MemoryReceiveChannel[ClaimedCommand],
        ack_send: trio.MemorySendChannel[HandlerResult],
    ) -> None:
        async with work_receive, ack_send:
            with self._handler_scope:
                async with trio.open_nursery() as nursery:
                    for _ in range(self.concurrency):
                        nursery.start_soon(
                            self._handler_task, work_receive.clone(), ack_send.clone()
                        )

    async def _handler_task(
        self,
        work_receive: trio.MemoryReceiveChannel[ClaimedCommand],
        ack_send: trio.MemorySendChannel[HandlerResult],
    ) -> None:
        async with work_receive, ack_send:
            async for claim in work_receive:
                if self._claim_scope.cancel_called:
                    continue  # stopping: a prefetched command not started yet is released
                result = await self._handle(claim)
                self._unfinished -= 1
                with suppress(trio.WouldBlock):
                    self._capacity_send.send_nowait(None)
                await ack_send.send(result)

    async def _handle(self, claim: ClaimedCommand) -> HandlerResult:
        max_attempts = claim.max_attempts or self.retry_policy.max_attempts
        handler = self._registry.get(self.domain, claim.command_type)
        if handler is None:
            return HandlerResult(
                domain=claim.domain,
                command_id=claim.command_id,
                lease_token=claim.lease_token,
                outcome=Outcome.MOVED_TO_TSQ,
                error_type="HandlerNotFound",
                error_code="NO_HANDLER",
                error_message=f"no handler registered for {self.domain!r}/{claim.command_type!r}",
            )
        command = Command(
            domain=claim.domain,
            command_type=claim.command_type,
            command_id=claim.command_id,
            data=claim.data,
            correlation_id=claim.correlation_id,
            reply_to=claim.reply_to,
            batch_id=claim.batch_id,
        )
        context = HandlerContext(attempt=claim.attempt, max_attempts=max_attempts)
        deadline = (
            nullcontext()
            if self.handler_timeout is None
            else trio.move_on_after(self.handler_timeout)
        )
        try:
            with deadline as scope:
                if handler.runs_on_asyncio:
                    value = await trio_asyncio.aio_as_trio(handler.fn)(command, context)
                else:
                    value = await handler.fn(command, context)
        except (KeyboardInterrupt, SystemExit):
            raise  # the process is asked to stop (Ctrl-C lands in running code): it does
        except BaseException as ex:  # however else a handler fails, it is its command's failure
            await trio.lowlevel.checkpoint_if_cancelled()  # unless this worker is stopping
            return outcome_of(claim, max_attempts, self.retry_policy, error=ex)
        if scope is not None and scope.cancelled_caught:
            return outcome_of(claim, max_attempts, self.retry_policy, timed_out=True)
        return outcome_of(
            claim,
            max_attempts,
            self.retry_policy,
            value=value,
            max_result_bytes=self.max_result_bytes,
        )

    # -- acker --------------------------------------------------------------------------

    async def _acker(self, ack_receive: trio.MemoryReceiveChannel[HandlerResult]) -> None:
        async with ack_receive:
            while True:
                try:
                    batch = [await ack_receive.receive()]
                except trio.EndOfChannel:
                    return
                while len(batch) < _MAX_ACK_BATCH:
                    try:
                        batch.append(ack_receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await self._write(batch)

    async def _write(self, batch: list[HandlerResult]) -> None:
        acked = await self._ack_with_retry(batch)
        self._counters.ack_batches += 1
        acked_ids = {a.command_id for a in acked}
        for result in batch:
            claim = self._in_flight.get(result.command_id)
            if claim is not None and claim.lease_token == result.lease_token:
                del self._in_flight[result.command_id]  # not a newer claim of the same command
            if result.command_id not in acked_ids:
                self._counters.discarded += 1
                logger.info(
                    "discarded a late result for %s/%s: its lease was lost",
                    result.domain,
                    result.command_id,
                )
        for result in batch:
            if result.command_id in acked_ids:
                self._count(result)
        with suppress(trio.WouldBlock):
            self._capacity_send.send_nowait(None)
        if self._on_acked is not None and acked:
            self._on_acked(acked)

    def _count(self, result: HandlerResult) -> None:
        outcome = result.outcome
        logger.debug("%s/%s -> %s", result.domain, result.command_id, outcome.event)
        if outcome is Outcome.COMPLETED:
            self._counters.completed += 1
            return
        self._counters.last_error = f"{result.error_code}: {result.error_message}"
        logger.warning(
            "%s/%s %s: %s: %s",
            result.domain,
            result.command_id,
            outcome.event,
            result.error_code,
            result.error_message,
        )
        if outcome is Outcome.RETRY_SCHEDULED:
            self._counters.retried += 1
        elif outcome is Outcome.BUSINESS_RULE_FAILED:
            self._counters.failed += 1
        else:
            self._counters.moved_to_tsq += 1

    async def _ack_with_retry(self, batch: list[HandlerResult]) -> list[CommandChange]:
        """Write results; retry while the database is unreachable (leases guard late writes).

        A batch the database refuses for another reason is split, so one bad result
        cannot hold back the others; a single refused result is logged and dropped (its
        lease expires and the command is claimed again).
        """
        delay = 0.05
        while True:
            try:
                async with self._pool.connection() as conn:
                    return await ack_if_claimed(conn, batch)
            except DatabaseUnavailableError as ex:
                self._counters.last_error = f"ack failed: {ex}"
                self._pool.outage.report(ex, f"worker {self.domain!r} could not write results")
                await trio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 5.0)
            except DatabaseError as ex:
                if len(batch) == 1:
                    self._counters.last_error = f"ack refused: {ex}"
                    logger.error(
                        "result for %s/%s refused by the database: %s",
                        batch[0].domain,
                        batch[0].command_id,
                        ex,
                    )
                    return []
                acked: list[CommandChange] = []
                for result in batch:
                    acked += await self._ack_with_retry([result])
                return acked

    # -- leases -------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        if self.heartbeat_interval is None:
            return
        while True:
            await trio.sleep(self.heartbeat_interval)
            claims = list(self._in_flight.values())
            if not claims:
                continue
            try:
                async with self._pool.connection() as conn:
                    await extend_leases_if_claimed(
                        conn, self.domain, claims, self.visibility_timeout
                    )
            except DatabaseError as ex:
                self._counters.last_error = f"heartbeat failed: {ex}"
                self._pool.outage.report(ex, f"worker {self.domain!r} could not extend leases")

    async def _release_unacknowledged(self) -> None:
        claims = list(self._in_flight.values())
        if not claims:
            return
        try:
            with trio.fail_after(_RELEASE_TIMEOUT):
                async with self._pool.connection() as conn:
                    released = await release_if_claimed(conn, self.domain, claims)
            logger.info("worker %r released %d unacknowledged commands", self.domain, released)
        except (DatabaseError, trio.TooSlowError) as ex:
            logger.warning(
                "worker %r could not release %d commands (their leases will expire): %s",
                self.domain,
                len(claims),
                ex,
            )
        self._in_flight.clear()
