-- Statements of triobus.persistence.gauges, rendered by test_statements.py.

-- name: REFRESH_GAUGES
WITH lock AS (
    SELECT pg_try_advisory_xact_lock(%(key)s) AS got
), due AS (
    SELECT 1 FROM lock WHERE got AND NOT EXISTS (
        SELECT 1 FROM triobus.gauge_snapshot
        WHERE computed_at > now() - make_interval(secs => %(max_age)s))
), counted AS (
    SELECT domain, status, count(*) AS commands,
           extract(epoch FROM now() - min(visible_at)
               FILTER (WHERE status = 'PENDING' AND visible_at <= now()))::float8
               AS oldest_runnable_seconds
    FROM triobus.command
    WHERE status IN ('PENDING', 'IN_PROGRESS') AND EXISTS (SELECT 1 FROM due)
    GROUP BY domain, status
    UNION ALL
    SELECT domain, status, count(*), NULL
    FROM triobus.command
    WHERE status = 'IN_TROUBLESHOOTING_QUEUE' AND EXISTS (SELECT 1 FROM due)
    GROUP BY domain, status
)
INSERT INTO triobus.gauge_snapshot AS g (only_row, computed_at, gauges)
SELECT true, now(), coalesce(
    (SELECT jsonb_agg(jsonb_build_object('domain', domain, 'status', status,
         'commands', commands, 'oldest_runnable_seconds', oldest_runnable_seconds)
         ORDER BY domain, status) FROM counted),
    '[]'::jsonb)
FROM due
ON CONFLICT (only_row) DO UPDATE SET computed_at = EXCLUDED.computed_at, gauges = EXCLUDED.gauges
RETURNING computed_at;

-- name: SELECT_GAUGES
SELECT computed_at, gauges FROM triobus.gauge_snapshot;
