-- Statements of triobus.persistence.queue, rendered by test_statements.py.

-- name: ACK_IF_CLAIMED
WITH r AS (
    SELECT * FROM unnest(
        %(domain)b::text[], %(command_id)b::uuid[], %(lease_token)b::uuid[],
        %(batch_id)b::uuid[], %(status)b::text[], %(event)b::text[],
        %(retry_delay)b::float8[], %(result)b::text[], %(error_type)b::text[],
        %(error_code)b::text[], %(error_message)b::text[], %(error_details)b::text[])
    AS r(domain, command_id, lease_token, batch_id, status, event, retry_delay, result,
         error_type, error_code, error_message, error_details)
), decided AS (
    SELECT r.*, CASE WHEN r.status IN ('PENDING', 'IN_TROUBLESHOOTING_QUEUE')
                          AND (r.batch_id IS NOT NULL AND EXISTS (
            SELECT FROM triobus.batch cb
            WHERE cb.domain = r.domain AND cb.batch_id = r.batch_id
              AND cb.canceled_at IS NOT NULL))
                     THEN 'CANCELED' ELSE r.status END AS new_status
    FROM r
), acked AS (
    UPDATE triobus.command c
    SET status = r.new_status,
        finished_at = CASE WHEN r.new_status IN ('COMPLETED', 'FAILED', 'CANCELED') THEN now() END,
        result = r.result::jsonb,
        -- a success keeps the last error on the row; the audit trail has them all
        error_type = CASE WHEN r.error_type IS NULL THEN c.error_type ELSE r.error_type END,
        error_code = CASE WHEN r.error_type IS NULL THEN c.error_code ELSE r.error_code END,
        error_message = CASE WHEN r.error_type IS NULL THEN c.error_message
                             ELSE r.error_message END,
        error_details = CASE WHEN r.error_type IS NULL THEN c.error_details
                             ELSE r.error_details::jsonb END,
        visible_at = CASE WHEN r.status = 'PENDING'
                          THEN now() + make_interval(secs => r.retry_delay)
                          ELSE c.visible_at END,
        lease_token = NULL,
        updated_at = now()
    FROM decided r
    WHERE c.domain = r.domain AND c.command_id = r.command_id
      AND c.lease_token = r.lease_token
    RETURNING c.domain, c.command_id, c.status, c.batch_id, c.reply_to, c.correlation_id,
              c.result, c.attempts, r.error_type, r.error_code, r.error_message,
              r.error_details::jsonb AS error_details, r.event, r.retry_delay
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id,
           CASE WHEN status = 'CANCELED' THEN 'CANCELED_WITH_BATCH' ELSE event END,
           jsonb_strip_nulls(jsonb_build_object(
               'attempt', attempts, 'error_type', error_type, 'error_code', error_code,
               'error_message', error_message, 'error_details', error_details,
               'retry_in_seconds', CASE WHEN status = 'PENDING' THEN retry_delay END,
               'instead_of', CASE WHEN status = 'CANCELED' THEN event END))
    FROM acked
), replies AS (
    INSERT INTO triobus.reply (queue, domain, command_id, correlation_id, outcome, data)
    SELECT reply_to, domain, command_id, correlation_id,
           CASE status WHEN 'COMPLETED' THEN 'SUCCESS' WHEN 'CANCELED' THEN 'CANCELED' ELSE 'FAILED' END,
           CASE status WHEN 'COMPLETED' THEN result
                WHEN 'CANCELED' THEN jsonb_build_object('reason', 'its batch was canceled')
                ELSE jsonb_strip_nulls(jsonb_build_object(
                    'error_type', error_type, 'error_code', error_code,
                    'error_message', error_message, 'error_details', error_details)) END
    FROM acked
    WHERE reply_to IS NOT NULL AND status IN ('COMPLETED', 'FAILED', 'CANCELED')
    ON CONFLICT ON CONSTRAINT reply_once_per_command DO NOTHING
    RETURNING pg_notify('triobus_reply', queue)
), status_changes AS (
    SELECT domain, batch_id, 'IN_PROGRESS' AS old_status, status AS new_status
    FROM acked
), batch_deltas AS (
    SELECT domain, batch_id, bool_or(new_status = 'IN_PROGRESS') AS started,
           
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
SELECT c.domain, c.command_id, c.status, c.batch_id,
       coalesce(bu.newly_completed, false) AS batch_completed,
       bu.completed_count AS batch_completed_count, bu.failed_count AS batch_failed_count,
       bu.canceled_count AS batch_canceled_count,
       bu.in_troubleshooting_count AS batch_in_troubleshooting_count
FROM acked c
LEFT JOIN batch_updated bu ON bu.domain = c.domain AND bu.batch_id = c.batch_id;

-- name: CLAIM_COMMANDS
WITH candidates AS (
    SELECT domain, command_id, status, visible_at AS claimable_since,
           status = 'IN_PROGRESS'
               AND attempts >= coalesce(max_attempts, %(default_max_attempts)s) AS exhausted
    FROM triobus.command
    WHERE domain = %(domain)s AND status IN ('PENDING', 'IN_PROGRESS')
      AND visible_at <= now()
    ORDER BY visible_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE triobus.command c
    SET status = 'IN_PROGRESS', attempts = c.attempts + 1,
        visible_at = now() + make_interval(secs => %(visibility_timeout)s),
        lease_token = gen_random_uuid(), updated_at = now()
    FROM candidates k
    WHERE c.domain = k.domain AND c.command_id = k.command_id AND NOT k.exhausted
    RETURNING c.domain, c.command_id, c.command_type, c.data, c.correlation_id, c.reply_to,
              c.batch_id, c.attempts, c.max_attempts, c.lease_token, c.visible_at,
              c.trace_context, k.status AS claimed_from, k.claimable_since
), exhausted AS (
    UPDATE triobus.command c
    SET status = 'IN_TROUBLESHOOTING_QUEUE', lease_token = NULL, updated_at = now(),
        error_type = 'LeaseExpired', error_code = 'LEASE_EXPIRED',
        error_message = 'claimed ' || c.attempts
            || ' times without a result: the worker stopped or died each time',
        error_details = NULL
    FROM candidates k
    WHERE c.domain = k.domain AND c.command_id = k.command_id AND k.exhausted
    RETURNING c.domain, c.command_id, c.batch_id, c.attempts, c.error_type, c.error_code,
              c.error_message
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, 'RECEIVED',
           jsonb_build_object('attempt', attempts)
    FROM claimed
    UNION ALL
    SELECT domain, command_id, 'RETRY_EXHAUSTED',
           jsonb_build_object('attempt', attempts, 'error_type', error_type,
                              'error_code', error_code, 'error_message', error_message)
    FROM exhausted
), status_changes AS (
    SELECT domain, batch_id, claimed_from AS old_status, 'IN_PROGRESS' AS new_status
    FROM claimed
    UNION ALL
    SELECT domain, batch_id, 'IN_PROGRESS' AS old_status, 'IN_TROUBLESHOOTING_QUEUE' AS new_status
    FROM exhausted
), batch_deltas AS (
    SELECT domain, batch_id, bool_or(new_status = 'IN_PROGRESS') AS started,
           
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
SELECT domain, command_id, command_type, data, correlation_id, reply_to, batch_id, attempts,
       max_attempts, lease_token, trace_context,
       greatest(0, extract(epoch FROM now() - claimable_since))::float8 AS waited,
       claimed_from = 'IN_PROGRESS' AS lease_expired
FROM claimed ORDER BY visible_at, command_id;

-- name: COMPLETE_IF_CLAIMED
WITH acked AS (
    UPDATE triobus.command c
    SET status = 'COMPLETED', result = %(result)s::jsonb, lease_token = NULL,
        finished_at = now(), updated_at = now()
    WHERE c.domain = %(domain)s AND c.command_id = %(command_id)s
      AND c.lease_token = %(lease_token)s
    RETURNING c.domain, c.command_id, c.status, c.batch_id, c.reply_to, c.correlation_id,
              c.result, c.attempts
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, 'COMPLETED',
           jsonb_build_object('attempt', attempts)
    FROM acked
), replies AS (
    INSERT INTO triobus.reply (queue, domain, command_id, correlation_id, outcome, data)
    SELECT reply_to, domain, command_id, correlation_id,
           'SUCCESS',
           result
    FROM acked
    WHERE reply_to IS NOT NULL
    ON CONFLICT ON CONSTRAINT reply_once_per_command DO NOTHING
    RETURNING pg_notify('triobus_reply', queue)
), status_changes AS (
    SELECT domain, batch_id, 'IN_PROGRESS' AS old_status, 'COMPLETED' AS new_status
    FROM acked
), batch_deltas AS (
    SELECT domain, batch_id, bool_or(new_status = 'IN_PROGRESS') AS started,
           
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
SELECT c.domain, c.command_id, c.status, c.batch_id,
       coalesce(bu.newly_completed, false) AS batch_completed,
       bu.completed_count AS batch_completed_count, bu.failed_count AS batch_failed_count,
       bu.canceled_count AS batch_canceled_count,
       bu.in_troubleshooting_count AS batch_in_troubleshooting_count
FROM acked c
LEFT JOIN batch_updated bu ON bu.domain = c.domain AND bu.batch_id = c.batch_id;

-- name: EXTEND_LEASES_IF_CLAIMED
WITH mine AS (
    SELECT domain, command_id, batch_id FROM triobus.command
    WHERE domain = %(domain)s AND command_id = ANY(%(command_ids)s)
      AND lease_token = ANY(%(lease_tokens)s)
    FOR UPDATE SKIP LOCKED
)
UPDATE triobus.command c
SET visible_at = now() + make_interval(secs => %(visibility_timeout)s)
FROM mine WHERE c.domain = mine.domain AND c.command_id = mine.command_id;

-- name: LOCK_BATCHES_AGAINST_CANCEL
SELECT pg_advisory_xact_lock_shared(29794, hashtext(k.domain || ':' || k.batch_id::text))
FROM (
    SELECT DISTINCT c.domain, c.batch_id FROM triobus.command c
    JOIN unnest(%(domain)s::text[], %(command_id)s::uuid[]) AS r(domain, command_id)
      ON c.domain = r.domain AND c.command_id = r.command_id
    WHERE c.batch_id IS NOT NULL
    ORDER BY 1, 2 OFFSET 0
) k;

-- name: LOCK_IF_CLAIMED
SELECT 1 AS held FROM triobus.command
WHERE domain = %(domain)s AND command_id = %(command_id)s AND lease_token = %(lease_token)s
FOR UPDATE;

-- name: RELEASE_IF_CLAIMED
WITH mine AS (
    SELECT domain, command_id, batch_id FROM triobus.command
    WHERE domain = %(domain)s AND command_id = ANY(%(command_ids)s)
      AND lease_token = ANY(%(lease_tokens)s)
    FOR UPDATE SKIP LOCKED
), decided AS (
    SELECT mine.*, CASE WHEN (mine.batch_id IS NOT NULL AND EXISTS (
            SELECT FROM triobus.batch cb
            WHERE cb.domain = mine.domain AND cb.batch_id = mine.batch_id
              AND cb.canceled_at IS NOT NULL)) THEN 'CANCELED'
                        ELSE 'PENDING' END AS new_status
    FROM mine
), released AS (
    UPDATE triobus.command c
    SET status = d.new_status,
        finished_at = CASE WHEN d.new_status = 'CANCELED' THEN now() END,
        visible_at = now(), lease_token = NULL, attempts = c.attempts - 1, updated_at = now()
    FROM decided d WHERE c.domain = d.domain AND c.command_id = d.command_id
    RETURNING c.domain, c.command_id, c.status, c.batch_id, c.reply_to, c.correlation_id
), audit AS (
    INSERT INTO triobus.audit (domain, subject_id, event_type, details)
    SELECT domain, command_id, 'CANCELED_WITH_BATCH',
           jsonb_build_object('instead_of', 'RELEASED')
    FROM released WHERE status = 'CANCELED'
), replies AS (
    INSERT INTO triobus.reply (queue, domain, command_id, correlation_id, outcome, data)
    SELECT reply_to, domain, command_id, correlation_id,
           'CANCELED',
           jsonb_build_object('reason', 'its batch was canceled')
    FROM released
    WHERE reply_to IS NOT NULL AND status = 'CANCELED'
    ON CONFLICT ON CONSTRAINT reply_once_per_command DO NOTHING
    RETURNING pg_notify('triobus_reply', queue)
), status_changes AS (
    SELECT domain, batch_id, 'IN_PROGRESS' AS old_status, status AS new_status
    FROM released
), batch_deltas AS (
    SELECT domain, batch_id, bool_or(new_status = 'IN_PROGRESS') AS started,
           
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
SELECT count(*) AS released FROM released;
