"""Handlers: what a worker runs for each (domain, command_type), and what they may raise.

A handler is ``async def handle(command: Command, ctx: HandlerContext) -> Mapping | None``.
The mapping it returns is stored as the command's result. It chooses a failing outcome
by raising `TransientCommandError`, `PermanentCommandError` or `BusinessRuleError`; any
other exception counts as transient (the whole table: `outcomes.py`).

Registered with `asyncio=True` it runs on the runtime's asyncio loop (trio-asyncio).
Registered with `transactional=True` it runs inside a transaction the worker opens for
the attempt (`ctx.conn`), which commits its writes together with the command's
completion, and only while the claim's lease is held (`transactional.py`). The two
cannot be combined: `ctx.conn` is a Trio connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import attrs

from triobus.actors.handler_context import HandlerContext
from triobus.persistence.errors import TriobusError, ValidationError
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


HandlerFn = Callable[[Command, HandlerContext], Awaitable[Mapping[str, Any] | None]]
F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__triobus_handler__"


@attrs.frozen
class Handler:
    """A registered handler: `runs_on_asyncio` handlers run through trio-asyncio,
    `transactional` ones inside the attempt's transaction (module docstring)."""

    fn: HandlerFn
    runs_on_asyncio: bool = False
    transactional: bool = False


def _checked_key(domain: str, command_type: str) -> tuple[str, str]:
    return check_name("domain", domain), check_name("command_type", command_type)


def _check_flags(key: tuple[str, str], runs_on_asyncio: object, transactional: object) -> None:
    context = f"{key[0]!r}/{key[1]!r}"
    check_bool("asyncio", runs_on_asyncio, context=context)
    check_bool("transactional", transactional, context=context)
    if runs_on_asyncio and transactional:
        raise ValidationError(
            "a handler cannot be both asyncio=True and transactional=True: its transaction"
            f" is a Trio connection; make it a Trio handler ({context})"
        )


def handler(
    domain: str, command_type: str, *, asyncio: bool = False, transactional: bool = False
) -> Callable[[F], F]:
    """Mark a method of a handler class; `HandlerRegistry.register_instance` registers it."""
    key = _checked_key(domain, command_type)
    _check_flags(key, asyncio, transactional)

    def mark(fn: F) -> F:
        setattr(fn, _MARK, (key, asyncio, transactional))
        return fn

    return mark


class HandlerRegistry:
    """Maps (domain, command_type) to one handler. Registering a pair twice raises."""

    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str], Handler] = {}

    def register(
        self,
        domain: str,
        command_type: str,
        fn: HandlerFn,
        *,
        asyncio: bool = False,
        transactional: bool = False,
    ) -> None:
        key = _checked_key(domain, command_type)
        check_async_callable("handler", fn, context=f"{key[0]!r}/{key[1]!r}")
        _check_flags(key, asyncio, transactional)
        if key in self._handlers:
            raise HandlerAlreadyRegisteredError(*key)
        self._handlers[key] = Handler(fn, asyncio, transactional)

    def handler(
        self, domain: str, command_type: str, *, asyncio: bool = False, transactional: bool = False
    ) -> Callable[[F], F]:
        """Decorator form of `register` (the arguments are checked by this call)."""
        _check_flags(_checked_key(domain, command_type), asyncio, transactional)

        def register(fn: F) -> F:
            self.register(domain, command_type, fn, asyncio=asyncio, transactional=transactional)
            return fn

        return register

    def register_instance(self, obj: object) -> None:
        """Register every method of `obj` marked with the module-level `@handler`."""
        for name in dir(obj):
            method = getattr(obj, name, None)
            mark = getattr(method, _MARK, None)
            if mark is not None:
                (domain, command_type), runs_on_asyncio, transactional = mark
                self.register(
                    domain,
                    command_type,
                    method,  # type: ignore[arg-type]
                    asyncio=runs_on_asyncio,
                    transactional=transactional,
                )

    def get(self, domain: str, command_type: str) -> Handler | None:
        return self._handlers.get((domain, command_type))

    def command_types(self, domain: str) -> list[str]:
        """The command types of `domain` that have a handler, sorted."""
        return sorted(t for d, t in self._handlers if d == domain)

    def domains(self) -> list[str]:
        """The domains that have at least one handler, sorted."""
        return sorted({d for d, _ in self._handlers})

    def has_transactional(self, domain: str) -> bool:
        """True when a handler of `domain` is registered with `transactional=True`."""
        return any(h.transactional for (d, _), h in self._handlers.items() if d == domain)
