"""How status changes of batch members move their batch's counts and complete the batch.

Counts are exact at every commit (invariant 2) because every statement that changes the
status of commands ends with the CTEs `batch_count_ctes` writes, so the count changes
commit with the status changes. Each changed command is listed as a `StatusChange` (from
one status to another); a batch column counts the members in one status (`COUNTED`), so
a change adds one to the column of its new status and takes one from its old status's.

The CTEs lock the batch rows that change in (domain, batch_id) order, so concurrent
statements never deadlock on them. They start a batch at the first claim of a member
(IN_PROGRESS, one BATCH_STARTED event) and complete it in the statement that makes its
last open member terminal (invariant 3): final status and completed_at set, one
BATCH_COMPLETED event with the final counts, and a NOTIFY on `Channel.BATCH`. A command
in the troubleshooting queue is not terminal: it holds its batch open.

A statement built on these CTEs closes with `select_changes(source)`, whose rows are
`CommandChange`s.
"""

from __future__ import annotations

import attrs

from triobus.persistence.audit import insert_sent_events
from triobus.persistence.literals import literal, literal_list
from triobus.persistence.notifications import Channel, batch_payload_sql, notify_sql
from triobus.persistence.records import (
    AuditEventType,
    BatchStatus,
    CommandStatus,
    FollowUpEvent,
)

# The batch column counting the members in each counted status; the others are open.
COUNTED = {
    CommandStatus.COMPLETED: "completed_count",
    CommandStatus.FAILED: "failed_count",
    CommandStatus.CANCELED: "canceled_count",
    CommandStatus.IN_TROUBLESHOOTING_QUEUE: "in_troubleshooting_count",
}
FINAL_BATCH_STATUSES = literal_list(s for s in BatchStatus if s.is_final)


@attrs.frozen
class StatusChange:
    """The commands of CTE `source` moving from status `old` to status `new`: each an
    SQL expression over `source`'s columns, or `literal(CommandStatus.X)`."""

    source: str
    old: str
    new: str


def batch_count_ctes(*changes: StatusChange, evaluated: str | None = None) -> str:
    """The CTEs applying `changes` to their batches: `status_changes` lists them,
    `batch_deltas` sums each counted column's change per batch (`batch_delta_sums` adds
    the terminal and the failed-or-canceled sums), `batch_locked` locks the rows that
    change, `batch_updated` has a row per changed batch with `newly_started`,
    `newly_failed` and `newly_completed` flags, `batch_audit` writes their events and
    `batch_follow_ups` the follow-up commands of those events (`follow_up_sent` their
    SENT events and NOTIFY).

    `evaluated` names a CTE of (domain, batch_id) whose batches are locked and completed
    if they are done even when no member changes (a batch just closed or canceled)."""
    evaluate = ", false AS evaluate" if evaluated else ""
    selects = [
        f"SELECT domain, batch_id, {c.old} AS old_status, {c.new} AS new_status{evaluate}"
        f"\n    FROM {c.source}"
        for c in changes
    ]
    if evaluated:
        unchanged = literal(CommandStatus.PENDING)  # not counted: every delta is 0
        selects.append(
            f"SELECT domain, batch_id, {unchanged} AS old_status, {unchanged} AS new_status,"
            f" true AS evaluate\n    FROM {evaluated}"
        )
    listed = "\n    UNION ALL\n    ".join(selects)
    deltas = ",\n           ".join(
        f"sum((new_status = {literal(status)})::int\n"
        f"               - (old_status = {literal(status)})::int)::int AS {column}"
        for status, column in COUNTED.items()
    )
    terminal = [column for status, column in COUNTED.items() if status.is_terminal]
    failures = [c for c in terminal if c != COUNTED[CommandStatus.COMPLETED]]
    done = (
        "NOT b.is_open AND "
        + " + ".join(f"b.{column}" for column in terminal)
        + " + d.terminal_delta = b.total_count"
    )
    counts = ",\n        ".join(f"{c} = b.{c} + d.{c}" for c in COUNTED.values())
    final_counts = ",\n                              ".join(f"'{c}', {c}" for c in terminal)
    changed = "\n       OR ".join(f"d.{column} <> 0" for column in COUNTED.values())
    if evaluated:
        changed += "\n       OR d.evaluate"
    tsq = COUNTED[CommandStatus.IN_TROUBLESHOOTING_QUEUE]
    batch_fields = ", ".join(
        f"'{column}', bu.{column}" for column in ("total_count", *COUNTED.values())
    )
    notify = notify_sql(Channel.BATCH, batch_payload_sql("domain", "subject_id"))
    return f"""status_changes AS (
    {listed}
), batch_deltas AS (
    SELECT domain, batch_id, bool_or(new_status = {literal(CommandStatus.IN_PROGRESS)}) AS started,
           {"bool_or(evaluate) AS evaluate," if evaluated else ""}
           {deltas}
    FROM status_changes WHERE batch_id IS NOT NULL
    GROUP BY domain, batch_id
), batch_delta_sums AS (
    SELECT *, {" + ".join(terminal)} AS terminal_delta,
           {" + ".join(failures)} AS failures_delta
    FROM batch_deltas
), batch_locked AS (
    SELECT b.domain, b.batch_id, b.started_at IS NULL AS unstarted,
           b.first_failure_at IS NULL AS unfailed,
           b.status IN {FINAL_BATCH_STATUSES} AS was_final
    FROM triobus.batch b
    JOIN batch_delta_sums d ON b.domain = d.domain AND b.batch_id = d.batch_id
    WHERE {changed}
       OR (d.started AND b.started_at IS NULL)  -- only rows that change are locked
    ORDER BY b.domain, b.batch_id
    FOR UPDATE OF b
), batch_updated AS (
    UPDATE triobus.batch b
    SET {counts},
        started_at = CASE WHEN l.unstarted AND d.started THEN now() ELSE b.started_at END,
        first_failure_at = CASE WHEN l.unfailed AND (d.failures_delta > 0 OR d.{tsq} > 0)
                                THEN now() ELSE b.first_failure_at END,
        status = CASE
            WHEN {done}
                 AND {" + ".join(f"b.{c}" for c in failures)} + d.failures_delta > 0
                THEN {literal(BatchStatus.COMPLETED_WITH_FAILURES)}
            WHEN {done}
                THEN {literal(BatchStatus.COMPLETED)}
            WHEN l.unstarted AND d.started THEN {literal(BatchStatus.IN_PROGRESS)}
            ELSE b.status END,
        completed_at = CASE WHEN {done}
                            THEN now() ELSE b.completed_at END
    FROM batch_delta_sums d, batch_locked l
    WHERE b.domain = d.domain AND b.batch_id = d.batch_id
      AND l.domain = d.domain AND l.batch_id = d.batch_id
    RETURNING b.*, l.unstarted AND d.started AS newly_started,
              l.unfailed AND b.first_failure_at IS NOT NULL AS newly_failed,
              NOT l.was_final AND b.status IN {FINAL_BATCH_STATUSES} AS newly_completed
), batch_audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, batch_id, {literal(AuditEventType.BATCH_STARTED)},
           jsonb_build_object('total_count', total_count)
    FROM batch_updated WHERE newly_started
    UNION ALL
    SELECT domain, batch_id, {literal(AuditEventType.BATCH_COMPLETED)},
           jsonb_build_object('status', status, 'total_count', total_count,
                              {final_counts})
    FROM batch_updated WHERE newly_completed
    RETURNING CASE WHEN event_type = {literal(AuditEventType.BATCH_COMPLETED)}
                   THEN {notify} END
), batch_follow_ups AS (
    INSERT INTO triobus.command
        (domain, command_id, command_type, data, correlation_id, max_attempts)
    SELECT f.spec->>'domain', (f.spec->>'command_id')::uuid, f.spec->>'command_type',
           f.spec->'data' || jsonb_build_object('batch', jsonb_build_object(
               'domain', bu.domain, 'batch_id', bu.batch_id, 'event', f.event,
               'status', bu.status, {batch_fields},
               'canceled', bu.canceled_at IS NOT NULL, 'cancel_reason', bu.cancel_reason)),
           bu.batch_id, (f.spec->>'max_attempts')::int
    FROM batch_updated bu, jsonb_each(bu.follow_ups) AS f(event, spec)
    WHERE CASE f.event
        WHEN {literal(FollowUpEvent.ON_COMPLETE)} THEN bu.newly_completed
        WHEN {literal(FollowUpEvent.ON_SUCCESS)} THEN bu.newly_completed
            AND bu.status = {literal(BatchStatus.COMPLETED)} AND bu.canceled_at IS NULL
        WHEN {literal(FollowUpEvent.ON_FAILURE)} THEN bu.newly_failed
        ELSE false END
    ON CONFLICT DO NOTHING  -- the id is the (batch, event)'s: never stored twice
    RETURNING domain, command_id, command_type, correlation_id, reply_to, max_attempts,
              visible_at, data
), follow_up_sent AS (
    {insert_sent_events("batch_follow_ups", follow_up=True)}
    RETURNING {notify_sql(Channel.COMMAND, "domain")}
)"""


