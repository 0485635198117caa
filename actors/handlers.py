"""Handlers: what a worker runs for each (domain, command_type), and what they may raise.

A handler is ``async def handle(command: Command, ctx: HandlerContext) -> Mapping | None``.
The mapping it returns is stored as the command's result. It chooses a failing outcome
by raising `TransientCommandError`, `PermanentCommandError` or `BusinessRuleError`; any
other exception counts as transient (the whole table: `outcomes.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import attrs

from triobus.persistence.errors import TriobusError
from triobus.persistence.records import Command
from triobus.persistence.validation import check_async_callable, check_bool, check_name


class CommandHandlerError(TriobusError):
    """Base of the errors a handler raises to choose its command's outcome.

    `code` is a short machine-readable reason, `message` a human one, `details` any
    JSON object; all three are stored on the command and in its audit trail.
    """

    def __init__(self, code: str, message: str, details: dict[str, object] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details


class TransientCommandError(CommandHandlerError):
    """Retry after back-off while attempts remain, then move to the troubleshooting queue."""


class PermanentCommandError(CommandHandlerError):
    """Move to the troubleshooting queue at once: an operator decides."""


class BusinessRuleError(CommandHandlerError):
    """The command is refused for good: FAILED (terminal), with a FAILED reply."""


class HandlerAlreadyRegisteredError(TriobusError):
    """A handler is already registered for this (domain, command_type)."""

    def __init__(self, domain: str, command_type: str) -> None:
        super().__init__(f"a handler is already registered for {domain!r}/{command_type!r}")
        self.domain = domain
        self.command_type = command_type


@attrs.frozen
class HandlerContext:
    """Which attempt this is (1-based) out of how many."""

    attempt: int
    max_attempts: int


HandlerFn = Callable[[Command, HandlerContext], Awaitable[Mapping[str, Any] | None]]
F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__triobus_handler__"


@attrs.frozen
class Handler:
    """A registered handler; `runs_on_asyncio` handlers run through trio-asyncio."""

    fn: HandlerFn
    runs_on_asyncio: bool


def _checked_key(domain: str, command_type: str) -> tuple[str, str]:
    return check_name("domain", domain), check_name("command_type", command_type)


def _check_asyncio(key: tuple[str, str], runs_on_asyncio: object) -> None:
    check_bool("asyncio", runs_on_asyncio, context=f"{key[0]!r}/{key[1]!r}")


def handler(domain: str, command_type: str, *, asyncio: bool = False) -> Callable[[F], F]:
    """Mark a method of a handler class; `HandlerRegistry.register_instance` registers it."""
    key = _checked_key(domain, command_type)
    _check_asyncio(key, asyncio)

    def mark(fn: F) -> F:
        setattr(fn, _MARK, (key, asyncio))
        return fn

    return mark


class HandlerRegistry:
    """Maps (domain, command_type) to one handler. Registering a pair twice raises."""

    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str], Handler] = {}

    def register(
        self, domain: str, command_type: str, fn: HandlerFn, *, asyncio: bool = False
    ) -> None:
        key = _checked_key(domain, command_type)
        check_async_callable("handler", fn, context=f"{key[0]!r}/{key[1]!r}")
        _check_asyncio(key, asyncio)
        if key in self._handlers:
            raise HandlerAlreadyRegisteredError(*key)
        self._handlers[key] = Handler(fn, asyncio)

    def handler(self, domain: str, command_type: str, *, asyncio: bool = False) -> Callable[[F], F]:
        """Decorator form of `register` (the names are checked by this call)."""
        _check_asyncio(_checked_key(domain, command_type), asyncio)

        def register(fn: F) -> F:
            self.register(domain, command_type, fn, asyncio=asyncio)
            return fn

        return register

    def register_instance(self, obj: object) -> None:
        """Register every method of `obj` marked with the module-level `@handler`."""
        for name in dir(obj):
            method = getattr(obj, name, None)
            mark = getattr(method, _MARK, None)
            if mark is not None:
                (domain, command_type), runs_on_asyncio = mark
                self.register(domain, command_type, method, asyncio=runs_on_asyncio)  # type: ignore[arg-type]

    def get(self, domain: str, command_type: str) -> Handler | None:
        return self._handlers.get((domain, command_type))
