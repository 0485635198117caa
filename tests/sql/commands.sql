-- Statements of triobus.persistence.commands, rendered by test_statements.py.

-- name: COUNT_RUNNABLE
SELECT count(*) AS runnable FROM triobus.command
WHERE domain = %s AND (status = 'IN_PROGRESS'
                       OR (status = 'PENDING' AND visible_at <= now()));

-- name: INSERT_COMMAND
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
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, 'SENT',
           jsonb_build_object('command_type', command_type, 'correlation_id', correlation_id,
                              'reply_to', reply_to, 'max_attempts', max_attempts,
                              'visible_at', visible_at)
    FROM inserted
)
SELECT command_id, pg_notify('triobus_command', domain) FROM inserted;

-- name: SELECT_COMMAND
SELECT * FROM triobus.command WHERE domain = %s AND command_id = %s;

-- name: SELECT_COMMANDS
SELECT * FROM triobus.command WHERE domain = %(domain)s AND status = %(status)s AND command_type = %(command_type)s AND correlation_id = %(correlation_id)s AND batch_id = %(batch_id)s AND created_at > %(created_after)s AND created_at < %(created_before)s
ORDER BY created_at DESC, command_id LIMIT %(limit)s OFFSET %(offset)s;

-- name: SELECT_DOMAIN_STATISTICS
SELECT domain,
       count(*) FILTER (WHERE status = 'PENDING') AS pending,
       count(*) FILTER (WHERE status = 'IN_PROGRESS') AS in_progress,
       count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
       count(*) FILTER (WHERE status = 'FAILED') AS failed,
       count(*) FILTER (WHERE status = 'CANCELED') AS canceled,
       count(*) FILTER (WHERE status = 'IN_TROUBLESHOOTING_QUEUE') AS in_troubleshooting_queue,
       extract(epoch FROM now() - min(visible_at) FILTER (
           WHERE status = 'PENDING' AND visible_at <= now()
       ))::float8 AS oldest_pending_seconds
FROM triobus.command
WHERE %(domain)s::text IS NULL OR domain = %(domain)s
GROUP BY domain ORDER BY domain;
