-- Statements of triobus.persistence.schema, rendered by test_statements.py.

-- name: CREATE_SCHEMA
CREATE SCHEMA IF NOT EXISTS triobus;

-- name: CREATE_VERSION_TABLE
CREATE TABLE IF NOT EXISTS triobus.schema_version (
    version integer PRIMARY KEY, name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now());

-- name: INSERT_VERSION
INSERT INTO triobus.schema_version (version, name) VALUES (%s, %s);

-- name: LOCK_MIGRATIONS
SELECT pg_advisory_xact_lock(%s);

-- name: SELECT_VERSIONS
SELECT version FROM triobus.schema_version;

-- name: VERSION_TABLE_EXISTS
SELECT to_regclass('triobus.schema_version') IS NOT NULL AS found;
