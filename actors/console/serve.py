"""Serving the console with Hypercorn's Trio server inside a runtime (`triobus web`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from triobus.actors.console.app import console_app
from triobus.actors.console.serve_address import check_bind
from triobus.actors.console.settings import ConsoleSettings
from triobus.actors.runtime import Runtime

GRACEFUL_STOP = 2.0  # seconds the open requests (live streams) get when the server stops


async def serve_console(
    runtime: Runtime,
    settings: ConsoleSettings,
    *,
    bind: str = "127.0.0.1:8080",
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the console on `bind` until `shutdown_trigger` returns (or cancelled);
    `task_status.started` gets the addresses served, such as `http://127.0.0.1:8080`
    (port 0: any free one)."""
    host, port = check_bind(bind, no_auth=settings.no_auth)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = GRACEFUL_STOP
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through the application's logging
    app = console_app(runtime, settings)
    try:
        await serve(
            app,  # type: ignore[arg-type]  # Starlette's ASGI types are narrower than Hypercorn's
            config,
            shutdown_trigger=shutdown_trigger or trio.sleep_forever,
            task_status=task_status,
        )
    finally:
        app.state.console.close()
