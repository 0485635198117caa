"""Bad input for every public entry point: a specific exception, and nothing written.

The shared part of the campaign: the seed's description, the case builders and the checks.
Its fixtures (the seeded database, `runtime`, `borrowed`) are in conftest.py; each entry
point has its own test file: test_bus_input.py (CommandBus), test_runtime_input.py
(open_runtime, Runtime), test_tsq_input.py (troubleshooting queue), test_registry_input.py
(HandlerRegistry, handler, RetryPolicy), test_lookups.py (lookups of what does not exist,
SQL in values), test_cli_input.py (the CLI) and test_dsn_passwords.py; test_case_ids.py
checks that the cases of the first four files have unique ids.

Each case calls one entry point with one kind of bad input against a database that holds a
command in every interesting state, a batch and a reply (`Seed`). It must raise the
expected error with a message naming the domain and id concerned, must not write (the
content of triobus.command, audit, batch, reply and schedule is unchanged) and, when the input alone
is wrong, must not even borrow a connection: arguments are checked before any I/O
(`check_bad_input`).
"""

from __future__ import annotations

import inspect
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import attrs
import pytest
import trio

from triobus.actors import Runtime, ValidationError
from triobus.persistence.pool import ConnectionPool

# -- the seeded database ------------------------------------------------------------------

TABLES = ("command", "audit", "batch", "reply", "schedule")
UNKNOWN = UUID(int=1)


@attrs.frozen
class Seed:
    """Commands of domain "d": `pending` (reply_to "q"), `parked` (in the TSQ), `canceled`
    (by an operator: its reply is in queue "q"); `batch` holds one pending command."""

    pending: UUID
    parked: UUID
    canceled: UUID
    batch: UUID

    def fill(self, text: str) -> str:
        """`text` with <pending>, <parked>, <canceled>, <batch> and <unknown> replaced."""
        for name, value in (*attrs.asdict(self).items(), ("unknown", UNKNOWN)):
            text = text.replace(f"<{name}>", str(value))
        return text


Snapshot = dict[str, tuple[int, str]]


async def snapshot(pool: ConnectionPool) -> Snapshot:
    """Row count and a digest of the whole content of each table."""
    found = {}
    async with pool.connection() as conn:
        for table in TABLES:
            row = await conn.fetch_one(
                f"SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY t::text),"
                f" '')) AS digest FROM triobus.{table} t"
            )
            assert row is not None
            found[table] = (row["n"], row["digest"])
    return found


@attrs.define
class Borrowed:
    """Counts connections borrowed from a pool (every query borrows one)."""

    count: int = 0


# -- the cases ----------------------------------------------------------------------------

Call = Callable[[Any, Seed], object]  # (runtime, seed): the runtime is Any to pass bad types


@attrs.frozen
class Case:
    kind: str  # the input class, for the coverage table
    call: Call
    error: type[Exception]
    match: str  # a regular expression; <pending>, <parked>, ... stand for the seed's ids
    reads: bool = False  # the database must be read to know (a lookup, a state check)


def case(
    name: str, kind: str, call: Call, error: type[Exception], match: str, *, reads: bool = False
) -> Any:
    return pytest.param(Case(kind, call, error, match, reads), id=f"{name}-{kind}")


HUGE = "x" * 100_000
INJECTION = "d'; DROP TABLE triobus.command; --"
NUL = "d\x00"
UNICODE = "dömäin☃"
SURROGATE = "\ud800"
NOT_UUIDS = ("not-a-uuid", "", 12345, f"{UNKNOWN}'; --", b"\x00" * 16)


def deep(levels: int = 100_000) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(levels):
        node["n"] = {}
        node = node["n"]
    return root


def bind(call: Callable[..., object], *values: object) -> Call:
    """`call(runtime, seed, *values)` as a `Call` (a lambda default would defeat mypy)."""
    return lambda rt, s: call(rt, s, *values)


async def async_function(*args: object) -> None:
    return None


def not_async(*args: object) -> None:
    return None


def uuid_cases(name: str, call: Callable[[Any, Seed, object], object], match: str) -> list[Any]:
    return [
        case(
            f"{name}[{i}]",
            "invalid-uuid",
            bind(call, v),
            ValidationError,
            match,
        )
        for i, v in enumerate(NOT_UUIDS)
    ]


def name_cases(
    name: str,
    label: str,
    call: Callable[[Any, Seed, object], object],
    context: str = "",
    *,
    optional: bool = False,
) -> list[Any]:
    """The bad values of a name argument (domain, command type, queue); None is not one
    when the argument is `optional`."""
    where = f".*{context}" if context else ""
    values: list[tuple[str, object, str]] = [
        ("wrong-type", 7, f"{label} must be a str, got int{where}"),
        ("wrong-type", None, f"{label} must be a str, got NoneType{where}"),
        ("empty", "", f"{label} must not be empty or blank{where}"),
        ("empty", "   ", f"{label} must not be empty or blank{where}"),
        ("huge", HUGE, f"{label} is 100000 characters long, the limit is 100{where}"),
        ("quotes", INJECTION, f"{label} .* may only contain{where}"),
        ("quotes", 'd"x', f"{label} .* may only contain{where}"),
        ("nul", NUL, f"{label} .* may only contain{where}"),
        ("unicode", UNICODE, f"{label} .* may only contain{where}"),
    ]
    return [
        case(f"{name}[{i}]", kind, bind(call, v), ValidationError, match)
        for i, (kind, v, match) in enumerate(values)
        if not (optional and v is None)
    ]


