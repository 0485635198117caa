"""Fixtures: the driver contract (a test that takes `driver` runs with both drivers), pools,
and the least-privilege roles of README.md."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from psycopg.conninfo import make_conninfo

from triobus.persistence.driver import DriverKind, connect
from triobus.persistence.pool import ConnectionPool, open_pool


@pytest.fixture(params=list(DriverKind), ids=str)
def driver(request: pytest.FixtureRequest) -> DriverKind:
    return DriverKind(request.param)


@pytest.fixture
async def pool(triobus_dsn: str, driver: DriverKind) -> AsyncIterator[ConnectionPool]:
    async with open_pool(triobus_dsn, driver=driver, max_size=4) as pool:
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
        yield pool


@pytest.fixture
async def queue_pool(triobus_dsn: str) -> AsyncIterator[ConnectionPool]:
    """A pool on the test database, for driving one worker role directly."""
    async with open_pool(triobus_dsn, max_size=4) as pool:
        yield pool


# The statements README.md documents, for roles named producer, worker, operator and
# maintainer.
GRANTS = """
GRANT USAGE ON SCHEMA triobus TO {producer}, {worker}, {operator}, {maintainer};
GRANT SELECT ON triobus.schema_version TO {producer}, {worker}, {operator}, {maintainer};
GRANT SELECT, INSERT ON triobus.command, triobus.batch, triobus.audit TO {producer};
GRANT UPDATE ON triobus.batch TO {producer};
GRANT SELECT, DELETE ON triobus.reply TO {producer};
GRANT SELECT, INSERT, UPDATE ON triobus.command TO {worker}, {operator};
GRANT SELECT, UPDATE ON triobus.batch TO {worker}, {operator};
GRANT SELECT, INSERT ON triobus.audit, triobus.reply TO {worker}, {operator};
GRANT SELECT, INSERT, UPDATE ON triobus.schedule TO {worker};
GRANT SELECT, INSERT, UPDATE ON triobus.gauge_snapshot TO {worker}, {operator};
GRANT SELECT ON triobus.schedule TO {operator};
GRANT SELECT, DELETE ON triobus.command, triobus.batch, triobus.audit, triobus.reply
    TO {maintainer};
"""


@pytest.fixture
async def role_dsns(triobus_dsn: str) -> AsyncIterator[dict[str, str]]:
    """DSNs of three fresh login roles holding exactly `GRANTS` on the test database."""
    suffix = uuid.uuid4().hex[:8]
    kinds = ("producer", "worker", "operator", "maintainer")
    roles = {kind: f"triobus_{kind}_{suffix}" for kind in kinds}
    admin = await connect(triobus_dsn)
    try:
        for role in roles.values():  # generated names: constants and hex only
            await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(GRANTS.format(**roles))
        yield {kind: make_conninfo(triobus_dsn, user=role) for kind, role in roles.items()}
    finally:
        for role in roles.values():
            await admin.execute(f"DROP OWNED BY {role}")
            await admin.execute(f"DROP ROLE {role}")
        await admin.close()
