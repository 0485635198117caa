-- Statements of triobus.persistence.replies, rendered by test_statements.py.

-- name: DELETE_REPLIES
DELETE FROM triobus.reply WHERE queue = %s AND reply_id = ANY(%s);

-- name: SELECT_REPLIES
SELECT * FROM triobus.reply WHERE queue = %s AND reply_id <> ALL(%s)
ORDER BY reply_id LIMIT %s;

-- name: SELECT_STORED_REPLY_IDS
SELECT reply_id FROM triobus.reply WHERE queue = %s AND reply_id = ANY(%s);
