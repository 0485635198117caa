"""SQL for the command table: sending and querying commands.

A send is one statement: the command row and its SENT audit row are inserted together
(so they commit together), and a duplicate `(domain, command_id)` inserts nothing. It
NOTIFYs `Channel.COMMAND` with the domain, so idle workers of that domain wake up.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from triobus.persistence.audit import insert_sent_events
from triobus.persistence.connection import Connection
from triobus.persistence.errors import DuplicateCommandError
from triobus.persistence.literals import literal
from triobus.persistence.new_commands import NewCommand
from triobus.persistence.notifications import Channel, notify_sql
from triobus.persistence.records import (
    CommandMetadata,
    CommandStatus,
    DomainStatistics,
    SendResult,
)
from triobus.persistence.tracing import current_trace_context

INSERT_COMMAND = f"""
WITH inserted AS (
    INSERT INTO triobus.command
        (domain, command_id, command_type, data, correlation_id, reply_to, max_attempts,
         visible_at, trace_context)
    VALUES (%(domain)s, %(command_id)s, %(command_type)s, %(data)s::jsonb,
            %(correlation_id)s, %(reply_to)s, %(max_attempts)s,
            coalesce(%(not_before)s::timestamptz,
                     now() + make_interval(secs => coalesce(%(delay)s::float8, 0))),
            %(trace_context)s::jsonb)
    ON CONFLICT (domain, command_id) DO NOTHING
    RETURNING domain, command_id, command_type, correlation_id, reply_to, max_attempts,
              visible_at
), sent AS (
    {insert_sent_events("inserted", of_batch=False)}
)
SELECT command_id, {notify_sql(Channel.COMMAND, "domain")} FROM inserted
"""

SELECT_COMMAND = "SELECT * FROM triobus.command WHERE domain = %s AND command_id = %s"

# The operator's view of the queue (`triobus stats`): counts per status; it scans the
# domain's commands, so it is for people, not for a loop.
_STATUS_COUNTS = ",\n       ".join(
    f"count(*) FILTER (WHERE status = {literal(status)}) AS {status.lower()}"
    for status in CommandStatus
)
SELECT_DOMAIN_STATISTICS = f"""
SELECT domain,
       {_STATUS_COUNTS},
       extract(epoch FROM now() - min(visible_at) FILTER (
           WHERE status = {literal(CommandStatus.PENDING)} AND visible_at <= now()
       ))::float8 AS oldest_pending_seconds
FROM triobus.command
WHERE %(domain)s::text IS NULL OR domain = %(domain)s
GROUP BY domain ORDER BY domain
"""

# Commands a worker of the domain could run now, or runs: claimable or IN_PROGRESS.
COUNT_RUNNABLE = f"""
SELECT count(*) AS runnable FROM triobus.command
WHERE domain = %s AND (status = {literal(CommandStatus.IN_PROGRESS)}
                       OR (status = {literal(CommandStatus.PENDING)} AND visible_at <= now()))
"""

# query_commands: `{filters}` is the AND of the clauses of the filters given (TRUE when
# none is); each clause is a constant of `COMMAND_FILTERS`, only values come from the caller.
SELECT_COMMANDS = """
SELECT * FROM triobus.command WHERE {filters}
ORDER BY created_at DESC, command_id LIMIT %(limit)s OFFSET %(offset)s
"""

COMMAND_FILTERS = {
    "domain": "domain = %(domain)s",
    "status": "status = %(status)s",
    "command_type": "command_type = %(command_type)s",
    "correlation_id": "correlation_id = %(correlation_id)s",
    "batch_id": "batch_id = %(batch_id)s",
    "created_after": "created_at > %(created_after)s",
    "created_before": "created_at < %(created_before)s",
}


async def insert_command(conn: Connection, command: NewCommand) -> SendResult:
    """Insert a validated command with its SENT audit row, and the trace context of the
    span current now (`tracing.py`).

    Raises DuplicateCommandError if the id is taken, also when two sends race.
    """
    row = await conn.fetch_one(
        INSERT_COMMAND,
        {
            "domain": command.domain,
            "command_id": command.command_id,
            "command_type": command.command_type,
            "data": command.data_json,
            "correlation_id": command.correlation_id,
            "reply_to": command.reply_to,
            "max_attempts": command.max_attempts,
            "delay": command.delay,
            "not_before": command.not_before,
            "trace_context": current_trace_context(),
        },
    )
    if row is None:
        raise DuplicateCommandError(command.domain, command.command_id)
    return SendResult(command.domain, command.command_id, command.correlation_id)


async def select_command(conn: Connection, domain: str, command_id: UUID) -> CommandMetadata | None:
    row = await conn.fetch_one(SELECT_COMMAND, (domain, command_id))
    return None if row is None else CommandMetadata.from_row(row)


async def select_commands(
    conn: Connection,
    *,
    domain: str | None,
    status: CommandStatus | None,
    command_type: str | None,
    correlation_id: UUID | None,
    batch_id: UUID | None,
    created_after: datetime | None,
    created_before: datetime | None,
    limit: int,
    offset: int,
) -> list[CommandMetadata]:
    """Commands matching every given filter, newest first."""
    params: dict[str, object] = {
        "domain": domain,
        "status": status,
        "command_type": command_type,
        "correlation_id": correlation_id,
        "batch_id": batch_id,
        "created_after": created_after,
        "created_before": created_before,
    }
    clauses = [clause for name, clause in COMMAND_FILTERS.items() if params[name] is not None]
    rows = await conn.fetch_all(
        SELECT_COMMANDS.format(filters=" AND ".join(clauses) or "TRUE"),
        {**params, "limit": limit, "offset": offset},
    )
    return [CommandMetadata.from_row(row) for row in rows]


async def count_runnable(conn: Connection, domain: str) -> int:
    """How many commands of `domain` are IN_PROGRESS or PENDING and visible now."""
    rows = await conn.fetch_all(COUNT_RUNNABLE, (domain,))
    return int(rows[0]["runnable"])


async def select_domain_statistics(conn: Connection, domain: str | None) -> list[DomainStatistics]:
    """`DomainStatistics` of `domain`, or of every domain that has commands."""
    rows = await conn.fetch_all(SELECT_DOMAIN_STATISTICS, {"domain": domain})
    return [DomainStatistics.from_row(row) for row in rows]
