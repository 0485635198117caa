-- Statements of triobus.persistence.retention, rendered by test_statements.py.

-- name: COUNT_OLD_REPLIES
SELECT count(*) AS replies FROM triobus.reply WHERE created_at < now() - make_interval(secs => %(older_than)s);

-- name: COUNT_PRUNABLE
WITH doomed AS (
    SELECT domain, command_id FROM triobus.command
    WHERE domain = %(domain)s AND batch_id IS NULL AND finished_at IS NOT NULL
      AND finished_at < now() - make_interval(secs => %(older_than)s)
), doomed_batches AS (
    SELECT domain, batch_id FROM triobus.batch
    WHERE domain = %(domain)s AND completed_at IS NOT NULL AND completed_at < now() - make_interval(secs => %(older_than)s)
), members AS (
    SELECT c.domain, c.command_id FROM triobus.command c
    JOIN doomed_batches b ON c.domain = b.domain AND c.batch_id = b.batch_id
), commands AS (
    SELECT * FROM doomed UNION ALL SELECT * FROM members
)
SELECT (SELECT count(*) FROM commands) AS commands,
       (SELECT count(*) FROM triobus.audit a JOIN commands c
          ON a.domain = c.domain AND a.subject_id = c.command_id
          WHERE a.event_type NOT IN ('BATCH_STARTED', 'BATCH_CLOSED', 'BATCH_CANCELED', 'BATCH_COMPLETED'))
       + (SELECT count(*) FROM triobus.audit a JOIN doomed_batches b
          ON a.domain = b.domain AND a.subject_id = b.batch_id
          WHERE a.event_type IN ('BATCH_STARTED', 'BATCH_CLOSED', 'BATCH_CANCELED', 'BATCH_COMPLETED')) AS audit_rows,
       (SELECT count(*) FROM triobus.reply r JOIN commands c
          ON r.domain = c.domain AND r.command_id = c.command_id
          WHERE %(reply_older_than)s::float8 IS NULL  -- else old replies went first
             OR r.created_at >= now() - make_interval(secs => %(reply_older_than)s::float8)
       ) AS replies,
       (SELECT count(*) FROM doomed_batches) AS batches;

-- name: PRUNE_BATCHES
WITH doomed_batches AS (
    SELECT domain, batch_id FROM triobus.batch
    WHERE domain = %(domain)s AND completed_at IS NOT NULL AND completed_at < now() - make_interval(secs => %(older_than)s)
    ORDER BY completed_at LIMIT %(limit)s
), members AS (
    SELECT c.domain, c.command_id FROM triobus.command c
    JOIN doomed_batches b ON c.domain = b.domain AND c.batch_id = b.batch_id
), subjects AS (
    SELECT domain, command_id AS subject_id, false AS of_batch FROM members
    UNION ALL
    SELECT domain, batch_id, true FROM doomed_batches
), audit_gone AS (
    DELETE FROM triobus.audit a USING subjects s
    WHERE a.subject_id = s.subject_id AND a.domain = s.domain
      AND (a.event_type IN ('BATCH_STARTED', 'BATCH_CLOSED', 'BATCH_CANCELED', 'BATCH_COMPLETED')) = s.of_batch  -- a batch and a command may share an id
    RETURNING 1
), replies_gone AS (
    DELETE FROM triobus.reply r USING members m
    WHERE r.domain = m.domain AND r.command_id = m.command_id
    RETURNING 1
), commands_gone AS (
    DELETE FROM triobus.command c USING members m
    WHERE c.domain = m.domain AND c.command_id = m.command_id
    RETURNING 1
), batches_gone AS (
    DELETE FROM triobus.batch b USING doomed_batches d
    WHERE b.domain = d.domain AND b.batch_id = d.batch_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM commands_gone) AS commands,
       (SELECT count(*) FROM audit_gone) AS audit_rows,
       (SELECT count(*) FROM replies_gone) AS replies,
       (SELECT count(*) FROM batches_gone) AS batches;

-- name: PRUNE_COMMANDS
WITH doomed AS (
    SELECT domain, command_id FROM triobus.command
    WHERE domain = %(domain)s AND batch_id IS NULL AND finished_at IS NOT NULL
      AND finished_at < now() - make_interval(secs => %(older_than)s)
    ORDER BY finished_at LIMIT %(limit)s
), subjects AS (
    SELECT domain, command_id AS subject_id, false AS of_batch FROM doomed
), audit_gone AS (
    DELETE FROM triobus.audit a USING subjects s
    WHERE a.subject_id = s.subject_id AND a.domain = s.domain
      AND (a.event_type IN ('BATCH_STARTED', 'BATCH_CLOSED', 'BATCH_CANCELED', 'BATCH_COMPLETED')) = s.of_batch  -- a batch and a command may share an id
    RETURNING 1
), replies_gone AS (
    DELETE FROM triobus.reply r USING doomed m
    WHERE r.domain = m.domain AND r.command_id = m.command_id
    RETURNING 1
), commands_gone AS (
    DELETE FROM triobus.command c USING doomed m
    WHERE c.domain = m.domain AND c.command_id = m.command_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM commands_gone) AS commands,
       (SELECT count(*) FROM audit_gone) AS audit_rows,
       (SELECT count(*) FROM replies_gone) AS replies,
       0 AS batches;

-- name: PRUNE_REPLIES
WITH doomed AS (
    SELECT reply_id FROM triobus.reply WHERE created_at < now() - make_interval(secs => %(older_than)s)
    ORDER BY created_at LIMIT %(limit)s
), gone AS (
    DELETE FROM triobus.reply r USING doomed d WHERE r.reply_id = d.reply_id RETURNING 1
)
SELECT count(*) AS replies FROM gone;

-- name: SELECT_DOMAINS
WITH RECURSIVE command_domains(domain) AS (
    SELECT min(domain) FROM triobus.command
    UNION ALL
    SELECT (SELECT min(domain) FROM triobus.command t WHERE t.domain > d.domain)
    FROM command_domains d WHERE d.domain IS NOT NULL
), batch_domains(domain) AS (
    SELECT min(domain) FROM triobus.batch
    UNION ALL
    SELECT (SELECT min(domain) FROM triobus.batch t WHERE t.domain > d.domain)
    FROM batch_domains d WHERE d.domain IS NOT NULL
)
SELECT domain FROM command_domains WHERE domain IS NOT NULL
UNION
SELECT domain FROM batch_domains WHERE domain IS NOT NULL
ORDER BY domain;
