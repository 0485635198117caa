"""SQL for the command table as a queue: claim, extend leases, acknowledge, release.

A claim takes a lease: `visible_at = now() + visibility_timeout` and a fresh
`lease_token`. A command has a lease token exactly while it is IN_PROGRESS (a CHECK
constraint says so), and every later write by the claimer is guarded by that token (the
`..._if_claimed` statements), so a result that arrives after its lease expired and the
command was claimed again, or after an operator acted, changes nothing. The guards name
no status on purpose: that keeps the planner on the primary key instead of the partial
claim index. Each statement writes its audit rows (and replies) itself: one round trip.

Row locks: an ack waits only on rows whose lease it holds, and whoever else locks such a
row does not wait on anything an ack holds: claims, heartbeats and releases skip locked
rows, and an operator's single-command lock is on a command it then leaves alone unless
it is in the troubleshooting queue (no lease). Acks lock their batch rows in (domain,
batch_id) order after all their command rows. Results are sent sorted by (domain,
command_id) and looked up by primary key in that order, so an ack retried while its first
attempt still runs waits for it (were a deadlock ever detected, the acker retries).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, Protocol
from uuid import UUID

import attrs

from triobus.persistence.batch_counts import (
    StatusChange,
    batch_count_ctes,
    cancel_lock_key_sql,
    of_canceled_batch,
    select_changes,
)
from triobus.persistence.connection import Connection, Params, Row
from triobus.persistence.errors import InvalidOperationError
from triobus.persistence.literals import literal, literal_list
from triobus.persistence.records import (
    AuditEventType,
    Command,
    CommandChange,
    CommandStatus,
    ReplyOutcome,
)
from triobus.persistence.replies import insert_replies

_PENDING_SQL = literal(CommandStatus.PENDING)
_IN_PROGRESS_SQL = literal(CommandStatus.IN_PROGRESS)
_COMPLETED_SQL = literal(CommandStatus.COMPLETED)
_IN_TSQ_SQL = literal(CommandStatus.IN_TROUBLESHOOTING_QUEUE)
_CANCELED_SQL = literal(CommandStatus.CANCELED)
_TERMINAL_SQL = literal_list(s for s in CommandStatus if s.is_terminal)
_CANCELED_WITH_BATCH_SQL = literal(AuditEventType.CANCELED_WITH_BATCH)
# A member of a canceled batch is canceled when it would otherwise wait for another
# attempt (a retry, or released at a stop) or for an operator (the TSQ).
_BATCH_CANCELED_REPLY = "jsonb_build_object('reason', 'its batch was canceled')"

CLAIM_COMMANDS = f"""
WITH candidates AS (
    SELECT domain, command_id, status, visible_at AS claimable_since,
           status = {_IN_PROGRESS_SQL}
               AND attempts >= coalesce(max_attempts, %(default_max_attempts)s) AS exhausted
    FROM triobus.command
    WHERE domain = %(domain)s AND status IN ({_PENDING_SQL}, {_IN_PROGRESS_SQL})
      AND visible_at <= now()
    ORDER BY visible_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE triobus.command c
    SET status = {_IN_PROGRESS_SQL}, attempts = c.attempts + 1,
        visible_at = now() + make_interval(secs => %(visibility_timeout)s),
        lease_token = gen_random_uuid(), updated_at = now()
    FROM candidates k
    WHERE c.domain = k.domain AND c.command_id = k.command_id AND NOT k.exhausted
    RETURNING c.domain, c.command_id, c.command_type, c.data, c.correlation_id, c.reply_to,
              c.batch_id, c.attempts, c.max_attempts, c.lease_token, c.visible_at,
              c.trace_context, k.status AS claimed_from, k.claimable_since
), exhausted AS (
    UPDATE triobus.command c
    SET status = {_IN_TSQ_SQL}, lease_token = NULL, updated_at = now(),
        error_type = 'LeaseExpired', error_code = 'LEASE_EXPIRED',
        error_message = 'claimed ' || c.attempts
            || ' times without a result: the worker stopped or died each time',
        error_details = NULL
    FROM candidates k
    WHERE c.domain = k.domain AND c.command_id = k.command_id AND k.exhausted
    RETURNING c.domain, c.command_id, c.batch_id, c.attempts, c.error_type, c.error_code,
              c.error_message
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, {literal(AuditEventType.RECEIVED)},
           jsonb_build_object('attempt', attempts)
    FROM claimed
    UNION ALL
    SELECT domain, command_id, {literal(AuditEventType.RETRY_EXHAUSTED)},
           jsonb_build_object('attempt', attempts, 'error_type', error_type,
                              'error_code', error_code, 'error_message', error_message)
    FROM exhausted
), {
    batch_count_ctes(
        StatusChange("claimed", old="claimed_from", new=_IN_PROGRESS_SQL),
        StatusChange("exhausted", old=_IN_PROGRESS_SQL, new=_IN_TSQ_SQL),
    )
}
SELECT domain, command_id, command_type, data, correlation_id, reply_to, batch_id, attempts,
       max_attempts, lease_token, trace_context,
       greatest(0, extract(epoch FROM now() - claimable_since))::float8 AS waited,
       claimed_from = {_IN_PROGRESS_SQL} AS lease_expired
