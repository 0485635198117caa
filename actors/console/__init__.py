"""The operator's web console (the `web` extra: Starlette, Jinja2, Hypercorn).

`console_app(runtime, settings)` is an ASGI app to mount; `serve_console` serves it with
Hypercorn's Trio server inside the runtime, as `triobus web` does. `ConsoleSettings`
says who may log in; without credentials the console refuses to start.
"""

from triobus.actors.console.app import console_app
from triobus.actors.console.serve import serve_console
from triobus.actors.console.serve_address import check_bind
from triobus.actors.console.settings import ConsoleSettings, credentials_from_environment

__all__ = [
    "ConsoleSettings",
    "check_bind",
    "console_app",
    "credentials_from_environment",
    "serve_console",
]
