"""Retention: the pruner, and the maintenance actor that runs it in every runtime.

What may be removed, and what never is, is `persistence/retention.py`. The pruner works
a bounded chunk at a time, each chunk a transaction of its own that first takes one
transaction-level advisory lock (which also works behind PgBouncer in transaction mode):
so at most one pruner works at a time across all processes and hosts, and a runtime whose
maintenance actor does not get the lock leaves that round to the one that has it. Each
chunk runs under a statement timeout; after a timeout the chunk size halves (down to
`MIN_CHUNK` commands or one batch, which then runs once without the statement timeout:
a whole batch goes in one statement, however large); between chunks the pruner pauses,
so that claims and acks never queue behind it for long. No chunk waits longer than the
statement timeout for a lock.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType

import attrs
import trio

from triobus.persistence import retention
from triobus.persistence.connection import Connection
from triobus.persistence.errors import DatabaseError, ValidationError
from triobus.persistence.pool import ConnectionPool
from triobus.persistence.retention import Removed
from triobus.persistence.schema import INSUFFICIENT_PRIVILEGE
from triobus.persistence.validation import check_name, check_seconds

logger = logging.getLogger(__name__)

DAY = 86_400.0
MIN_CHUNK = 10
QUERY_CANCELED = "57014"  # statement_timeout
# pg_advisory_xact_lock key of the pruner: "triobusP", fixed forever.
PRUNE_LOCK_KEY = 0x74726962_75735050


def _retention_seconds(value: object, context: str = "RetentionPolicy") -> float | None:
    """A retention in seconds; None or 0 keeps forever."""
    if value is None:
        return None
    seconds = check_seconds("retention", value, allow_zero=True, context=context)
    return seconds or None


def _by_domain(value: object) -> Mapping[str, float | None]:
    if not isinstance(value, Mapping):
        raise ValidationError(
            f"by_domain must be a mapping of domain to seconds, got {type(value).__name__}"
            " (RetentionPolicy)"
        )
    return MappingProxyType(
        {
            check_name("domain", domain, context="RetentionPolicy"): _retention_seconds(
                seconds, f"RetentionPolicy, domain {domain!r}"
            )
            for domain, seconds in value.items()
        }
    )


@attrs.frozen
class RetentionPolicy:
    """How long finished work is kept, in seconds (None or 0: forever).

    `commands`: finished commands and completed batches of every domain not in
    `by_domain`; `by_domain`: a retention per domain; `replies`: unacknowledged replies.
    """

    commands: float | None = attrs.field(default=7 * DAY, converter=_retention_seconds)
    by_domain: Mapping[str, float | None] = attrs.field(factory=dict, converter=_by_domain)
    replies: float | None = attrs.field(default=7 * DAY, converter=_retention_seconds)

    def for_domain(self, domain: str) -> float | None:
        return self.by_domain.get(domain, self.commands)

    @property
    def disabled(self) -> bool:
        return (
            self.commands is None
            and self.replies is None
            and all(v is None for v in self.by_domain.values())
        )


DEFAULT_RETENTION = RetentionPolicy()


@attrs.frozen
class PruneReport:
    """What one prune removed (a dry run: would remove), per domain, and old replies."""

    removed: Mapping[str, Removed]
    replies: int
    dry_run: bool = False

    @property
    def total(self) -> Removed:
        total = Removed(replies=self.replies)
        for removed in self.removed.values():
            total = total + removed
        return total


class PruneLockTaken(Exception):
    """Another pruner holds the lock: this round is its."""


class Pruner:
    """Removes finished work older than `policy` says, a chunk at a time (see the module
    docstring). `chunk`: commands per statement; `batch_chunk`: batches per statement."""

    def __init__(
        self,
        pool: ConnectionPool,
        policy: RetentionPolicy,
        *,
        chunk: int = 1000,
        batch_chunk: int = 10,
        statement_timeout: float = 5.0,
        pause: float = 0.05,
    ) -> None:
        self._pool = pool
        self.policy = policy
        self._chunk = chunk
        self._batch_chunk = batch_chunk
        self._statement_timeout = statement_timeout
        self._pause = pause

    async def prune(
        self, *, domain: str | None = None, dry_run: bool = False, wait: bool = False
    ) -> PruneReport:
        """Prune every domain (or one) and the old replies, until nothing old is left.

        Raises `PruneLockTaken` if another pruner works and `wait` is false (the
        maintenance actor); with `wait` (the CLI) each chunk waits for the lock."""
        # Old replies first, then each domain's commands with what replies they still have.
        reply_older_than = self.policy.replies if domain is None else None
        replies = 0
        if reply_older_than is not None:
            replies = await self._prune_replies(reply_older_than, dry_run, wait)
        async with self._pool.connection() as conn:
            domains = [domain] if domain is not None else await retention.select_domains(conn)
        removed: dict[str, Removed] = {}
        for name in domains:
            older_than = self.policy.for_domain(name)
            if older_than is None:
                continue
            if dry_run:
                async with self._pool.connection() as conn:
                    removed[name] = await retention.count_prunable(
                        conn, name, older_than=older_than, reply_older_than=reply_older_than
                    )
                continue
            removed[name] = await self._prune_domain(name, older_than, wait)
        return PruneReport(removed=MappingProxyType(removed), replies=replies, dry_run=dry_run)

    async def _prune_domain(self, domain: str, older_than: float, wait: bool) -> Removed:
        batches = await self._until_done(
            functools.partial(retention.prune_batches, domain=domain, older_than=older_than),
            self._batch_chunk,
            wait,
            counted=lambda removed: removed.batches,
            smallest=1,
        )
        commands = await self._until_done(
            functools.partial(retention.prune_commands, domain=domain, older_than=older_than),
            self._chunk,
            wait,
            counted=lambda removed: removed.commands,
        )
        return batches + commands

    async def _prune_replies(self, older_than: float, dry_run: bool, wait: bool) -> int:
        if dry_run:
            async with self._pool.connection() as conn:
                return await retention.count_old_replies(conn, older_than=older_than)
        removed = await self._until_done(
            functools.partial(retention.prune_replies, older_than=older_than),
            self._chunk,
            wait,
            counted=lambda removed: removed.replies,
        )
        return removed.replies

    async def _until_done(
        self,
        prune: Callable[..., Awaitable[Removed]],
        size: int,
        wait: bool,
        *,
        counted: Callable[[Removed], int],
        smallest: int = MIN_CHUNK,
    ) -> Removed:
        """Run chunks `prune(conn, limit=...)`, each in a transaction holding the prune lock
        and under the statement timeout, until one removes fewer than its limit (`counted`
        says how many it removed). After a timeout the limit halves, for the chunks after
        it too. A chunk of the `smallest` size that still times out (one batch of a
        million members can) runs once more without the statement timeout, waiting at most
        that long for a lock: it deletes rows no claim or ack touches, so it stalls none."""
        total, limit, unbounded = Removed(), size, False
        timeout_ms = f"{max(1, int(self._statement_timeout * 1000))}ms"  # 0 would be none
        while True:
            try:
                async with self._pool.connection() as conn, conn.transaction():
                    await self._lock(conn, wait)
                    await conn.execute(
                        "SELECT set_config('statement_timeout', %s, true),"
                        " set_config('lock_timeout', %s, true)",
                        ("0" if unbounded else timeout_ms, timeout_ms),
                    )
                    removed = await prune(conn, limit=limit)
            except DatabaseError as ex:
                if ex.sqlstate != QUERY_CANCELED or unbounded:
                    raise
                if limit > smallest:
                    limit = max(smallest, limit // 2)
                    logger.info("a prune chunk timed out: %d per statement now", limit)
                else:
                    unbounded = True
                    logger.warning(
                        "a prune chunk of %d timed out at the smallest size: running it"
                        " without the statement timeout",
                        limit,
                    )
                continue
            unbounded = False
            total = total + removed
            if counted(removed) < limit:
                return total
            await trio.sleep(self._pause)

    @staticmethod
    async def _lock(conn: Connection, wait: bool) -> None:
        if wait:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (PRUNE_LOCK_KEY,))
            return
        row = await conn.fetch_one("SELECT pg_try_advisory_xact_lock(%s) AS got", (PRUNE_LOCK_KEY,))
        if row is None or not row["got"]:
            raise PruneLockTaken


async def run_maintenance(
    pruner: Pruner,
    interval: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Prune every `interval` seconds, the first time one interval after the start (a
    short-lived runtime, like the CLI's, prunes nothing). A role that may not delete
    stops it, with one line saying so; other database errors are logged and retried
    next round."""
    task_status.started()
    while True:
        await trio.sleep(interval)
        try:
            report = await pruner.prune()
        except PruneLockTaken:
            continue
        except DatabaseError as ex:
            if ex.sqlstate == INSUFFICIENT_PRIVILEGE:
                logger.warning(
                    "pruning is off in this runtime: its role may not delete (%s); prune with"
                    " the maintainer role, or open the runtime with retention=None",
                    ex,
                )
                return
            logger.warning("pruning failed, trying again in %.0f s: %s", interval, ex)
            continue
        total = report.total
        if not total.nothing:
            logger.info(
                "pruned %d commands, %d batches, %d audit rows and %d replies",
                total.commands,
                total.batches,
                total.audit_rows,
                total.replies,
            )
