"""The runtime: one per process. It owns the pool, the notifier and the actors' nursery.

    open_runtime(dsn)                 supervisor nursery
     ├─ notifier                      one LISTEN connection, hints fanned out to subscribers
     ├─ batch supervisor              one batch actor per watched batch; reconciliation poll
     └─ worker[domain] ...            started with `start_worker`, stopped with its handle

Every actor is started with `nursery.start` and is running when the call returns.
Leaving the `open_runtime` block stops the workers (each lets its handlers finish within
its grace period and releases what it claimed but did not finish), then cancels the rest,
closes the pool and, if one was started, stops the embedded cluster.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import attrs
import sniffio
import trio
import trio_asyncio

from triobus.actors.batch_actor import BatchCallback, BatchWatchStatistics
from triobus.actors.batch_supervisor import BatchSupervisor
from triobus.actors.bus import CommandBus
from triobus.actors.events import (
    BatchCompleted,
    DatabaseRecovered,
    DatabaseUnavailable,
    Events,
)
from triobus.actors.handlers import HandlerRegistry
from triobus.actors.maintenance import (
    DEFAULT_RETENTION,
    Pruner,
    RetentionPolicy,
    run_maintenance,
)
from triobus.actors.notifier import Notifier
from triobus.actors.outcomes import RetryPolicy
from triobus.actors.scheduler import ScheduleActor
from triobus.actors.transaction import Transaction, open_transaction
from triobus.actors.transactional import RESERVED_CONNECTIONS, TransactionSlots
from triobus.actors.troubleshooting import TroubleshootingQueue
from triobus.actors.worker import Worker, WorkerOptions, WorkerStatistics
from triobus.persistence import schedules
from triobus.persistence.commands import count_runnable
from triobus.persistence.databases import check_schema_version
from triobus.persistence.databases import migrate as apply_migrations
from triobus.persistence.driver import DriverKind
from triobus.persistence.embedded import open_embedded_postgres
from triobus.persistence.errors import BatchNotFoundError, InvalidOperationError, ValidationError
from triobus.persistence.json_values import JsonDefault
from triobus.persistence.pool import ConnectionPool, PoolStatistics, open_pool
from triobus.persistence.records import BatchMetadata, CommandChange
from triobus.persistence.schedules import (
    DEFAULT_CATCH_UP,
    Schedule,
    ScheduleRecord,
    new_schedule,
)
from triobus.persistence.validation import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    check_async_callable,
    check_bool,
    check_dsn,
    check_enum,
    check_int_in_range,
    check_max_payload_bytes,
    check_name,
    check_optional_callable,
    check_optional_seconds,
    check_seconds,
    check_uuid,
    checked_by,
)

logger = logging.getLogger(__name__)

DSN_ENV = "TRIOBUS_DSN"
DRIVER_ENV = "TRIOBUS_DRIVER"


def _check_registry(options: RuntimeOptions, attribute: Any, value: object) -> None:
    if not isinstance(value, HandlerRegistry):
        raise ValidationError(f"registry must be a HandlerRegistry, got {type(value).__name__}")


def _check_retention(options: RuntimeOptions, attribute: Any, value: object) -> None:
    if value is not None and not isinstance(value, RetentionPolicy):
        raise ValidationError(
            f"retention must be a RetentionPolicy or None, got {type(value).__name__}"
        )


def _to_driver_kind(value: object) -> DriverKind:
    return check_enum("driver", DriverKind, value)


@attrs.frozen(kw_only=True)
class RuntimeOptions:
    """How a runtime runs (see `open_runtime`); validated when built."""

    registry: HandlerRegistry = attrs.field(factory=HandlerRegistry, validator=_check_registry)
    migrate: bool = attrs.field(default=True, validator=checked_by(check_bool))
    driver: DriverKind = attrs.field(default=DriverKind.NATIVE, converter=_to_driver_kind)
    pool_size: int = attrs.field(default=10, validator=checked_by(check_int_in_range, limit=1000))
    max_payload_bytes: int = attrs.field(
        default=DEFAULT_MAX_PAYLOAD_BYTES, validator=checked_by(check_max_payload_bytes)
    )
    batch_callback_timeout: float = attrs.field(default=60.0, validator=checked_by(check_seconds))
    batch_reconcile_interval: float = attrs.field(default=5.0, validator=checked_by(check_seconds))
    json_default: JsonDefault | None = attrs.field(
        default=None, validator=checked_by(check_optional_callable)
    )
    retention: RetentionPolicy | None = attrs.field(
        default=DEFAULT_RETENTION, validator=_check_retention
    )
    maintenance_interval: float = attrs.field(default=60.0, validator=checked_by(check_seconds))


@attrs.frozen
class RuntimeStatistics:
    """A snapshot: one record per running worker and per watched batch, and the pool's."""

    workers: tuple[WorkerStatistics, ...]
    batches: tuple[BatchWatchStatistics, ...]
    pool: PoolStatistics
    notifier_reconnects: int


