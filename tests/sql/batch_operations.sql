-- Statements of triobus.persistence.batch_operations, rendered by test_statements.py.

-- name: CANCEL_WAITING_MEMBERS
WITH evaluated AS (SELECT %(domain)s::text AS domain, %(batch_id)s::uuid AS batch_id), waiting AS (
    SELECT domain, command_id, status FROM triobus.command
    WHERE domain = %(domain)s AND batch_id = %(batch_id)s AND status IN ('PENDING', 'IN_TROUBLESHOOTING_QUEUE')
    FOR UPDATE SKIP LOCKED  -- its TSQ members it holds already; a PENDING one held is claimed
), changed AS (
    UPDATE triobus.command c
    SET status = 'CANCELED', lease_token = NULL, finished_at = now(),
        updated_at = now()
    FROM waiting w WHERE c.domain = w.domain AND c.command_id = w.command_id
    RETURNING c.domain, c.command_id, c.batch_id, c.status, c.reply_to, c.correlation_id,
              w.status AS old_status
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, 'CANCELED_WITH_BATCH',
           jsonb_build_object('operator', %(operator)s::text, 'reason', %(reason)s::text,
                              'instead_of', old_status)
    FROM changed
), replies AS (
    INSERT INTO triobus.reply (queue, domain, command_id, correlation_id, outcome, data)
    SELECT reply_to, domain, command_id, correlation_id,
           'CANCELED',
           jsonb_build_object('reason', %(reason)s::text)
    FROM changed
    WHERE reply_to IS NOT NULL
    ON CONFLICT ON CONSTRAINT reply_once_per_command DO NOTHING
    RETURNING pg_notify('triobus_reply', queue)
), status_changes AS (
    SELECT domain, batch_id, old_status AS old_status, status AS new_status, false AS evaluate
    FROM changed
    UNION ALL
    SELECT domain, batch_id, 'PENDING' AS old_status, 'PENDING' AS new_status, true AS evaluate
    FROM evaluated
), batch_deltas AS (
    SELECT domain, batch_id, bool_or(new_status = 'IN_PROGRESS') AS started,
           bool_or(evaluate) AS evaluate,
           sum((new_status = 'COMPLETED')::int
               - (old_status = 'COMPLETED')::int)::int AS completed_count,
           sum((new_status = 'FAILED')::int
               - (old_status = 'FAILED')::int)::int AS failed_count,
           sum((new_status = 'CANCELED')::int
               - (old_status = 'CANCELED')::int)::int AS canceled_count,
           sum((new_status = 'IN_TROUBLESHOOTING_QUEUE')::int
               - (old_status = 'IN_TROUBLESHOOTING_QUEUE')::int)::int AS in_troubleshooting_count
    FROM status_changes WHERE batch_id IS NOT NULL
    GROUP BY domain, batch_id
), batch_delta_sums AS (
    SELECT *, completed_count + failed_count + canceled_count AS terminal_delta,
           failed_count + canceled_count AS failures_delta
    FROM batch_deltas
), batch_locked AS (
    SELECT b.domain, b.batch_id, b.started_at IS NULL AS unstarted,
           b.first_failure_at IS NULL AS unfailed,
           b.status IN ('COMPLETED', 'COMPLETED_WITH_FAILURES') AS was_final
    FROM triobus.batch b
    JOIN batch_delta_sums d ON b.domain = d.domain AND b.batch_id = d.batch_id
    WHERE d.completed_count <> 0
       OR d.failed_count <> 0
       OR d.canceled_count <> 0
       OR d.in_troubleshooting_count <> 0
       OR d.evaluate
       OR (d.started AND b.started_at IS NULL)  -- only rows that change are locked
    ORDER BY b.domain, b.batch_id
    FOR UPDATE OF b
), batch_updated AS (
    UPDATE triobus.batch b
    SET completed_count = b.completed_count + d.completed_count,
        failed_count = b.failed_count + d.failed_count,
        canceled_count = b.canceled_count + d.canceled_count,
        in_troubleshooting_count = b.in_troubleshooting_count + d.in_troubleshooting_count,
        started_at = CASE WHEN l.unstarted AND d.started THEN now() ELSE b.started_at END,
        first_failure_at = CASE WHEN l.unfailed AND (d.failures_delta > 0 OR d.in_troubleshooting_count > 0)
                                THEN now() ELSE b.first_failure_at END,
        status = CASE
            WHEN NOT b.is_open AND b.completed_count + b.failed_count + b.canceled_count + d.terminal_delta = b.total_count
                 AND b.failed_count + b.canceled_count + d.failures_delta > 0
                THEN 'COMPLETED_WITH_FAILURES'
            WHEN NOT b.is_open AND b.completed_count + b.failed_count + b.canceled_count + d.terminal_delta = b.total_count
                THEN 'COMPLETED'
            WHEN l.unstarted AND d.started THEN 'IN_PROGRESS'
            ELSE b.status END,
        completed_at = CASE WHEN NOT b.is_open AND b.completed_count + b.failed_count + b.canceled_count + d.terminal_delta = b.total_count
                            THEN now() ELSE b.completed_at END
    FROM batch_delta_sums d, batch_locked l
    WHERE b.domain = d.domain AND b.batch_id = d.batch_id
      AND l.domain = d.domain AND l.batch_id = d.batch_id
    RETURNING b.*, l.unstarted AND d.started AS newly_started,
              l.unfailed AND b.first_failure_at IS NOT NULL AS newly_failed,
              NOT l.was_final AND b.status IN ('COMPLETED', 'COMPLETED_WITH_FAILURES') AS newly_completed
), batch_audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, batch_id, 'BATCH_STARTED',
           jsonb_build_object('total_count', total_count)
    FROM batch_updated WHERE newly_started
    UNION ALL
    SELECT domain, batch_id, 'BATCH_COMPLETED',
           jsonb_build_object('status', status, 'total_count', total_count,
                              'completed_count', completed_count,
                              'failed_count', failed_count,
                              'canceled_count', canceled_count)
    FROM batch_updated WHERE newly_completed
    RETURNING CASE WHEN event_type = 'BATCH_COMPLETED'
                   THEN pg_notify('triobus_batch', domain || ':' || subject_id) END
), batch_follow_ups AS (
    INSERT INTO triobus.command
        (domain, command_id, command_type, data, correlation_id, max_attempts)
    SELECT f.spec->>'domain', (f.spec->>'command_id')::uuid, f.spec->>'command_type',
           f.spec->'data' || jsonb_build_object('batch', jsonb_build_object(
               'domain', bu.domain, 'batch_id', bu.batch_id, 'event', f.event,
               'status', bu.status, 'total_count', bu.total_count, 'completed_count', bu.completed_count, 'failed_count', bu.failed_count, 'canceled_count', bu.canceled_count, 'in_troubleshooting_count', bu.in_troubleshooting_count,
               'canceled', bu.canceled_at IS NOT NULL, 'cancel_reason', bu.cancel_reason)),
           bu.batch_id, (f.spec->>'max_attempts')::int
    FROM batch_updated bu, jsonb_each(bu.follow_ups) AS f(event, spec)
    WHERE CASE f.event
        WHEN 'ON_COMPLETE' THEN bu.newly_completed
        WHEN 'ON_SUCCESS' THEN bu.newly_completed
            AND bu.status = 'COMPLETED' AND bu.canceled_at IS NULL
        WHEN 'ON_FAILURE' THEN bu.newly_failed
        ELSE false END
    ON CONFLICT DO NOTHING  -- the id is the (batch, event)'s: never stored twice
    RETURNING domain, command_id, command_type, correlation_id, reply_to, max_attempts,
              visible_at, data
), follow_up_sent AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, 'SENT',
           jsonb_build_object('command_type', command_type, 'correlation_id', correlation_id,
                              'reply_to', reply_to, 'max_attempts', max_attempts,
                              'visible_at', visible_at,
                              'follow_up_of', data->'batch'->'batch_id',
                              'follow_up_event', data->'batch'->'event')
    FROM batch_follow_ups
    RETURNING pg_notify('triobus_command', domain)
)
SELECT count(*) AS canceled, coalesce((SELECT newly_completed FROM batch_updated), false) AS completed FROM changed;