NAN_DATA = {"x": math.nan}
JSON_VALUES: list[tuple[str, object, str]] = [
    ("json", NAN_DATA, "not JSON-serialisable: Out of range float values"),
    ("json", {"x": math.inf}, "not JSON-serialisable"),
    ("json", {"x": [-math.inf]}, "not JSON-serialisable"),
    ("json", deep(), "not JSON-serialisable"),
    ("json", {"x": {1, 2}}, "not JSON-serialisable"),
    ("nul", {"x": "a\x00b"}, "NUL character"),
    ("nul", {"\x00": 1}, "NUL character"),
    ("unicode", {"x": SURROGATE}, "not JSON-serialisable"),
    ("wrong-type", [1, 2], "must be a JSON object \\(a mapping\\), got list"),
    ("wrong-type", '{"x": 1}', "must be a JSON object \\(a mapping\\), got str"),
    ("huge", {"x": "é" * 600_000}, "is 1200008 bytes as JSON, the limit is 1048576"),
]


def json_cases(
    name: str, label: str, call: Callable[[Any, Seed, object], object], context: str
) -> list[Any]:
    return [
        case(
            f"{name}[{i}]",
            kind,
            bind(call, v),
            ValidationError,
            f"{label} .*{match}.*{context}",
        )
        for i, (kind, v, match) in enumerate(JSON_VALUES)
    ]


def text_cases(
    name: str, label: str, call: Callable[[Any, Seed, object], object], limit: int, context: str
) -> list[Any]:
    """The bad values of free text (an operator, a reason, a batch name)."""
    values: list[tuple[str, object, str]] = [
        ("wrong-type", 5, f"{label} must be a str, got int"),
        ("empty", "", f"{label} must not be empty or blank"),
        ("empty", "\t ", f"{label} must not be empty or blank"),
        (
            "huge",
            "y" * (limit + 1),
            f"{label} is {limit + 1} characters long, the limit is {limit}",
        ),
        ("nul", "al\x00ice", f"{label} must not contain control characters"),
        ("unicode", f"al{SURROGATE}ice", f"{label} must not contain control characters"),
    ]
    return [
        case(
            f"{name}[{i}]",
            kind,
            bind(call, v),
            ValidationError,
            f"{match}.*{context}",
        )
        for i, (kind, v, match) in enumerate(values)
    ]


def limit_offset_cases(
    name: str, call: Callable[[Any, Seed, object, object], object], context: str = ""
) -> list[Any]:
    where = f".*{context}" if context else ""
    values: list[tuple[str, object, object, str]] = [
        ("range", 0, 0, "limit must be between 1 and 10000, got 0"),
        ("range", -1, 0, "limit must be between 1 and 10000, got -1"),
        ("huge", 10_001, 0, "limit must be between 1 and 10000, got 10001"),
        ("wrong-type", "10", 0, "limit must be an int, got '10'"),
        ("wrong-type", True, 0, "limit must be an int, got True"),
        ("range", 10, -1, "offset must be an int between 0 and 9223372036854775807, got -1"),
        ("huge", 10, 2**63, "offset must be an int between 0 and 9223372036854775807"),
        ("wrong-type", 10, 1.5, "offset must be an int .*got 1.5"),
    ]
    return [
        case(
            f"{name}-limit_offset[{i}]",
            kind,
            bind(call, v, o),
            ValidationError,
            match + where,
        )
        for i, (kind, v, o, match) in enumerate(values)
    ]


async def _run(bad: Case, runtime: Runtime, seed: Seed) -> None:
    with trio.fail_after(10):
        result = bad.call(runtime, seed)
        if inspect.isawaitable(result):
            await result


async def check_bad_input(bad: Case, runtime: Runtime, seed: Seed, borrowed: Borrowed) -> None:
    """Run `bad`: its specific error, a short message naming domain and id, no connection
    borrowed unless the database must be read to know, nothing written, nothing started."""
    before = await snapshot(runtime.pool)
    borrowed.count = 0
    with pytest.raises(bad.error) as info:
        await _run(bad, runtime, seed)
    assert re.search(seed.fill(bad.match), str(info.value), re.DOTALL), str(info.value)
    assert len(str(info.value)) < 1000  # huge input is not echoed back
    if not bad.reads:
        assert borrowed.count == 0, "the arguments were not checked before borrowing a connection"
    assert await snapshot(runtime.pool) == before
    assert runtime.statistics().workers == ()
    assert runtime.statistics().batches == ()


# -- the CLI ------------------------------------------------------------------------------

TRIOBUS = str(Path(sys.executable).with_name("triobus"))


@attrs.frozen
class Run:
    returncode: int
    stdout: str
    stderr: str


async def cli(*args: str, dsn: str | None = None) -> Run:
    """Run the real `triobus ARGS` to completion (as test_cli.py does)."""
    environment = {k: v for k, v in os.environ.items() if k != "TRIOBUS_DSN"}
    if dsn is not None:
        environment["TRIOBUS_DSN"] = dsn
    result = await trio.run_process(
        [TRIOBUS, *args], env=environment, capture_stdout=True, capture_stderr=True, check=False
    )
    return Run(result.returncode, result.stdout.decode(), result.stderr.decode())