class Runtime:
    """An open runtime. `bus` sends and queries commands, `tsq` is the troubleshooting
    queue's operator interface, `start_worker` runs handlers: those of `registry` unless
    told otherwise (the `triobus_runtime` fixture sets it to `triobus_registry`'s).
    `notifier` is its LISTEN connection: `subscribe` wakes a task on a notification."""

    def __init__(
        self,
        options: RuntimeOptions,
        *,
        dsn: str,
        pool: ConnectionPool,
        notifier: Notifier,
        batches: BatchSupervisor,
        nursery: trio.Nursery,
        events: Events | None = None,
    ) -> None:
        self.options = options
        self.events = Events() if events is None else events
        self.dsn = dsn
        self.pool = pool
        self.registry = options.registry
        max_payload_bytes = self.max_payload_bytes = options.max_payload_bytes
        json_default = options.json_default
        self.bus = CommandBus(
            pool,
            notifier,
            batches,
            max_payload_bytes=max_payload_bytes,
            json_default=json_default,
            events=self.events,
        )
        self.tsq = TroubleshootingQueue(
            pool,
            on_changed=self._changed,
            max_payload_bytes=max_payload_bytes,
            json_default=json_default,
            events=self.events,
        )
        self._batches = batches
        self.notifier = notifier
        self._nursery = nursery
        self._workers: list[Worker] = []
        self._transactions = TransactionSlots(pool)
        self._schedules: dict[str, Schedule] = {}

    def _changed(self, changes: Sequence[CommandChange]) -> None:
        """Committed changes: to the batch actors, and a BatchCompleted event for each
        batch one of them completed."""
        if self.events.active:
            completed = {  # every change of a statement tells of the batch it completed
                (c.domain, c.batch_id): BatchCompleted(
                    domain=c.domain, batch_id=c.batch_id, counts=c.batch_counts
                )
                for c in changes
                if c.batch_completed and c.batch_id is not None
            }
            for event in completed.values():
                self.events.emit(event)
        self._batches.deliver_changes(changes)

    async def start_worker(
        self,
        domain: str,
        *,
        concurrency: int = 8,
        prefetch: int = 0,
        visibility_timeout: float = 30.0,
        retry_policy: RetryPolicy | None = None,
        handler_timeout: float | None = None,
        poll_interval: float = 5.0,
        heartbeat_interval: float | None = None,
        grace_period: float = 10.0,
        registry: HandlerRegistry | None = None,
    ) -> Worker:
        """Start a worker for `domain`; it is claiming when this returns.

        `heartbeat_interval` defaults to a third of `visibility_timeout`. `prefetch`
        commands beyond the idle handlers may be claimed ahead and wait (for short
        handlers; see the worker module). The worker runs the handlers of `registry`,
        else the runtime's. The returned handle has `await stop()` and `statistics()`.
        """
        if registry is None:
            registry = self.registry
        elif not isinstance(registry, HandlerRegistry):
            raise ValidationError(
                f"registry must be a HandlerRegistry, got {type(registry).__name__}"
                f" (worker of domain {domain!r})"
            )
        options = WorkerOptions(
            domain=domain,
            concurrency=concurrency,
            prefetch=prefetch,
            visibility_timeout=visibility_timeout,
            retry_policy=RetryPolicy() if retry_policy is None else retry_policy,
            handler_timeout=handler_timeout,
            poll_interval=poll_interval,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            max_result_bytes=self.max_payload_bytes,
            json_default=self.options.json_default,
        )
        if registry.has_transactional(options.domain):
            self._check_pool_size(options)
        worker = Worker(
            options,
            pool=self.pool,
            registry=registry,
            notifier=self.notifier,
            on_acked=self._changed,
            bus=self.bus,
            transactions=self._transactions,
            events=self.events,
        )
        await self._nursery.start(worker.run)
        self._workers.append(worker)
        return worker

    async def schedule(
        self,
        name: str,
        domain: str,
        command_type: str,
        cron: str,
        *,
        data: dict[str, object] | None = None,
        timezone: str = "UTC",
        catch_up: float = DEFAULT_CATCH_UP,
    ) -> ScheduleRecord:
        """Send a command of `command_type` to `domain` at every tick of `cron`, from now
        on, while this runtime runs; returns the schedule as stored.

        `cron` has five fields (minute hour day month weekday), or six with seconds last
        (``* * * * * */10``: every ten seconds), or is an alias such as ``@daily``; its
        ticks are in `timezone` (an IANA name). Each tick's command has a command id
        derived from `name` and the tick, and `data` plus ``"schedule": {"name", "tick"}``
        (the tick as an ISO 8601 UTC instant). Every runtime declaring `name` sends its
        ticks, each exactly once across all of them and across restarts, including after
        retention removed the command. Ticks missed while no runtime ran are sent when one
        starts if at most `catch_up` seconds late, else skipped with a WARNING line.
        Declaring a changed definition (cron, timezone, target, data) under a name
        replaces it from the next tick on, in every runtime. Raises `ValidationError` for
        a bad definition and `InvalidOperationError` for a different definition under a
        name this runtime declared already; either writes nothing.
        """
        schedule = new_schedule(
            name,
            domain,
            command_type,
            cron,
            data=data,
            timezone=timezone,
            catch_up=catch_up,
            max_payload_bytes=self.max_payload_bytes,
            json_default=self.options.json_default,
        )
        declared = self._schedules.get(schedule.name)
        if declared is not None and declared != schedule:
            raise InvalidOperationError(
                f"schedule {schedule.name!r} is declared in this runtime already, as"
                f" {declared.cron!r} for {declared.domain}/{declared.command_type}; one name"
                " holds one definition"
            )
        self._schedules[schedule.name] = schedule  # before the await: a racing call sees it
        try:
            async with self.pool.connection() as conn:
                record = await schedules.declare_schedule(conn, schedule, now=datetime.now(UTC))
        except BaseException:
            if declared is None:
                del self._schedules[schedule.name]
            raise
        logger.info(
            "schedule %r: %r (%s) sends %s/%s, definition version %d, next tick %s",
            record.name,
            record.cron,
            record.timezone,
            record.domain,
            record.command_type,
            record.version,
            record.next_tick(datetime.now(UTC)).isoformat(),
        )
        if declared is None:
            actor = ScheduleActor(
                self.pool,
                schedule,
                max_payload_bytes=self.max_payload_bytes,
                json_default=self.options.json_default,
            )
            await self._nursery.start(actor.run)
        return record

    async def drain(
        self,
        domain: str,
        *,
        timeout: float = 30.0,  # noqa: ASYNC109 - the documented API; fail_after inside
        **worker_options: Any,
    ) -> WorkerStatistics:
        """Run `domain`'s commands through a worker of its own until none is left to run
        now, then stop it and return its statistics (for tests and scripts).

        "None left" means no command of the domain is IN_PROGRESS or PENDING and visible:
        commands waiting for a retry's back-off, a delay or an operator stay where they
        are. `worker_options` go to `start_worker` (its poll interval defaults to 0.05 s).
        Raises `trio.TooSlowError` after `timeout` seconds.
        """
        checked_domain = check_name("domain", domain)
        seconds = check_seconds("timeout", timeout, context=f"domain {checked_domain!r}")
        worker_options.setdefault("poll_interval", 0.05)
        worker = await self.start_worker(checked_domain, **worker_options)
        try:
            with trio.fail_after(seconds):
                while True:
                    async with self.pool.connection() as conn:
                        if not await count_runnable(conn, checked_domain):
                            break
                    await trio.sleep(worker.options.poll_interval)
        finally:
            await worker.stop()
            self._workers.remove(worker)
        return worker.statistics()

    def _check_pool_size(self, options: WorkerOptions) -> None:
        """Warn when the pool cannot lend each of the worker's handlers a transaction."""
        if options.concurrency > self._transactions.total:
            logger.warning(
                "worker %r runs %d handlers at once, but with pool_size=%d at most %d"
                " transactional handlers run at once in this runtime: the others wait for"
                " a connection; open the runtime with pool_size >= %d",
                options.domain,
                options.concurrency,
                self.pool.max_size,
                self._transactions.total,
                options.concurrency + RESERVED_CONNECTIONS,
            )

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A pooled connection inside BEGIN ... COMMIT, to pass to triobus as `conn=`.

        `async with runtime.transaction() as conn:` run the application's own SQL on
        `conn` (`execute`, `fetch_all`, `fetch_one`) and send, create batches or act on
        the troubleshooting queue with `conn=conn`: it all commits when the block ends, or
        rolls back if it raises or is cancelled. Workers see nothing before the commit,
        and batch callbacks registered in the block start only after it.
        """
        return open_transaction(self.pool)

    async def watch_batch(
        self, domain: str, batch_id: UUID | str, on_complete: BatchCallback
    ) -> None:
        """Await `on_complete(BatchMetadata)` once when the batch completes (at once if it
        already has). Replaces an earlier callback of this batch in this runtime.

        The registration lives in memory: it is lost when the process stops, and the
        batch still completes. Raises `BatchNotFoundError` for an unknown batch.
        """
        checked_domain, checked_id = self._batch_key(domain, batch_id)
        check_async_callable(
            "on_complete", on_complete, context=f"domain {checked_domain!r}, batch {checked_id}"
        )
        await self._check_batch_exists(checked_domain, checked_id)
        await self._batches.watch(checked_domain, checked_id, on_complete)

    def unwatch_batch(self, domain: str, batch_id: UUID | str) -> None:
        """Drop the batch's callback in this runtime (no-op if none)."""
        checked_domain, checked_id = self._batch_key(domain, batch_id)
        self._batches.unwatch(checked_domain, checked_id)

    async def wait_batch(
        self,
        domain: str,
        batch_id: UUID | str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the documented API; fail_after inside
    ) -> BatchMetadata:
        """Wait until the batch is complete and return its final metadata.

        Raises `trio.TooSlowError` after `timeout` seconds, `BatchNotFoundError` for an
        unknown batch.
        """
        checked_domain, checked_id = self._batch_key(domain, batch_id)
        seconds = check_optional_seconds(
            "timeout", timeout, context=f"domain {checked_domain!r}, batch {checked_id}"
        )
        await self._check_batch_exists(checked_domain, checked_id)
        with trio.fail_after(math.inf if seconds is None else seconds):
            return await self._batches.wait(checked_domain, checked_id)

    @staticmethod
    def _batch_key(domain: str, batch_id: UUID | str) -> tuple[str, UUID]:
        checked_domain = check_name("domain", domain)
        return checked_domain, check_uuid(
            "batch_id", batch_id, context=f"domain {checked_domain!r}"
        )

    async def _check_batch_exists(self, domain: str, batch_id: UUID) -> None:
        if await self.bus.get_batch(domain, batch_id) is None:
            raise BatchNotFoundError(domain, batch_id)

    def statistics(self) -> RuntimeStatistics:
        return RuntimeStatistics(
            workers=tuple(w.statistics() for w in self._workers),
            batches=self._batches.statistics(),
            pool=self.pool.statistics(),
            notifier_reconnects=self.notifier.reconnects,
        )

    async def stop_workers(self, grace_period: float | None = None) -> None:
        """Stop every worker (`Worker.stop`): at once, with `grace_period=0`. Leaving the
        `open_runtime` block does this too, with each worker's own grace period."""
        async with trio.open_nursery() as nursery:
            for worker in self._workers:
                nursery.start_soon(worker.stop, grace_period)


