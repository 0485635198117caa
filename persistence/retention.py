"""SQL for retention: removing finished work older than a retention, a bounded chunk at a
time.

What a chunk may remove, and nothing else:

- terminal commands (COMPLETED, FAILED, CANCELED) outside any batch that finished before
  the cutoff, with their audit rows and their reply;
- completed batches that completed before the cutoff, each with all its members (all of
  them terminal: a batch completes only once every member is, and a terminal command
  never changes), their audit rows and replies, and the batch's own audit rows, in one
  statement: no batch's counts ever describe commands that are gone;
- replies created before the reply cutoff (acknowledged ones are deleted at once).

A PENDING, IN_PROGRESS or troubleshooting-queue command is never removed, nor any member
of a batch that has not completed. Each statement takes the oldest first, at most `limit`
commands (or batches), through a partial index of finished rows; a dry run counts what
the same cutoff would remove, without a limit, and removes nothing.

Once a command is removed its id may be sent again: the idempotency of `send` holds for
as long as the command is kept.
"""

from __future__ import annotations

from typing import Any

import attrs

from triobus.persistence.connection import Connection
from triobus.persistence.literals import literal_list
from triobus.persistence.records import AuditEventType


def _domains_of(table: str) -> str:
    """A recursive CTE `{table}_domains` walking the distinct domains of `table` (one of
    ours, a constant) up the leading column of an index, one probe per domain."""
    return f"""{table}_domains(domain) AS (
    SELECT min(domain) FROM triobus.{table}
    UNION ALL
    SELECT (SELECT min(domain) FROM triobus.{table} t WHERE t.domain > d.domain)
    FROM {table}_domains d WHERE d.domain IS NOT NULL
)"""


# Every domain with commands or batches (not a scan of either table).
SELECT_DOMAINS = f"""
WITH RECURSIVE {_domains_of("command")}, {_domains_of("batch")}
SELECT domain FROM command_domains WHERE domain IS NOT NULL
UNION
SELECT domain FROM batch_domains WHERE domain IS NOT NULL
ORDER BY domain
"""

_CUTOFF = "now() - make_interval(secs => %(older_than)s)"
_BATCH_EVENTS = literal_list(e for e in AuditEventType if e.startswith("BATCH_"))

_FINISHED_COMMANDS = f"""
    SELECT domain, command_id FROM triobus.command
    WHERE domain = %(domain)s AND batch_id IS NULL AND finished_at IS NOT NULL
      AND finished_at < {_CUTOFF}"""

_COMPLETED_BATCHES = f"""
    SELECT domain, batch_id FROM triobus.batch
    WHERE domain = %(domain)s AND completed_at IS NOT NULL AND completed_at < {_CUTOFF}"""


def _removal(members: str, *, batches: str | None = None) -> str:
    """The CTEs deleting the commands of CTE `members` (domain, command_id), the audit
    rows of CTE `subjects` (domain, subject_id), the members' replies and, with
    `batches`, the batches of that CTE (domain, batch_id); then the counts."""
    batches_gone = (
        f"""
), batches_gone AS (
    DELETE FROM triobus.batch b USING {batches} d
    WHERE b.domain = d.domain AND b.batch_id = d.batch_id
    RETURNING 1"""
        if batches
        else ""
    )
    batch_count = "(SELECT count(*) FROM batches_gone)" if batches else "0"
    return f"""audit_gone AS (
    DELETE FROM triobus.audit a USING subjects s
    WHERE a.subject_id = s.subject_id AND a.domain = s.domain
      AND (a.event_type IN {_BATCH_EVENTS}) = s.of_batch  -- a batch and a command may share an id
    RETURNING 1
), replies_gone AS (
    DELETE FROM triobus.reply r USING {members} m
    WHERE r.domain = m.domain AND r.command_id = m.command_id
    RETURNING 1
), commands_gone AS (
    DELETE FROM triobus.command c USING {members} m
    WHERE c.domain = m.domain AND c.command_id = m.command_id
    RETURNING 1{batches_gone}
)
SELECT (SELECT count(*) FROM commands_gone) AS commands,
       (SELECT count(*) FROM audit_gone) AS audit_rows,
       (SELECT count(*) FROM replies_gone) AS replies,
       {batch_count} AS batches"""


PRUNE_COMMANDS = f"""
WITH doomed AS ({_FINISHED_COMMANDS}
    ORDER BY finished_at LIMIT %(limit)s
), subjects AS (
    SELECT domain, command_id AS subject_id, false AS of_batch FROM doomed
), {_removal("doomed")}
"""

PRUNE_BATCHES = f"""
WITH doomed_batches AS ({_COMPLETED_BATCHES}
    ORDER BY completed_at LIMIT %(limit)s
), members AS (
    SELECT c.domain, c.command_id FROM triobus.command c
    JOIN doomed_batches b ON c.domain = b.domain AND c.batch_id = b.batch_id
), subjects AS (
    SELECT domain, command_id AS subject_id, false AS of_batch FROM members
    UNION ALL
    SELECT domain, batch_id, true FROM doomed_batches
), {_removal("members", batches="doomed_batches")}
"""

