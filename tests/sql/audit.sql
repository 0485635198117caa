-- Statements of triobus.persistence.audit, rendered by test_statements.py.

-- name: SELECT_AUDIT_TRAIL
SELECT * FROM triobus.audit
WHERE subject_id = %(subject_id)s AND (%(domain)s::text IS NULL OR domain = %(domain)s)
ORDER BY audit_id;
