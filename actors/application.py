"""An application as `triobus worker --app` and the `triobus_registry` fixture take it.

Either a `HandlerRegistry`, or an application factory: a function that takes the runtime
and returns an async context manager yielding the registry. The factory opens the
handlers' dependencies (clients, pools) before the first handler runs; whoever enters
`started` stops the workers before leaving it, so they are closed after the last.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

from triobus.actors.handlers import HandlerRegistry
from triobus.persistence.errors import TriobusError, ValidationError

if TYPE_CHECKING:
    from triobus.actors.runtime import Runtime

Application = HandlerRegistry | Callable[["Runtime"], AbstractAsyncContextManager[HandlerRegistry]]

KINDS = (
    "not a HandlerRegistry nor an application factory (a function taking the runtime and"
    " returning an async context manager that yields a HandlerRegistry)"
)


class ApplicationError(TriobusError):
    """The application raised while it was imported or started; `error` is what it
    raised (kept here too: leaving a runtime re-raises its sole error "from None")."""

    def __init__(self, what: str, error: BaseException) -> None:
        super().__init__(f"{what} failed (traceback above)")
        self.error = error


@asynccontextmanager
async def started(
    application: object, runtime: Runtime, name: str = "the application"
) -> AsyncIterator[HandlerRegistry]:
    """The registry to run: `application` itself, or what its factory yields (its
    dependencies are open for the block, closed after it)."""
    if isinstance(application, HandlerRegistry):
        yield application
        return
    if not callable(application):
        raise ValidationError(f"{name} is a {type(application).__name__}, {KINDS}")
    async with AsyncExitStack() as stack:
        try:
            context = application(runtime)
            if not isinstance(context, AbstractAsyncContextManager):
                raise ValidationError(f"{name} returned a {type(context).__name__}, {KINDS}")
            registry = await stack.enter_async_context(context)
        except TriobusError:
            raise
        except Exception as ex:
            raise ApplicationError(f"starting {name}", ex) from ex
        if not isinstance(registry, HandlerRegistry):
            raise ValidationError(f"{name} yielded a {type(registry).__name__}, {KINDS}")
        yield registry
