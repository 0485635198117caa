"""The fixtures of the bad-input tests: a database seeded once per module with a command in
every interesting state, a batch and a reply (`Seed`), copied for tests that write."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio

from triobus.actors import (
    BatchCommand,
    Command,
    HandlerContext,
    PermanentCommandError,
    Runtime,
    open_runtime,
)
from triobus.actors.pytest_plugin import SessionServer
from triobus.persistence.databases import create_database, database_dsn, drop_database

# check_bad_input's assertions report their operands, as they did in the test module.
pytest.register_assert_rewrite("tests.integration.bad_input.cases")

from tests.integration.bad_input.cases import Borrowed, Seed  # noqa: E402


async def _seed(dsn: str) -> Seed:
    async with open_runtime(dsn, migrate=False) as runtime:

        @runtime.registry.handler("d", "Broken")
        async def broken(command: Command, ctx: HandlerContext) -> None:
            raise PermanentCommandError("BROKEN", "needs an operator")

        worker = await runtime.start_worker("d", poll_interval=0.05)
        parked = [
            (await runtime.bus.send("d", "Broken", uuid.uuid4(), {"n": n}, reply_to="q")).command_id
            for n in range(2)
        ]
        with trio.fail_after(15):
            while await runtime.tsq.count_troubleshooting("d") < 2:  # noqa: ASYNC110 - polls the db
                await trio.sleep(0.02)
        await worker.stop()
        await runtime.tsq.operator_cancel("d", parked[1], "seeding a reply")
        pending = await runtime.bus.send("d", "Work", uuid.uuid4(), {"n": 0}, reply_to="q")
        batch = await runtime.bus.create_batch(
            "d", [BatchCommand("Work", uuid.uuid4(), {"n": 1})], name="seed"
        )
        return Seed(pending=pending.command_id, parked=parked[0], canceled=parked[1], batch=batch)


@pytest.fixture(scope="module")
def seeded_template(triobus_server: SessionServer) -> Iterator[tuple[str, Seed]]:
    """A database seeded once per module, copied for every test."""
    name = f"triobus_seed_{uuid.uuid4().hex[:12]}"
    admin = triobus_server.admin_dsn
    dsn = trio.run(lambda: create_database(admin, name, template=triobus_server.template))
    try:
        yield name, trio.run(_seed, dsn)
    finally:
        trio.run(drop_database, admin, name)


@pytest.fixture
def seeded_dsn(triobus_server: SessionServer, seeded_template: tuple[str, Seed]) -> Iterator[str]:
    name = f"triobus_test_{uuid.uuid4().hex[:12]}"
    admin = triobus_server.admin_dsn
    dsn = trio.run(lambda: create_database(admin, name, template=seeded_template[0]))
    try:
        yield dsn
    finally:
        trio.run(drop_database, admin, name)


@pytest.fixture
def seed(seeded_template: tuple[str, Seed]) -> Seed:
    return seeded_template[1]


@pytest.fixture
def shared_dsn(triobus_server: SessionServer, seeded_template: tuple[str, Seed]) -> str:
    """The seeded database itself, for tests that write nothing (they check that they
    did not: a test that wrote would fail, not leak into the next)."""
    return database_dsn(triobus_server.admin_dsn, seeded_template[0])


@pytest.fixture
async def runtime(shared_dsn: str) -> AsyncIterator[Runtime]:
    async with open_runtime(shared_dsn, migrate=False) as runtime:
        yield runtime


@pytest.fixture
def borrowed(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> Borrowed:
    counter = Borrowed()
    lend = runtime.pool.connection

    def counting() -> Any:
        counter.count += 1
        return lend()

    monkeypatch.setattr(runtime.pool, "connection", counting)
    return counter
