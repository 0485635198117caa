"""The handler registry: one handler per (domain, command_type), async functions only."""

from __future__ import annotations

import pytest

from triobus.actors import (
    Command,
    HandlerAlreadyRegisteredError,
    HandlerContext,
    HandlerRegistry,
    ValidationError,
    handler,
)


def test_registry_rejects_duplicates_and_sync_functions() -> None:
    registry = HandlerRegistry()

    async def fn(command: Command, ctx: HandlerContext) -> None:
        return None

    registry.register("d", "T", fn)
    with pytest.raises(HandlerAlreadyRegisteredError, match="'d'/'T'"):
        registry.register("d", "T", fn)
    with pytest.raises(ValidationError, match="async callable"):
        registry.register("d", "U", lambda c, x: None)  # type: ignore[arg-type, return-value]


def test_register_instance_binds_marked_methods() -> None:
    class Payments:
        def __init__(self, fee: int) -> None:
            self.fee = fee

        @handler("payments", "Debit")
        async def debit(self, command: Command, ctx: HandlerContext) -> dict[str, int]:
            return {"fee": self.fee}

    registry = HandlerRegistry()
    registry.register_instance(Payments(fee=3))
    registered = registry.get("payments", "Debit")
    assert registered is not None
    assert registered.fn.__self__.fee == 3  # type: ignore[attr-defined]
