-- Statements of triobus.persistence.batches, rendered by test_statements.py.

-- name: COPY_COMMANDS
COPY triobus.command
    (domain, command_id, command_type, data, correlation_id, reply_to, max_attempts,
     batch_id, visible_at, trace_context)
FROM STDIN (FORMAT BINARY);

-- name: INSERT_BATCH
INSERT INTO triobus.batch (domain, batch_id, name, custom_data, total_count, follow_ups, is_open)
VALUES (%s, %s, %s, %s::jsonb, %s, %s::jsonb, %s)
ON CONFLICT DO NOTHING
RETURNING created_at;

-- name: SELECT_BATCH
SELECT * FROM triobus.batch WHERE domain = %s AND batch_id = %s;

-- name: SELECT_BATCHES
SELECT * FROM triobus.batch
WHERE domain = %(domain)s AND (%(status)s::text IS NULL OR status = %(status)s::text)
ORDER BY created_at DESC, batch_id LIMIT %(limit)s OFFSET %(offset)s;

-- name: SELECT_FINAL_BATCHES
SELECT b.domain, b.batch_id FROM triobus.batch b
JOIN unnest(%s::text[], %s::uuid[]) AS k(domain, batch_id)
  ON b.domain = k.domain AND b.batch_id = k.batch_id
WHERE b.status IN ('COMPLETED', 'COMPLETED_WITH_FAILURES');

-- name: SELECT_FIRST_STORED_COMMAND
SELECT command_id FROM triobus.command WHERE domain = %s AND command_id = ANY(%s) LIMIT 1;

-- name: SENT_EVENTS_OF_BATCH
WITH notified AS (SELECT pg_notify('triobus_command', %(domain)s))
INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, 'SENT',
           jsonb_build_object('command_type', command_type, 'correlation_id', correlation_id,
                              'reply_to', reply_to, 'max_attempts', max_attempts,
                              'visible_at', visible_at,
                              'batch_id', batch_id)
    FROM triobus.command, notified WHERE domain = %(domain)s AND batch_id = %(batch_id)s;