COUNT_PRUNABLE = f"""
WITH doomed AS ({_FINISHED_COMMANDS}
), doomed_batches AS ({_COMPLETED_BATCHES}
), members AS (
    SELECT c.domain, c.command_id FROM triobus.command c
    JOIN doomed_batches b ON c.domain = b.domain AND c.batch_id = b.batch_id
), commands AS (
    SELECT * FROM doomed UNION ALL SELECT * FROM members
)
SELECT (SELECT count(*) FROM commands) AS commands,
       (SELECT count(*) FROM triobus.audit a JOIN commands c
          ON a.domain = c.domain AND a.subject_id = c.command_id
          WHERE a.event_type NOT IN {_BATCH_EVENTS})
       + (SELECT count(*) FROM triobus.audit a JOIN doomed_batches b
          ON a.domain = b.domain AND a.subject_id = b.batch_id
          WHERE a.event_type IN {_BATCH_EVENTS}) AS audit_rows,
       (SELECT count(*) FROM triobus.reply r JOIN commands c
          ON r.domain = c.domain AND r.command_id = c.command_id
          WHERE %(reply_older_than)s::float8 IS NULL  -- else old replies went first
             OR r.created_at >= now() - make_interval(secs => %(reply_older_than)s::float8)
       ) AS replies,
       (SELECT count(*) FROM doomed_batches) AS batches
"""

PRUNE_REPLIES = f"""
WITH doomed AS (
    SELECT reply_id FROM triobus.reply WHERE created_at < {_CUTOFF}
    ORDER BY created_at LIMIT %(limit)s
), gone AS (
    DELETE FROM triobus.reply r USING doomed d WHERE r.reply_id = d.reply_id RETURNING 1
)
SELECT count(*) AS replies FROM gone
"""

COUNT_OLD_REPLIES = f"SELECT count(*) AS replies FROM triobus.reply WHERE created_at < {_CUTOFF}"


@attrs.frozen
class Removed:
    """What a prune removed (or, in a dry run, would remove)."""

    commands: int = 0
    audit_rows: int = 0
    replies: int = 0
    batches: int = 0

    def __add__(self, other: Removed) -> Removed:
        return Removed(
            self.commands + other.commands,
            self.audit_rows + other.audit_rows,
            self.replies + other.replies,
            self.batches + other.batches,
        )

    @property
    def nothing(self) -> bool:
        return self == Removed()


def _removed(row: Any) -> Removed:
    return Removed(
        commands=int(row["commands"]),
        audit_rows=int(row["audit_rows"]),
        replies=int(row["replies"]),
        batches=int(row["batches"]),
    )


async def select_domains(conn: Connection) -> list[str]:
    """Every domain that has commands or batches."""
    return [row["domain"] for row in await conn.fetch_all(SELECT_DOMAINS)]


async def prune_commands(
    conn: Connection, domain: str, *, older_than: float, limit: int
) -> Removed:
    """Remove up to `limit` finished commands of `domain` outside any batch, oldest first."""
    params = {"domain": domain, "older_than": older_than, "limit": limit}
    row = await conn.fetch_one(PRUNE_COMMANDS, params)
    assert row is not None
    return _removed(row)


async def prune_batches(conn: Connection, domain: str, *, older_than: float, limit: int) -> Removed:
    """Remove up to `limit` completed batches of `domain`, each whole, oldest first."""
    params = {"domain": domain, "older_than": older_than, "limit": limit}
    row = await conn.fetch_one(PRUNE_BATCHES, params)
    assert row is not None
    return _removed(row)


async def count_prunable(
    conn: Connection, domain: str, *, older_than: float, reply_older_than: float | None
) -> Removed:
    """What pruning `domain` at this retention would remove now (a dry run), after the
    replies older than `reply_older_than` (if not None) were pruned first."""
    row = await conn.fetch_one(
        COUNT_PRUNABLE,
        {"domain": domain, "older_than": older_than, "reply_older_than": reply_older_than},
    )
    assert row is not None
    return _removed(row)


async def prune_replies(conn: Connection, *, older_than: float, limit: int) -> Removed:
    """Remove up to `limit` unacknowledged replies created before the cutoff, oldest first."""
    row = await conn.fetch_one(PRUNE_REPLIES, {"older_than": older_than, "limit": limit})
    assert row is not None
    return Removed(replies=int(row["replies"]))


async def count_old_replies(conn: Connection, *, older_than: float) -> int:
    row = await conn.fetch_one(COUNT_OLD_REPLIES, {"older_than": older_than})
    assert row is not None
    return int(row["replies"])
