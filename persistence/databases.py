"""Whole databases: migrating one to the newest schema or checking it is there, and
creating and dropping them (the test harness makes one database per test)."""

from __future__ import annotations

import re

from psycopg.conninfo import make_conninfo

from triobus.persistence.driver import DriverKind, connect
from triobus.persistence.errors import ValidationError
from triobus.persistence.schema import check_schema, migrate_connection
from triobus.persistence.validation import check_dsn

_DATABASE_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


def _checked(name: str) -> str:
    """Database names are identifiers: only generated, plain lower-case names are accepted."""
    if not _DATABASE_NAME.fullmatch(name):
        raise ValidationError(f"database name must match {_DATABASE_NAME.pattern}, got {name!r}")
    return name


def database_dsn(dsn: str, dbname: str) -> str:
    """`dsn` pointing at database `dbname` instead."""
    return make_conninfo(dsn, dbname=_checked(dbname))


async def migrate(dsn: str, *, driver: DriverKind = DriverKind.NATIVE) -> list[int]:
    """Bring the database at `dsn` to the newest schema; return the versions applied."""
    conn = await connect(check_dsn(dsn), driver)
    try:
        return await migrate_connection(conn)
    finally:
        await conn.close()


async def check_schema_version(dsn: str, *, driver: DriverKind = DriverKind.NATIVE) -> None:
    """Raise `SchemaError` unless the database at `dsn` has the schema this triobus needs
    (on a connection of its own: a database that cannot be reached fails at once)."""
    conn = await connect(check_dsn(dsn), driver)
    try:
        await check_schema(conn)
    finally:
        await conn.close()


async def create_database(
    admin_dsn: str,
    name: str,
    *,
    template: str | None = None,
    driver: DriverKind = DriverKind.NATIVE,
) -> str:
    """Create database `name` (a copy of `template` if given); return its DSN."""
    sql = f'CREATE DATABASE "{_checked(name)}"'
    if template is not None:
        sql += f' TEMPLATE "{_checked(template)}" STRATEGY FILE_COPY'
    conn = await connect(admin_dsn, driver)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
    return database_dsn(admin_dsn, name)


async def drop_database(
    admin_dsn: str, name: str, *, driver: DriverKind = DriverKind.NATIVE
) -> None:
    """Drop database `name` if it exists, disconnecting its sessions."""
    conn = await connect(admin_dsn, driver)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{_checked(name)}" WITH (FORCE)')
    finally:
        await conn.close()