-- name: CLOSE_OPEN_BATCH
WITH closed AS (
    UPDATE triobus.batch SET is_open = false
    WHERE domain = %(domain)s AND batch_id = %(batch_id)s AND is_open
    RETURNING domain, batch_id, total_count
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, batch_id, 'BATCH_CLOSED',
           jsonb_build_object('total_count', total_count)
    FROM closed
)
SELECT 1 AS closed FROM closed;

-- name: COMPLETE_IF_DONE
WITH evaluated AS (SELECT %(domain)s::text AS domain, %(batch_id)s::uuid AS batch_id), status_changes AS (
    SELECT domain, batch_id, 'PENDING' AS old_status, 'PENDING' AS new_status, true AS evaluate
    FROM evaluated
), batch_deltas AS (
    SELECT domain, batch_id, bool_or(new_status = 'IN_PROGRESS') AS started,
           bool_or(evaluate) AS evaluate,
           sum((new_status = 'COMPLETED')::int
               - (old_status = 'COMPLETED')::int)::int AS completed_count,
           sum((new_status = 'FAILED')::int
               - (old_status = 'FAILED')::int)::int AS failed_count,
           sum((new_status = 'CANCELED')::int
               - (old_status = 'CANCELED')::int)::int AS canceled_count,
           sum((new_status = 'IN_TROUBLESHOOTING_QUEUE')::int
               - (old_status = 'IN_TROUBLESHOOTING_QUEUE')::int)::int AS in_troubleshooting_count
    FROM status_changes WHERE batch_id IS NOT NULL
    GROUP BY domain, batch_id
), batch_delta_sums AS (
    SELECT *, completed_count + failed_count + canceled_count AS terminal_delta,
           failed_count + canceled_count AS failures_delta
    FROM batch_deltas
), batch_locked AS (
    SELECT b.domain, b.batch_id, b.started_at IS NULL AS unstarted,
           b.first_failure_at IS NULL AS unfailed,
           b.status IN ('COMPLETED', 'COMPLETED_WITH_FAILURES') AS was_final
    FROM triobus.batch b
    JOIN batch_delta_sums d ON b.domain = d.domain AND b.batch_id = d.batch_id
    WHERE d.completed_count <> 0
       OR d.failed_count <> 0
       OR d.canceled_count <> 0
       OR d.in_troubleshooting_count <> 0
       OR d.evaluate
       OR (d.started AND b.started_at IS NULL)  -- only rows that change are locked
    ORDER BY b.domain, b.batch_id
    FOR UPDATE OF b
), batch_updated AS (
    UPDATE triobus.batch b
    SET completed_count = b.completed_count + d.completed_count,
        failed_count = b.failed_count + d.failed_count,
        canceled_count = b.canceled_count + d.canceled_count,
        in_troubleshooting_count = b.in_troubleshooting_count + d.in_troubleshooting_count,
        started_at = CASE WHEN l.unstarted AND d.started THEN now() ELSE b.started_at END,
        first_failure_at = CASE WHEN l.unfailed AND (d.failures_delta > 0 OR d.in_troubleshooting_count > 0)
                                THEN now() ELSE b.first_failure_at END,
        status = CASE
            WHEN NOT b.is_open AND b.completed_count + b.failed_count + b.canceled_count + d.terminal_delta = b.total_count
                 AND b.failed_count + b.canceled_count + d.failures_delta > 0
                THEN 'COMPLETED_WITH_FAILURES'
            WHEN NOT b.is_open AND b.completed_count + b.failed_count + b.canceled_count + d.terminal_delta = b.total_count
                THEN 'COMPLETED'
            WHEN l.unstarted AND d.started THEN 'IN_PROGRESS'
            ELSE b.status END,
        completed_at = CASE WHEN NOT b.is_open AND b.completed_count + b.failed_count + b.canceled_count + d.terminal_delta = b.total_count
                            THEN now() ELSE b.completed_at END
    FROM batch_delta_sums d, batch_locked l
    WHERE b.domain = d.domain AND b.batch_id = d.batch_id
      AND l.domain = d.domain AND l.batch_id = d.batch_id
    RETURNING b.*, l.unstarted AND d.started AS newly_started,
              l.unfailed AND b.first_failure_at IS NOT NULL AS newly_failed,
              NOT l.was_final AND b.status IN ('COMPLETED', 'COMPLETED_WITH_FAILURES') AS newly_completed
), batch_audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, batch_id, 'BATCH_STARTED',
           jsonb_build_object('total_count', total_count)
    FROM batch_updated WHERE newly_started
    UNION ALL
    SELECT domain, batch_id, 'BATCH_COMPLETED',
           jsonb_build_object('status', status, 'total_count', total_count,
                              'completed_count', completed_count,
                              'failed_count', failed_count,
                              'canceled_count', canceled_count)
    FROM batch_updated WHERE newly_completed
    RETURNING CASE WHEN event_type = 'BATCH_COMPLETED'
                   THEN pg_notify('triobus_batch', domain || ':' || subject_id) END
), batch_follow_ups AS (
    INSERT INTO triobus.command
        (domain, command_id, command_type, data, correlation_id, max_attempts)
    SELECT f.spec->>'domain', (f.spec->>'command_id')::uuid, f.spec->>'command_type',
           f.spec->'data' || jsonb_build_object('batch', jsonb_build_object(
               'domain', bu.domain, 'batch_id', bu.batch_id, 'event', f.event,
               'status', bu.status, 'total_count', bu.total_count, 'completed_count', bu.completed_count, 'failed_count', bu.failed_count, 'canceled_count', bu.canceled_count, 'in_troubleshooting_count', bu.in_troubleshooting_count,
               'canceled', bu.canceled_at IS NOT NULL, 'cancel_reason', bu.cancel_reason)),
           bu.batch_id, (f.spec->>'max_attempts')::int
    FROM batch_updated bu, jsonb_each(bu.follow_ups) AS f(event, spec)
    WHERE CASE f.event
        WHEN 'ON_COMPLETE' THEN bu.newly_completed
        WHEN 'ON_SUCCESS' THEN bu.newly_completed
            AND bu.status = 'COMPLETED' AND bu.canceled_at IS NULL
        WHEN 'ON_FAILURE' THEN bu.newly_failed
        ELSE false END
    ON CONFLICT DO NOTHING  -- the id is the (batch, event)'s: never stored twice
    RETURNING domain, command_id, command_type, correlation_id, reply_to, max_attempts,
              visible_at, data
), follow_up_sent AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, 'SENT',
           jsonb_build_object('command_type', command_type, 'correlation_id', correlation_id,
                              'reply_to', reply_to, 'max_attempts', max_attempts,
                              'visible_at', visible_at,
                              'follow_up_of', data->'batch'->'batch_id',
                              'follow_up_event', data->'batch'->'event')
    FROM batch_follow_ups
    RETURNING pg_notify('triobus_command', domain)
)
SELECT coalesce((SELECT newly_completed FROM batch_updated), false) AS completed;