FROM claimed ORDER BY visible_at, command_id
"""

# The batches of these commands, share-locked against a cancel (in key order) before a
# statement that would leave one of them waiting reads whether its batch is canceled.
LOCK_BATCHES_AGAINST_CANCEL = f"""
SELECT pg_advisory_xact_lock_shared({cancel_lock_key_sql("k.domain", "k.batch_id")})
FROM (
    SELECT DISTINCT c.domain, c.batch_id FROM triobus.command c
    JOIN unnest(%(domain)s::text[], %(command_id)s::uuid[]) AS r(domain, command_id)
      ON c.domain = r.domain AND c.command_id = r.command_id
    WHERE c.batch_id IS NOT NULL
    ORDER BY 1, 2 OFFSET 0
) k
"""

# Heartbeats and releases skip rows another statement holds (the acker writing their
# result, or a claimer that took an expired lease): they never wait, so never deadlock.
_HELD_BY_THESE_LEASES = """
WITH mine AS (
    SELECT domain, command_id, batch_id FROM triobus.command
    WHERE domain = %(domain)s AND command_id = ANY(%(command_ids)s)
      AND lease_token = ANY(%(lease_tokens)s)
    FOR UPDATE SKIP LOCKED
)"""

EXTEND_LEASES_IF_CLAIMED = f"""{_HELD_BY_THESE_LEASES}
UPDATE triobus.command c
SET visible_at = now() + make_interval(secs => %(visibility_timeout)s)
FROM mine WHERE c.domain = mine.domain AND c.command_id = mine.command_id
"""

RELEASE_IF_CLAIMED = f"""{_HELD_BY_THESE_LEASES}, decided AS (
    SELECT mine.*, CASE WHEN {of_canceled_batch("mine")} THEN {_CANCELED_SQL}
                        ELSE {_PENDING_SQL} END AS new_status
    FROM mine
), released AS (
    UPDATE triobus.command c
    SET status = d.new_status,
        finished_at = CASE WHEN d.new_status = {_CANCELED_SQL} THEN now() END,
        visible_at = now(), lease_token = NULL, attempts = c.attempts - 1, updated_at = now()
    FROM decided d WHERE c.domain = d.domain AND c.command_id = d.command_id
    RETURNING c.domain, c.command_id, c.status, c.batch_id, c.reply_to, c.correlation_id
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, {_CANCELED_WITH_BATCH_SQL},
           jsonb_build_object('instead_of', 'RELEASED')
    FROM released WHERE status = {_CANCELED_SQL}
), replies AS (
    {
    insert_replies(
        "released",
        outcome=literal(ReplyOutcome.CANCELED),
        data=_BATCH_CANCELED_REPLY,
        only_if=f"status = {_CANCELED_SQL}",
    )
}
), {batch_count_ctes(StatusChange("released", old=_IN_PROGRESS_SQL, new="status"))}
SELECT count(*) AS released FROM released
"""

# A terminal result with a reply_to writes its one reply: the result, or the error.
_ACK_REPLIES = insert_replies(
    "acked",
    outcome=f"CASE status WHEN {_COMPLETED_SQL} THEN {literal(ReplyOutcome.SUCCESS)}"
    f" WHEN {_CANCELED_SQL} THEN {literal(ReplyOutcome.CANCELED)}"
    f" ELSE {literal(ReplyOutcome.FAILED)} END",
    data=f"""CASE status WHEN {_COMPLETED_SQL} THEN result
                WHEN {_CANCELED_SQL} THEN {_BATCH_CANCELED_REPLY}
                ELSE jsonb_strip_nulls(jsonb_build_object(
                    'error_type', error_type, 'error_code', error_code,
                    'error_message', error_message, 'error_details', error_details)) END""",
    only_if=f"status IN {_TERMINAL_SQL}",
)

ACK_IF_CLAIMED = f"""
WITH r AS (
    SELECT * FROM unnest(
        %(domain)b::text[], %(command_id)b::uuid[], %(lease_token)b::uuid[],
        %(batch_id)b::uuid[], %(status)b::text[], %(event)b::text[],
        %(retry_delay)b::float8[], %(result)b::text[], %(error_type)b::text[],
        %(error_code)b::text[], %(error_message)b::text[], %(error_details)b::text[])
    AS r(domain, command_id, lease_token, batch_id, status, event, retry_delay, result,
         error_type, error_code, error_message, error_details)
), decided AS (
    SELECT r.*, CASE WHEN r.status IN ({_PENDING_SQL}, {_IN_TSQ_SQL})
                          AND {of_canceled_batch("r")}
                     THEN {_CANCELED_SQL} ELSE r.status END AS new_status
    FROM r
), acked AS (
    UPDATE triobus.command c
    SET status = r.new_status,
        finished_at = CASE WHEN r.new_status IN {_TERMINAL_SQL} THEN now() END,
        result = r.result::jsonb,
        -- a success keeps the last error on the row; the audit trail has them all
        error_type = CASE WHEN r.error_type IS NULL THEN c.error_type ELSE r.error_type END,
        error_code = CASE WHEN r.error_type IS NULL THEN c.error_code ELSE r.error_code END,
        error_message = CASE WHEN r.error_type IS NULL THEN c.error_message
                             ELSE r.error_message END,
        error_details = CASE WHEN r.error_type IS NULL THEN c.error_details
                             ELSE r.error_details::jsonb END,
        visible_at = CASE WHEN r.status = {_PENDING_SQL}
                          THEN now() + make_interval(secs => r.retry_delay)
                          ELSE c.visible_at END,
        lease_token = NULL,
        updated_at = now()
    FROM decided r
    WHERE c.domain = r.domain AND c.command_id = r.command_id
      AND c.lease_token = r.lease_token
    RETURNING c.domain, c.command_id, c.status, c.batch_id, c.reply_to, c.correlation_id,
              c.result, c.attempts, r.error_type, r.error_code, r.error_message,
              r.error_details::jsonb AS error_details, r.event, r.retry_delay
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id,
           CASE WHEN status = {_CANCELED_SQL} THEN {_CANCELED_WITH_BATCH_SQL} ELSE event END,
           jsonb_strip_nulls(jsonb_build_object(
               'attempt', attempts, 'error_type', error_type, 'error_code', error_code,
               'error_message', error_message, 'error_details', error_details,
               'retry_in_seconds', CASE WHEN status = {_PENDING_SQL} THEN retry_delay END,
               'instead_of', CASE WHEN status = {_CANCELED_SQL} THEN event END))
    FROM acked
), replies AS (
    {_ACK_REPLIES}
), {batch_count_ctes(StatusChange("acked", old=_IN_PROGRESS_SQL, new="status"))}
{select_changes("acked")}
"""


# A transactional handler's transaction locks its command's row, if its lease is still
# held, first: nobody else can then claim it, and its completion is sure to be written.
LOCK_IF_CLAIMED = """
SELECT 1 AS held FROM triobus.command
WHERE domain = %(domain)s AND command_id = %(command_id)s AND lease_token = %(lease_token)s
FOR UPDATE
"""

# ACK_IF_CLAIMED for one COMPLETED result: what a transactional handler's transaction
# writes before its COMMIT (the same rows; scalar parameters, a plan of its own).
COMPLETE_IF_CLAIMED = f"""
WITH acked AS (
    UPDATE triobus.command c
    SET status = {_COMPLETED_SQL}, result = %(result)s::jsonb, lease_token = NULL,
        finished_at = now(), updated_at = now()
    WHERE c.domain = %(domain)s AND c.command_id = %(command_id)s
      AND c.lease_token = %(lease_token)s
    RETURNING c.domain, c.command_id, c.status, c.batch_id, c.reply_to, c.correlation_id,
              c.result, c.attempts
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, {literal(AuditEventType.COMPLETED)},
           jsonb_build_object('attempt', attempts)
    FROM acked
), replies AS (
    {insert_replies("acked", outcome=literal(ReplyOutcome.SUCCESS), data="result")}
), {batch_count_ctes(StatusChange("acked", old=_IN_PROGRESS_SQL, new=_COMPLETED_SQL))}
{select_changes("acked")}
"""


@attrs.frozen(kw_only=True)
class ClaimedCommand:
    """A command as claimed: its lease is held until `visible_at` unless extended, and
    every write about it is guarded by `lease_token`. `attempt` counts this claim;
    `max_attempts` is None when the worker's retry policy decides."""

    command: Command
    attempt: int
    max_attempts: int | None
    lease_token: UUID
    waited: float = 0.0  # seconds it was claimable before this claim
    lease_expired: bool = False  # claimed again: the previous attempt's lease expired

    @classmethod
    def from_row(cls, row: Row) -> ClaimedCommand:
        return cls(
            command=Command.from_row(row),
            attempt=row["attempts"],
            max_attempts=row["max_attempts"],
            lease_token=row["lease_token"],
            waited=row["waited"],
            lease_expired=row["lease_expired"],
        )


