"""Versioned schema migrations.

The schema is the sum of the numbered files in `migrations/` (`NNN_name.sql`), applied
in order. Invariants: a migration is applied at most once (recorded in
`triobus.schema_version`); concurrent `migrate_connection` calls serialise on a
transaction-level advisory lock; each pending migration runs in the same transaction as
its version row, so a failure leaves the schema at the last good version.
"""

from __future__ import annotations

import logging
import re
from importlib import resources

import attrs

from triobus.persistence.connection import Connection
from triobus.persistence.errors import DatabaseError, SchemaError

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock key: "triobus" as a number, fixed forever.
_MIGRATION_LOCK_KEY = 0x7472696F627573
_FILE_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")

LOCK_MIGRATIONS = "SELECT pg_advisory_xact_lock(%s)"
CREATE_SCHEMA = "CREATE SCHEMA IF NOT EXISTS triobus"
CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS triobus.schema_version (
    version integer PRIMARY KEY, name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now())
"""
SELECT_VERSIONS = "SELECT version FROM triobus.schema_version"
VERSION_TABLE_EXISTS = "SELECT to_regclass('triobus.schema_version') IS NOT NULL AS found"
INSUFFICIENT_PRIVILEGE = "42501"
_HOW_TO_MIGRATE = "run `triobus migrate` as the role that owns the schema"
INSERT_VERSION = "INSERT INTO triobus.schema_version (version, name) VALUES (%s, %s)"


@attrs.frozen
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    """The migrations shipped with this package, in version order."""
    found = []
    for entry in resources.files("triobus.persistence").joinpath("migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise SchemaError(f"migration versions must be 1..N without gaps, found {versions}")
    return found


async def migrate_connection(conn: Connection) -> list[int]:
    """Apply pending migrations on `conn`; return the versions applied now. A role
    without the rights to migrate gets a `SchemaError` that says what to do instead."""
    try:
        return await _migrate(conn)
    except DatabaseError as ex:
        if ex.sqlstate != INSUFFICIENT_PRIVILEGE:
            raise
        raise SchemaError(
            f"migrating the schema was refused ({' '.join(str(ex).split())}): {_HOW_TO_MIGRATE},"
            " and open this runtime without migrating (migrate=False; triobus worker"
            " --no-migrate)"
        ) from None


async def _migrate(conn: Connection) -> list[int]:
    applied_now = []
    async with conn.transaction():
        await conn.execute(LOCK_MIGRATIONS, (_MIGRATION_LOCK_KEY,))
        await conn.execute(CREATE_SCHEMA)
        await conn.execute(CREATE_VERSION_TABLE)
        done = {row["version"] for row in await conn.fetch_all(SELECT_VERSIONS)}
        for migration in available_migrations():
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(INSERT_VERSION, (migration.version, migration.name))
            applied_now.append(migration.version)
    if applied_now:
        logger.info("applied migrations %s", applied_now)
    return applied_now


async def check_schema(conn: Connection) -> None:
    """Raise `SchemaError`, in one line that says what to do, unless the schema is at
    exactly the version these migrations make: missing, older or newer all stop here."""
    needed = len(available_migrations())
    rows = await conn.fetch_all(VERSION_TABLE_EXISTS)
    if not rows or not rows[0]["found"]:
        raise SchemaError(
            f"schema triobus is missing from this database, this triobus needs version"
            f" {needed}: {_HOW_TO_MIGRATE}"
        )
    try:
        versions = {row["version"] for row in await conn.fetch_all(SELECT_VERSIONS)}
    except DatabaseError as ex:
        if ex.sqlstate != INSUFFICIENT_PRIVILEGE:
            raise
        raise SchemaError(
            "this role may not read triobus.schema_version, so the schema's version is"
            " unknown: GRANT SELECT ON triobus.schema_version to it"
        ) from None
    current = max(versions, default=0)
    if current > needed:
        raise SchemaError(
            f"schema triobus is at version {current}, newer than this triobus knows"
            f" ({needed}): upgrade triobus"
        )
    if versions != set(range(1, needed + 1)):
        raise SchemaError(
            f"schema triobus is at version {current}, this triobus needs {needed}:"
            f" {_HOW_TO_MIGRATE}"
        )