-- name: GROW_OPEN_BATCH
UPDATE triobus.batch SET total_count = total_count + %(added)s
WHERE domain = %(domain)s AND batch_id = %(batch_id)s AND is_open
RETURNING now() AS db_now;

-- name: LOCK_AGAINST_ACKS
SELECT pg_advisory_xact_lock(29794, hashtext(%(domain)s || ':' || %(batch_id)s::text));

-- name: LOCK_TSQ_MEMBERS
SELECT 1 FROM triobus.command
WHERE domain = %(domain)s AND batch_id = %(batch_id)s AND status = 'IN_TROUBLESHOOTING_QUEUE'
FOR UPDATE;

-- name: MARK_BATCH_CANCELED
WITH canceled AS (
    UPDATE triobus.batch
    SET is_open = false, canceled_at = now(), canceled_by = %(operator)s,
        cancel_reason = %(reason)s
    WHERE domain = %(domain)s AND batch_id = %(batch_id)s AND canceled_at IS NULL AND completed_at IS NULL AND status NOT IN ('COMPLETED', 'COMPLETED_WITH_FAILURES')
    RETURNING domain, batch_id
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, batch_id, 'BATCH_CANCELED',
           jsonb_build_object('operator', %(operator)s::text, 'reason', %(reason)s::text)
    FROM canceled
)
SELECT 1 AS canceled FROM canceled;

-- name: SENT_EVENTS_OF_ADDED
WITH notified AS (SELECT pg_notify('triobus_command', %(domain)s))
INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, 'SENT',
           jsonb_build_object('command_type', command_type, 'correlation_id', correlation_id,
                              'reply_to', reply_to, 'max_attempts', max_attempts,
                              'visible_at', visible_at,
                              'batch_id', batch_id)
    FROM triobus.command, notified WHERE domain = %(domain)s AND command_id = ANY(%(command_ids)s);
