"""Bad input for HandlerRegistry, the handler decorator and RetryPolicy (what every case
asserts: cases.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.integration.bad_input.cases import (
    Borrowed,
    Case,
    Seed,
    async_function,
    bind,
    case,
    check_bad_input,
    name_cases,
    not_async,
)
from triobus.actors import (
    HandlerAlreadyRegisteredError,
    HandlerRegistry,
    RetryPolicy,
    Runtime,
    ValidationError,
    handler,
)


def registry() -> Any:
    """A fresh registry, typed Any so that bad arguments type-check."""
    return HandlerRegistry()


any_handler: Any = handler


def _register_twice() -> None:
    registry = HandlerRegistry()
    registry.register("d", "T", async_function)
    registry.register("d", "T", async_function)


REGISTRY_CASES = [
    *name_cases(
        "register-domain",
        "domain",
        lambda rt, s, v: registry().register(v, "T", async_function),
    ),
    *name_cases(
        "register-type",
        "command_type",
        lambda rt, s, v: registry().register("d", v, async_function),
    ),
    *[
        case(
            f"register-fn[{i}]",
            "wrong-type",
            bind(lambda rt, s, fn: registry().register("d", "T", fn), fn),
            ValidationError,
            "handler must be an async callable.*'d'/'T'",
        )
        for i, fn in enumerate([not_async, None, "module:function"])
    ],
    case(
        "register-asyncio",
        "wrong-type",
        lambda rt, s: registry().register("d", "T", async_function, asyncio="yes"),
        ValidationError,
        "asyncio must be a bool, got 'yes'.*'d'/'T'",
    ),
    case(
        "register-twice",
        "state",
        lambda rt, s: _register_twice(),
        HandlerAlreadyRegisteredError,
        "a handler is already registered for 'd'/'T'",
    ),
    *name_cases("registry.handler-domain", "domain", lambda rt, s, v: registry().handler(v, "T"))[
        :1
    ],
    *name_cases(
        "registry.handler-type",
        "command_type",
        lambda rt, s, v: registry().handler("d", v),
    )[5:6],
    *name_cases("handler-type", "command_type", lambda rt, s, v: any_handler("d", v))[7:8],
    *[
        case(
            f"RetryPolicy-{field}[{i}]",
            kind,
            bind(lambda rt, s, k: RetryPolicy(**k), kwargs),
            ValidationError,
            match,
        )
        for i, (field, kind, kwargs, match) in enumerate(
            [
                ("max_attempts", "range", {"max_attempts": 0}, "max_attempts must be between 1"),
                ("max_attempts", "range", {"max_attempts": -1}, "max_attempts must be between 1"),
                ("max_attempts", "huge", {"max_attempts": 1001}, "between 1 and 1000, got 1001"),
                ("max_attempts", "wrong-type", {"max_attempts": True}, "max_attempts must be"),
                ("max_attempts", "wrong-type", {"max_attempts": "3"}, "max_attempts must be"),
                ("max_attempts", "wrong-type", {"max_attempts": 1.5}, "max_attempts must be"),
                ("backoff", "empty", {"backoff": ()}, "backoff must be a non-empty sequence"),
                ("backoff", "wrong-type", {"backoff": None}, "backoff must be a sequence"),
                ("backoff", "wrong-type", {"backoff": "10"}, "backoff must be a sequence"),
                ("backoff", "wrong-type", {"backoff": 10}, "backoff must be a sequence"),
                ("backoff", "wrong-type", {"backoff": ["1"]}, "backoff delay must be a number"),
                ("backoff", "range", {"backoff": [-1]}, "backoff delay must be a number"),
                ("backoff", "json", {"backoff": [math.nan]}, "backoff delay must be a number"),
                ("backoff", "huge", {"backoff": [1e12]}, "backoff delay must be a number"),
            ]
        )
    ],
]


@pytest.mark.parametrize("bad", REGISTRY_CASES)
async def test_bad_input_raises_a_specific_error_and_writes_nothing(
    runtime: Runtime, seed: Seed, borrowed: Borrowed, bad: Case
) -> None:
    await check_bad_input(bad, runtime, seed, borrowed)