# A cancel and the statements that would leave a member PENDING or in the TSQ (retries and
# TSQ moves in acks, releases) exclude each other with a transaction-level advisory lock
# on the batch, taken before anything else in their transaction: exclusive by the cancel,
# shared by the others. So a statement reads whether the batch is canceled with a snapshot
# taken after any cancel of it committed, or the cancel waits until it has committed and
# then sees (and cancels) what it left waiting. Row locks are never held while waiting for
# it, so it adds no deadlock. (Two 32-bit keys: a space apart from the migrations' lock.)
CANCEL_LOCK_CLASS = 0x7462  # "tb"


def cancel_lock_key_sql(domain: str, batch_id: str) -> str:
    """The advisory lock key arguments of a batch (two SQL expressions)."""
    return f"{CANCEL_LOCK_CLASS}, hashtext({domain} || ':' || {batch_id}::text)"


def of_canceled_batch(member: str) -> str:
    """An SQL condition: the row alias `member` (with a command's `domain` and `batch_id`)
    is of a canceled batch. Read under the batch's shared cancel lock (see
    `CANCEL_LOCK_CLASS`)."""
    return f"""({member}.batch_id IS NOT NULL AND EXISTS (
            SELECT FROM triobus.batch cb
            WHERE cb.domain = {member}.domain AND cb.batch_id = {member}.batch_id
              AND cb.canceled_at IS NOT NULL))"""


def select_changes(source: str, *extra_columns: str) -> str:
    """The closing SELECT: a `CommandChange` row (and `extra_columns`) per command of
    `source`, with its batch's counts when the statement changed them."""
    extra = "".join(f", {column}" for column in extra_columns)
    return f"""SELECT c.domain, c.command_id, c.status, c.batch_id,
       coalesce(bu.newly_completed, false) AS batch_completed,
       bu.completed_count AS batch_completed_count, bu.failed_count AS batch_failed_count,
       bu.canceled_count AS batch_canceled_count,
       bu.in_troubleshooting_count AS batch_in_troubleshooting_count{extra}
FROM {source} c
LEFT JOIN batch_updated bu ON bu.domain = c.domain AND bu.batch_id = c.batch_id"""