class Outcome(enum.StrEnum):
    """How a handler run ends. Each outcome is named after the audit event it writes and
    leads to one status (`status`)."""

    COMPLETED = "COMPLETED"
    RETRY_SCHEDULED = "RETRY_SCHEDULED"
    RETRY_EXHAUSTED = "RETRY_EXHAUSTED"
    MOVED_TO_TSQ = "MOVED_TO_TSQ"
    BUSINESS_RULE_FAILED = "BUSINESS_RULE_FAILED"

    @property
    def event(self) -> AuditEventType:
        return _EVENT_OF[self]

    @property
    def status(self) -> CommandStatus:
        return _STATUS_AFTER[self]


# Outcomes after which a command waits (for another attempt, or for an operator).
_WAITING = frozenset({CommandStatus.PENDING, CommandStatus.IN_TROUBLESHOOTING_QUEUE})

# Looked up for every result an ack writes: tables, not enum calls (about 0.5 us each).
_EVENT_OF = MappingProxyType({outcome: AuditEventType(outcome.value) for outcome in Outcome})
_STATUS_AFTER = MappingProxyType(
    {
        Outcome.COMPLETED: CommandStatus.COMPLETED,
        Outcome.RETRY_SCHEDULED: CommandStatus.PENDING,
        Outcome.RETRY_EXHAUSTED: CommandStatus.IN_TROUBLESHOOTING_QUEUE,
        Outcome.MOVED_TO_TSQ: CommandStatus.IN_TROUBLESHOOTING_QUEUE,
        Outcome.BUSINESS_RULE_FAILED: CommandStatus.FAILED,
    }
)


