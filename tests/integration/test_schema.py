"""Migrations: ordered, recorded, idempotent, safe when run concurrently."""

from __future__ import annotations

import re
import uuid

import pytest
import trio

from triobus.actors import open_runtime
from triobus.actors.pytest_plugin import SessionServer
from triobus.persistence.databases import create_database, drop_database, migrate
from triobus.persistence.driver import connect
from triobus.persistence.errors import SchemaError
from triobus.persistence.records import BatchStatus, CommandStatus, ReplyOutcome
from triobus.persistence.schema import available_migrations


async def test_migrations_are_numbered_from_one_without_gaps() -> None:
    versions = [m.version for m in available_migrations()]
    assert versions == list(range(1, len(versions) + 1))


async def test_concurrent_migrations_apply_each_version_once(
    triobus_server: SessionServer,
) -> None:
    name = f"triobus_mig_{uuid.uuid4().hex[:8]}"
    dsn = await create_database(triobus_server.admin_dsn, name)
    try:
        applied: list[list[int]] = []

        async def run() -> None:
            applied.append(await migrate(dsn))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(run)
        expected = [m.version for m in available_migrations()]
        assert sorted(applied) == [[], [], expected]
        assert await migrate(dsn) == []  # idempotent
        conn = await connect(dsn)
        try:
            rows = await conn.fetch_all("SELECT version FROM triobus.schema_version ORDER BY 1")
            tables = await conn.fetch_all(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'triobus' ORDER BY 1"
            )
        finally:
            await conn.close()
        assert [r["version"] for r in rows] == expected
        assert [t["table_name"] for t in tables] == [
            "audit",
            "batch",
            "command",
            "gauge_snapshot",
            "reply",
            "schedule",
            "schema_version",
        ]
    finally:
        await drop_database(triobus_server.admin_dsn, name)


# Each CHECK constraint listing a column's values, and the enum those values must be.
VALUE_LISTS = {
    "command_status_known": CommandStatus,
    "batch_status_known": BatchStatus,
    "reply_outcome_known": ReplyOutcome,
}


async def test_the_checked_value_lists_of_the_schema_are_the_enums(triobus_dsn: str) -> None:
    """The schema is the sum of the migrations: read the constraints PostgreSQL holds."""
    conn = await connect(triobus_dsn)
    try:
        rows = await conn.fetch_all(
            "SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint"
            " WHERE connamespace = 'triobus'::regnamespace AND conname = ANY(%s)",
            (list(VALUE_LISTS),),
        )
    finally:
        await conn.close()
    checked = {row["conname"]: set(re.findall(r"'(\w+)'", row["definition"])) for row in rows}
    assert checked == {name: {str(v) for v in enum} for name, enum in VALUE_LISTS.items()}


async def schema_error_of(dsn: str) -> str:
    """The one line `open_runtime(migrate=False)` stops with on this database."""
    with pytest.raises(SchemaError) as raised:
        async with open_runtime(dsn, migrate=False):
            pass
    message = str(raised.value)
    assert "\n" not in message
    return message


async def test_a_runtime_without_migrating_refuses_a_missing_older_or_newer_schema(
    triobus_server: SessionServer, triobus_dsn: str
) -> None:
    needed = len(available_migrations())
    name = f"triobus_empty_{uuid.uuid4().hex[:8]}"
    empty = await create_database(triobus_server.admin_dsn, name)
    try:
        assert await schema_error_of(empty) == (
            f"schema triobus is missing from this database, this triobus needs version {needed}:"
            " run `triobus migrate` as the role that owns the schema"
        )
    finally:
        await drop_database(triobus_server.admin_dsn, name)
    conn = await connect(triobus_dsn)
    try:
        await conn.execute("DELETE FROM triobus.schema_version WHERE version = %s", (needed,))
        assert await schema_error_of(triobus_dsn) == (
            f"schema triobus is at version {needed - 1}, this triobus needs {needed}:"
            " run `triobus migrate` as the role that owns the schema"
        )
        await conn.execute(
            "INSERT INTO triobus.schema_version (version, name) VALUES (%s, 'later'), (%s, 'x')",
            (needed, needed + 1),
        )
        assert await schema_error_of(triobus_dsn) == (
            f"schema triobus is at version {needed + 1}, newer than this triobus knows"
            f" ({needed}): upgrade triobus"
        )
        await conn.execute("DELETE FROM triobus.schema_version WHERE version > %s", (needed,))
    finally:
        await conn.close()
    async with open_runtime(triobus_dsn, migrate=False):  # at its version: it opens
        pass
