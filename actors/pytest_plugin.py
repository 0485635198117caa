"""pytest fixtures for testing triobus applications against a real PostgreSQL.

Registered through the ``pytest11`` entry point, so installing triobus is enough:

* ``triobus_dsn``: the DSN of a fresh, migrated database for this test, dropped after it.
  The server is ``$TRIOBUS_DSN`` when set, else one embedded cluster per test session
  (started on first use, deleted at the end of the session).
* ``triobus_registry``: the handlers ``triobus_runtime`` runs. It is empty; override it in
  the application's ``conftest.py`` to return the application's ``HandlerRegistry``, or
  its application factory (``triobus worker --app`` takes the same two).
* ``triobus_runtime``: an open runtime on that database running those handlers (for
  pytest-trio tests, with ``trio_mode = true``); ``await triobus_runtime.drain(domain)``
  runs the domain's commands until none is left to run.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import attrs
import pytest
import trio

from triobus.actors.application import Application, started
from triobus.actors.handlers import HandlerRegistry
from triobus.actors.runtime import DSN_ENV, Runtime, open_runtime
from triobus.persistence.databases import create_database, database_dsn, drop_database, migrate
from triobus.persistence.embedded import open_embedded_postgres

# Test clusters are throw-away: skipping fsync makes CREATE DATABASE per test cheap.
_TEST_SERVER_SETTINGS = {"fsync": "off", "full_page_writes": "off"}


class _EmbeddedServerThread:
    """Runs an embedded cluster inside `trio.run` on a thread for the whole session."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._dsn: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="triobus-embedded-pg")

    def start(self) -> str:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self._dsn is not None
        return self._dsn

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as ex:  # reported to the session by start()
            self._error = ex
            self._ready.set()

    async def _serve(self) -> None:
        async with open_embedded_postgres(settings=_TEST_SERVER_SETTINGS) as dsn:
            self._dsn = dsn
            self._ready.set()
            await trio.to_thread.run_sync(self._stop.wait)


@attrs.frozen
class SessionServer:
    """The session's server: an admin DSN and a migrated template database."""

    admin_dsn: str
    template: str


@pytest.fixture(scope="session")
def triobus_server() -> Iterator[SessionServer]:
    external = os.environ.get(DSN_ENV)
    server = None
    if external:
        admin_dsn = external
    else:
        server = _EmbeddedServerThread()
        admin_dsn = server.start()
    template = f"triobus_tpl_{uuid.uuid4().hex[:12]}"
    try:
        trio.run(_create_template, admin_dsn, template)
        yield SessionServer(admin_dsn=admin_dsn, template=template)
    finally:
        try:
            trio.run(drop_database, admin_dsn, template)
        finally:
            if server is not None:
                server.stop()


async def _create_template(admin_dsn: str, template: str) -> None:
    await create_database(admin_dsn, template)
    await migrate(database_dsn(admin_dsn, template))


@pytest.fixture
def triobus_dsn(triobus_server: SessionServer) -> Iterator[str]:
    name = f"triobus_test_{uuid.uuid4().hex[:12]}"
    dsn = trio.run(
        lambda: create_database(triobus_server.admin_dsn, name, template=triobus_server.template)
    )
    try:
        yield dsn
    finally:
        trio.run(drop_database, triobus_server.admin_dsn, name)


@pytest.fixture
def triobus_registry() -> Application:
    """Override to return the application's registry, or its factory."""
    return HandlerRegistry()


@pytest.fixture
async def triobus_runtime(
    triobus_dsn: str, triobus_registry: Application
) -> AsyncIterator[Runtime]:
    """A runtime whose `registry` (what `start_worker` and `drain` run by default) holds
    `triobus_registry`'s handlers; a factory's dependencies are open for the test."""
    async with (
        open_runtime(triobus_dsn, migrate=False) as runtime,
        started(triobus_registry, runtime) as registry,
    ):
        runtime.registry = registry
        try:
            yield runtime
        finally:  # a factory's dependencies are closed after the last handler
            with trio.CancelScope(shield=True):
                await runtime.stop_workers()