@attrs.frozen(kw_only=True)
class HandlerResult:
    """The result of one handler run, to acknowledge under the claim's lease token.
    `result_json` and `error_details_json` are already encoded; `batch_id` is the
    command's batch, as claimed: an ack that would leave a member waiting takes its
    batch's cancel lock first, and cancels the member instead if the batch was canceled."""

    domain: str
    command_id: UUID
    lease_token: UUID
    outcome: Outcome
    batch_id: UUID | None = None
    result_json: str | None = None
    retry_delay: float | None = None
    error_type: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_details_json: str | None = None
    # for events only, never written: what ran, and for how long (seconds)
    command_type: str = ""
    attempt: int = 0
    duration: float = 0.0


async def claim_commands(
    conn: Connection,
    domain: str,
    *,
    limit: int,
    visibility_timeout: float,
    default_max_attempts: int,
) -> list[ClaimedCommand]:
    """Claim up to `limit` visible commands (SKIP LOCKED), oldest first.

    A command whose lease expired after its last allowed attempt is not claimed: it moves
    to the troubleshooting queue (RETRY_EXHAUSTED, code LEASE_EXPIRED) in the same statement.
    """
    rows = await conn.fetch_all(
        CLAIM_COMMANDS,
        {
            "domain": domain,
            "limit": limit,
            "visibility_timeout": visibility_timeout,
            "default_max_attempts": default_max_attempts,
        },
    )
    return [ClaimedCommand.from_row(row) for row in rows]


