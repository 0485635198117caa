"""Shared test helpers. The database fixtures come from triobus's own pytest plugin."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo

T = TypeVar("T")
Eventually = Callable[[Callable[[], Awaitable[T]]], Awaitable[T]]


async def _eventually(check: Callable[[], Awaitable[T]], seconds: float = 15.0) -> T:
    """Poll `check` until it returns a truthy value; fail after `seconds`."""
    with trio.fail_after(seconds):
        while True:
            value = await check()
            if value:
                return value
            await trio.sleep(0.02)


@pytest.fixture
def eventually() -> Callable[..., Awaitable[object]]:
    return _eventually


def _set_event() -> trio.Event:
    event = trio.Event()
    event.set()
    return event


class Proxy:
    """A TCP proxy in front of the test server, to play an unresponsive or lost server.

    `dsn` reaches the database through the proxy. `freeze()` stops forwarding bytes (the
    server seems to hang; with `answers_only` the server still receives and runs what is
    sent, its answers are held), `thaw()` resumes, `cut()` closes every proxied connection.
    """

    def __init__(self, upstream_dsn: str) -> None:
        self._upstream = conninfo_to_dict(upstream_dsn)
        self._to_server = self._to_client = _set_event()
        self._links: set[trio.CancelScope] = set()
        self.dsn = ""

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.dsn = make_conninfo(
            "", **{**self._upstream, "host": "127.0.0.1", "port": port, "sslmode": "disable"}
        )
        task_status.started()
        await trio.serve_listeners(self._link, listeners)

    def freeze(self, *, answers_only: bool = False) -> None:
        self._to_client = trio.Event()
        if not answers_only:
            self._to_server = self._to_client

    def thaw(self) -> None:
        self._to_server.set()
        self._to_client.set()

    def cut(self) -> None:
        for scope in list(self._links):
            scope.cancel()

    async def _connect_upstream(self) -> trio.abc.Stream:
        host = str(self._upstream.get("host") or "localhost")
        port = int(self._upstream.get("port") or 5432)
        if host.startswith("/"):
            return await trio.open_unix_socket(f"{host}/.s.PGSQL.{port}")
        return await trio.open_tcp_stream(host, port)

    async def _link(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._links.add(scope)
            try:
                server = await self._connect_upstream()
                async with client, server, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, server, True, nursery.cancel_scope)
                    nursery.start_soon(self._pump, server, client, False, nursery.cancel_scope)
            finally:
                self._links.discard(scope)

    async def _pump(
        self,
        source: trio.abc.Stream,
        sink: trio.abc.Stream,
        to_server: bool,
        link: trio.CancelScope,
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                await (self._to_server if to_server else self._to_client).wait()
                await sink.send_all(data)
        except trio.BrokenResourceError:
            pass
        link.cancel()


@pytest.fixture
async def proxy(triobus_dsn: str, nursery: trio.Nursery) -> Proxy:
    proxy = Proxy(triobus_dsn)
    await nursery.start(proxy.serve)
    return proxy
