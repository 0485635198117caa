"""Shared test helpers. The database fixtures come from triobus's own pytest plugin."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import trio

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
