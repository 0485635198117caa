-- Statements of triobus.persistence.gauges, rendered by test_statements.py.

-- name: REFRESH_GAUGES
WITH RECURSIVE lock AS (
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
), domains AS (
    (SELECT domain FROM triobus.command WHERE EXISTS (SELECT 1 FROM due) ORDER BY domain LIMIT 1)
    UNION ALL
    SELECT (SELECT c.domain FROM triobus.command c WHERE c.domain > d.domain
            ORDER BY c.domain LIMIT 1)
    FROM domains d WHERE d.domain IS NOT NULL
), finished AS (
    SELECT domain, count_alone + count_in_batch AS commands FROM (
        SELECT d.domain,
               (SELECT count(*) FROM triobus.command c
                WHERE c.domain = d.domain AND c.batch_id IS NULL
                  AND c.finished_at > now() - interval '1 minute') AS count_alone,
               (SELECT count(*) FROM triobus.command c
                WHERE c.domain = d.domain AND c.batch_id IS NOT NULL
                  AND c.finished_at > now() - interval '1 minute') AS count_in_batch
        FROM domains d
    ) f WHERE count_alone + count_in_batch > 0
)
INSERT INTO triobus.gauge_snapshot AS g (only_row, computed_at, gauges, finished_last_minute)
SELECT true, now(), coalesce(
    (SELECT jsonb_agg(jsonb_build_object('domain', domain, 'status', status,
         'commands', commands, 'oldest_runnable_seconds', oldest_runnable_seconds)
         ORDER BY domain, status) FROM counted),
    '[]'::jsonb),
    coalesce((SELECT jsonb_object_agg(domain, commands) FROM finished), '{}'::jsonb)
FROM due
ON CONFLICT (only_row) DO UPDATE SET computed_at = EXCLUDED.computed_at,
    gauges = EXCLUDED.gauges, finished_last_minute = EXCLUDED.finished_last_minute
RETURNING computed_at;

-- name: SELECT_GAUGES
SELECT computed_at, gauges, finished_last_minute FROM triobus.gauge_snapshot;