async def extend_leases_if_claimed(
    conn: Connection, domain: str, claims: Sequence[ClaimedCommand], visibility_timeout: float
) -> int:
    """Push back the leases still held by these claims; return how many were extended."""
    return await conn.execute(
        EXTEND_LEASES_IF_CLAIMED, _lease_params(domain, claims, visibility_timeout)
    )


async def release_if_claimed(
    conn: Connection, domain: str, claims: Sequence[ClaimedCommand]
) -> int:
    """Make claimed commands visible again at once (clean stop); the attempt is not counted.
    A member of a canceled batch is canceled instead. Returns how many were released."""
    params = _lease_params(domain, claims, 0.0)
    async with conn.transaction():
        await conn.execute(
            LOCK_BATCHES_AGAINST_CANCEL,
            {"domain": [domain] * len(claims), "command_id": params["command_ids"]},
        )
        row = await conn.fetch_one(RELEASE_IF_CLAIMED, params)
    assert row is not None
    return int(row["released"])


def _lease_params(
    domain: str, claims: Sequence[ClaimedCommand], visibility_timeout: float
) -> dict[str, Any]:
    return {
        "domain": domain,
        "command_ids": [c.command.command_id for c in claims],
        "lease_tokens": [c.lease_token for c in claims],
        "visibility_timeout": visibility_timeout,
    }


class CommittingConnection(Protocol):
    """A connection in a transaction that it can commit together with one statement."""

    async def fetch_all_and_commit(self, sql: str, params: Params) -> list[Row]: ...


async def ack_if_claimed(conn: Connection, results: Sequence[HandlerResult]) -> list[CommandChange]:
    """Write many results in one statement; results whose lease was lost are skipped.

    Writes each command's new state, its audit event and, for a terminal outcome with a
    `reply_to`, exactly one reply (and a NOTIFY on `Channel.REPLY` with the queue name).
    A retry or a move to the TSQ of a member of a canceled batch cancels it instead; when
    there are such outcomes of batch members, the statement runs in a transaction that
    first share-locks their batches against a cancel.
    """
    params = _ack_params(results)
    if not any(r.batch_id is not None and r.outcome.status in _WAITING for r in results):
        return CommandChange.from_rows(await conn.fetch_all(ACK_IF_CLAIMED, params))
    async with conn.transaction():
        await conn.execute(LOCK_BATCHES_AGAINST_CANCEL, params)
        return CommandChange.from_rows(await conn.fetch_all(ACK_IF_CLAIMED, params))


async def lock_if_claimed(conn: Connection, claim: ClaimedCommand) -> bool:
    """Lock the claimed command's row in the caller's transaction; False if the claim's
    lease was lost. Heartbeats and releases skip the row from then on (SKIP LOCKED)."""
    rows = await conn.fetch_all(
        LOCK_IF_CLAIMED,
        {
            "domain": claim.command.domain,
            "command_id": claim.command.command_id,
            "lease_token": claim.lease_token,
        },
    )
    return bool(rows)


async def complete_and_commit(
    conn: CommittingConnection, result: HandlerResult
) -> list[CommandChange]:
    """Write one COMPLETED result, as `ack_if_claimed` would, and COMMIT the transaction
    it is in: one round trip. The caller holds the claim's row locked (`lock_if_claimed`),
    so the result is written: what commits with it is the completion's."""
    if result.outcome is not Outcome.COMPLETED:
        raise InvalidOperationError(f"only COMPLETED results commit so, not {result.outcome}")
    params = {
        "domain": result.domain,
        "command_id": result.command_id,
        "lease_token": result.lease_token,
        "result": result.result_json,
    }
    rows = await conn.fetch_all_and_commit(COMPLETE_IF_CLAIMED, params)
    return CommandChange.from_rows(rows)


def _ack_params(results: Sequence[HandlerResult]) -> dict[str, Any]:
    results = sorted(results, key=lambda r: (r.domain, r.command_id.int))
    return {
        "domain": [r.domain for r in results],
        "command_id": [r.command_id for r in results],
        "lease_token": [r.lease_token for r in results],
        "batch_id": [r.batch_id for r in results],
        "status": [r.outcome.status for r in results],
        "event": [r.outcome.event for r in results],
        "retry_delay": [r.retry_delay for r in results],
        "result": [r.result_json for r in results],
        "error_type": [r.error_type for r in results],
        "error_code": [r.error_code for r in results],
        "error_message": [r.error_message for r in results],
        "error_details": [r.error_details_json for r in results],
    }
