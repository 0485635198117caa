"""The console's ASGI application: `console_app(runtime, settings)`.

It shares the runtime's pool, notifier and events; mount it in an application's own
ASGI server (`Mount("/triobus", console_app(runtime, settings))`) or serve it with
`serve_console` (what `triobus web` does). Every page is rendered on the server by
Jinja2 with autoescaping on, so every value from the database is escaped; the few lines
of JavaScript only reload a page's live part when the server says it changed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from triobus.actors.console import actions, live, pages
from triobus.actors.console.auth import ConsoleGate
from triobus.actors.console.settings import ConsoleSettings
from triobus.actors.console.views import Console
from triobus.actors.runtime import Runtime
from triobus.persistence.errors import (
    BatchNotFoundError,
    CommandNotFoundError,
    DatabaseError,
    DatabaseUnavailableError,
    DuplicateCommandError,
    InvalidOperationError,
    TriobusError,
    ValidationError,
)

logger = logging.getLogger(__name__)

_STATUS_OF_ERROR: tuple[tuple[type[TriobusError], int], ...] = (
    (ValidationError, 400),
    (CommandNotFoundError, 404),
    (BatchNotFoundError, 404),
    (InvalidOperationError, 409),
    (DuplicateCommandError, 409),
    (DatabaseUnavailableError, 503),
)

Endpoint = Callable[[Request], Awaitable[Response]]


def console_app(runtime: Runtime, settings: ConsoleSettings) -> Starlette:
    """The console of `runtime`'s database, closed as `settings` say (see `auth`)."""
    if not isinstance(settings, ConsoleSettings):
        raise ValidationError(f"settings must be a ConsoleSettings, not {settings!r}")
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("triobus.actors.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    console = Console(runtime=runtime, settings=settings, templates=environment)

    def route(
        path: str, endpoint: Callable[[Console, Request], Awaitable[Response]], **kw: Any
    ) -> Route:
        async def guarded(request: Request) -> Response:
            try:
                return await endpoint(console, request)
            except TriobusError as ex:
                status = next((s for t, s in _STATUS_OF_ERROR if isinstance(ex, t)), 500)
                if status >= 500:
                    logger.error(
                        "%s %s failed (%s%s): %s",
                        request.method,
                        request.url.path,
                        type(ex).__name__,
                        f", SQLSTATE {ex.sqlstate}" if isinstance(ex, DatabaseError) else "",
                        ex,
                    )
                return console.render(request, "error.html", {"error": str(ex)}, status)

        return Route(path, guarded, **kw)

    static = StaticFiles(packages=[("triobus.actors.console", "static")])
    app = Starlette(
        routes=[
            route("/", pages.overview),
            route("/commands", pages.commands),
            route("/commands/{domain}/{command_id}", pages.command),
            route("/tsq", pages.troubleshooting),
            route("/tsq/bulk", actions.bulk, methods=["POST"]),
            route("/tsq/{domain}/{command_id}/{action}", actions.on_command, methods=["POST"]),
            route("/batches", pages.batches),
            route("/batches/{domain}/{batch_id}", pages.batch),
            route("/batches/{domain}/{batch_id}/{action}", actions.on_batch, methods=["POST"]),
            route("/replies", pages.replies),
            route("/live", live.changes),
            route("/healthz", pages.health),
            route("/metrics", pages.metrics),
            Mount("/static", static, name="static"),
        ],
        middleware=[Middleware(ConsoleGate, settings=settings)],
        exception_handlers={404: _not_found(console), 405: _not_allowed},
    )
    app.state.console = console
    return app


def _not_found(console: Console) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handler(request: Request, exc: Exception) -> Response:
        return console.render(request, "error.html", {"error": "no such page"}, 404)

    return handler


async def _not_allowed(request: Request, exc: Exception) -> Response:
    headers = exc.headers if isinstance(exc, HTTPException) else None
    return HTMLResponse("method not allowed", 405, headers=headers)
