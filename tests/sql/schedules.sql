-- Statements of triobus.persistence.schedules, rendered by test_statements.py.

-- name: ADVANCE
UPDATE triobus.schedule
SET sent_through = %(through)s,
    last_tick = CASE WHEN %(sent)s THEN %(through)s ELSE last_tick END
WHERE name = %(name)s AND version = %(version)s AND sent_through < %(through)s
RETURNING name;

-- name: DECLARE_SCHEDULE
INSERT INTO triobus.schedule AS s (name, domain, command_type, cron, timezone, data,
    sent_through)
VALUES (%(name)s, %(domain)s, %(command_type)s, %(cron)s, %(timezone)s, %(data)s::jsonb,
    %(now)s)
ON CONFLICT (name) DO UPDATE SET
    domain = EXCLUDED.domain, command_type = EXCLUDED.command_type, cron = EXCLUDED.cron,
    timezone = EXCLUDED.timezone, data = EXCLUDED.data, version = s.version + 1,
    declared_at = now(), sent_through = greatest(s.sent_through, EXCLUDED.sent_through)
WHERE (s.domain, s.command_type, s.cron, s.timezone, s.data)
    IS DISTINCT FROM (EXCLUDED.domain, EXCLUDED.command_type, EXCLUDED.cron,
        EXCLUDED.timezone, EXCLUDED.data)
RETURNING name, domain, command_type, cron, timezone, data, version, declared_at, sent_through, last_tick;

-- name: SELECT_SCHEDULE
SELECT name, domain, command_type, cron, timezone, data, version, declared_at, sent_through, last_tick FROM triobus.schedule WHERE name = %s;

-- name: SELECT_SCHEDULES
SELECT name, domain, command_type, cron, timezone, data, version, declared_at, sent_through, last_tick FROM triobus.schedule ORDER BY name;