@asynccontextmanager
async def open_runtime(
    dsn: str | None = None,
    *,
    registry: HandlerRegistry | None = None,
    migrate: bool = True,
    driver: DriverKind | str | None = None,
    pool_size: int = 10,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    batch_callback_timeout: float = 60.0,
    batch_reconcile_interval: float = 5.0,
    json_default: JsonDefault | None = None,
    retention: RetentionPolicy | None = DEFAULT_RETENTION,
    maintenance_interval: float = 60.0,
) -> AsyncIterator[Runtime]:
    """Open a runtime on `dsn`, else on `$TRIOBUS_DSN`, else on an embedded cluster.

    The embedded cluster is private to this runtime and deleted when it closes.
    `driver` (or `$TRIOBUS_DRIVER`) chooses how psycopg is driven: "native" (default)
    or "thread" (the fallback on psycopg's public sync API). With `migrate=True` the
    schema is brought up to date first; with `migrate=False` a schema that is missing,
    older or newer than this triobus needs stops it with a `SchemaError` saying so. An
    asyncio loop (trio-asyncio) runs inside the runtime for handlers registered with
    `asyncio=True`. Batch completion callbacks run
    under `batch_callback_timeout`; watched batches are reconciled with the database every
    `batch_reconcile_interval` seconds in case a notification was lost. Payloads (command
    data, results, an operator's data) may hold Decimal, UUID, dates and enums
    (`json_values`); `json_default` encodes further types. Every
    `maintenance_interval` seconds the runtime prunes finished work older than
    `retention` says (`RetentionPolicy`: 7 days by default; None keeps everything), at
    most one pruner at a time across all runtimes on the database; a role that may not
    delete turns it off with one log line.
    """
    _check_running_on_trio("open_runtime")
    if dsn is not None:
        check_dsn(dsn)
    options = RuntimeOptions(
        registry=HandlerRegistry() if registry is None else registry,
        migrate=migrate,
        driver=(os.environ.get(DRIVER_ENV) or DriverKind.NATIVE) if driver is None else driver,
        pool_size=pool_size,
        max_payload_bytes=max_payload_bytes,
        batch_callback_timeout=batch_callback_timeout,
        batch_reconcile_interval=batch_reconcile_interval,
        json_default=json_default,
        retention=retention,
        maintenance_interval=maintenance_interval,
    )
    try:
        async with AsyncExitStack() as stack:
            if dsn is None:
                dsn = check_dsn(os.environ[DSN_ENV]) if os.environ.get(DSN_ENV) else None
            if dsn is None:
                logger.info("no DSN given and %s unset: starting an embedded PostgreSQL", DSN_ENV)
                dsn = await stack.enter_async_context(open_embedded_postgres())
            if options.migrate:
                await apply_migrations(dsn, driver=options.driver)
            else:
                await check_schema_version(dsn, driver=options.driver)
            pool = await stack.enter_async_context(
                open_pool(dsn, driver=options.driver, max_size=options.pool_size)
            )
            await stack.enter_async_context(trio_asyncio.open_loop())  # for asyncio handlers
            async with trio.open_nursery() as nursery:
                events = Events()
                pool.outage.on_lost = lambda error: events.emit(DatabaseUnavailable(error=error))
                pool.outage.on_recovered = lambda seconds: events.emit(
                    DatabaseRecovered(seconds=seconds)
                )
                notifier = Notifier(pool)
                await nursery.start(notifier.run)
                batches = BatchSupervisor(
                    pool,
                    notifier,
                    callback_timeout=options.batch_callback_timeout,
                    reconcile_interval=options.batch_reconcile_interval,
                    events=events,
                )
                await nursery.start(batches.run)
                if options.retention is not None and not options.retention.disabled:
                    await nursery.start(
                        run_maintenance,
                        Pruner(pool, options.retention),
                        options.maintenance_interval,
                    )
                runtime = Runtime(
                    options,
                    dsn=dsn,
                    pool=pool,
                    notifier=notifier,
                    batches=batches,
                    nursery=nursery,
                    events=events,
                )
                try:
                    yield runtime
                finally:
                    with trio.CancelScope(shield=True):
                        await runtime.stop_workers()
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        sole = _sole_exception(group)
        if sole is None:
            raise
        raise sole from None


def _check_running_on_trio(what: str) -> None:
    """Raise one clear error when called from asyncio (or anything but Trio)."""
    try:
        library: str | None = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = None
    if library != "trio":
        raise InvalidOperationError(
            f"{what} runs on Trio, not on {library or 'this event loop'}: from asyncio or"
            " sync code, send commands with triobus.persistence.producer (on your own"
            " psycopg connection) and run the workers in a Trio process"
        )


def _sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside nested single-member groups, else None.

    Trio nurseries wrap whatever leaves them in exception groups; a runtime that failed
    for one reason (often the application's own error in the block) raises that error.
    """
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc
