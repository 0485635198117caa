"""Fixtures of the driver contract: a test that takes `driver` runs with both drivers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from triobus.persistence.driver import DriverKind
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
