"""SQL that only the web console needs: which domains and reply queues exist, and
estimates of how many commands are stored (in all, and per domain and status). Each
reads an index a few entries at a time (a loose index scan: one probe per distinct
value) or the planner's statistics, never a table, so the console's pages stay fast
however many commands are stored.
"""

from __future__ import annotations

from triobus.persistence.connection import Connection


def _distinct(table: str, column: str) -> str:
    """The distinct values of `column`, the leading column of an index of `table`."""
    return f"""
WITH RECURSIVE found AS (
    (SELECT {column} AS value FROM {table} ORDER BY {column} LIMIT 1)
    UNION ALL
    SELECT (SELECT t.{column} FROM {table} t WHERE t.{column} > f.value
            ORDER BY t.{column} LIMIT 1)
    FROM found f WHERE f.value IS NOT NULL
)
SELECT value FROM found WHERE value IS NOT NULL"""


SELECT_DOMAINS = f"""
SELECT value AS domain FROM ({_distinct("triobus.command", "domain")}) c
UNION
SELECT value FROM ({_distinct("triobus.batch", "domain")}) b
ORDER BY 1
"""

SELECT_REPLY_QUEUES = _distinct("triobus.reply", "queue") + " ORDER BY value"

# reltuples: the row count as of the last VACUUM or ANALYZE (-1: never counted).
ESTIMATE_COMMANDS = """
SELECT reltuples::bigint AS estimate FROM pg_class WHERE oid = 'triobus.command'::regclass
"""


# The (domain, status) pairs that ANALYZE found most common, each with its estimated rows
# (its share of the sample times the table's estimated rows): migration 008's statistics.
ESTIMATE_BY_STATUS = """
SELECT s.most_common_vals[i][1] AS domain, s.most_common_vals[i][2] AS status,
       (s.most_common_freqs[i] * c.reltuples)::bigint AS estimate
FROM pg_stats_ext s
JOIN pg_class c ON c.oid = 'triobus.command'::regclass
CROSS JOIN LATERAL generate_subscripts(s.most_common_vals, 1) AS i
WHERE s.statistics_schemaname = 'triobus' AND s.statistics_name = 'command_domain_status'
  AND c.reltuples > 0
"""


async def select_domains(conn: Connection) -> list[str]:
    """Every domain that has a command or a batch, in order."""
    return [row["domain"] for row in await conn.fetch_all(SELECT_DOMAINS)]


async def select_reply_queues(conn: Connection) -> list[str]:
    """Every reply queue holding a reply, in order."""
    return [row["value"] for row in await conn.fetch_all(SELECT_REPLY_QUEUES)]


async def estimate_by_status(conn: Connection) -> dict[tuple[str, str], int]:
    """Estimated commands per (domain, status), as of the last ANALYZE; a pair too rare
    to be among the most common is absent."""
    rows = await conn.fetch_all(ESTIMATE_BY_STATUS)
    return {(row["domain"], row["status"]): int(row["estimate"]) for row in rows}


async def estimate_commands(conn: Connection) -> int | None:
    """The planner's estimate of the commands stored; None before the table's first
    VACUUM or ANALYZE (autovacuum's, usually)."""
    row = await conn.fetch_one(ESTIMATE_COMMANDS)
    return None if row is None or row["estimate"] < 0 else int(row["estimate"])
