"""Bad input for every public entry point: a specific exception, and nothing written.

Each case calls one entry point with one kind of bad input against a database that holds a
command in every interesting state, a batch and a reply (`Seed`). It must raise the
expected error with a message naming the domain and id concerned, must not write (the
content of triobus.command, audit, batch and reply is unchanged) and, when the input alone
is wrong, must not even borrow a connection: arguments are checked before any I/O.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import re
import sys
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import attrs
import pytest
import trio

from triobus.actors import (
    BatchCommand,
    BatchNotFoundError,
    Command,
    CommandNotFoundError,
    DatabaseUnavailableError,
    DuplicateBatchError,
    DuplicateCommandError,
    HandlerAlreadyRegisteredError,
    HandlerContext,
    HandlerRegistry,
    InvalidOperationError,
    PermanentCommandError,
    RetryPolicy,
    Runtime,
    ValidationError,
    handler,
    open_runtime,
)
from triobus.actors.pytest_plugin import SessionServer
from triobus.persistence.databases import create_database, database_dsn, drop_database
from triobus.persistence.driver import DriverKind
from triobus.persistence.pool import ConnectionPool, open_pool
from triobus.persistence.validation import check_dsn

# -- the seeded database ------------------------------------------------------------------

TABLES = ("command", "audit", "batch", "reply")
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


async def _seed(dsn: str) -> Seed:
    async with open_runtime(dsn, migrate=False) as runtime:

        @runtime.registry.handler("d", "Broken")
        async def broken(command: Command, ctx: HandlerContext) -> None:
            raise PermanentCommandError("BROKEN", "needs an operator")

        worker = await runtime.start_worker("d", poll_interval=0.05)
        parked = [
            (await runtime.bus.send("d", "Broken", uuid.uuid4(), {"n": n}, reply_to="q")).command_id
            for n in range(2)
        ]
        with trio.fail_after(15):
            while await runtime.tsq.count_troubleshooting("d") < 2:  # noqa: ASYNC110 - polls the db
                await trio.sleep(0.02)
        await worker.stop()
        await runtime.tsq.operator_cancel("d", parked[1], "seeding a reply")
        pending = await runtime.bus.send("d", "Work", uuid.uuid4(), {"n": 0}, reply_to="q")
        batch = await runtime.bus.create_batch(
            "d", [BatchCommand("Work", uuid.uuid4(), {"n": 1})], name="seed"
        )
        return Seed(pending=pending.command_id, parked=parked[0], canceled=parked[1], batch=batch)


@pytest.fixture(scope="module")
def seeded_template(triobus_server: SessionServer) -> Iterator[tuple[str, Seed]]:
    """A database seeded once per module, copied for every test."""
    name = f"triobus_seed_{uuid.uuid4().hex[:12]}"
    admin = triobus_server.admin_dsn
    dsn = trio.run(lambda: create_database(admin, name, template=triobus_server.template))
    try:
        yield name, trio.run(_seed, dsn)
    finally:
        trio.run(drop_database, admin, name)


@pytest.fixture
def seeded_dsn(triobus_server: SessionServer, seeded_template: tuple[str, Seed]) -> Iterator[str]:
    name = f"triobus_test_{uuid.uuid4().hex[:12]}"
    admin = triobus_server.admin_dsn
    dsn = trio.run(lambda: create_database(admin, name, template=seeded_template[0]))
    try:
        yield dsn
    finally:
        trio.run(drop_database, admin, name)


@pytest.fixture
def seed(seeded_template: tuple[str, Seed]) -> Seed:
    return seeded_template[1]


@pytest.fixture
def shared_dsn(triobus_server: SessionServer, seeded_template: tuple[str, Seed]) -> str:
    """The seeded database itself, for tests that write nothing (they check that they
    did not: a test that wrote would fail, not leak into the next)."""
    return database_dsn(triobus_server.admin_dsn, seeded_template[0])


@pytest.fixture
async def runtime(shared_dsn: str) -> AsyncIterator[Runtime]:
    async with open_runtime(shared_dsn, migrate=False) as runtime:
        yield runtime


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


@pytest.fixture
def borrowed(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> Borrowed:
    counter = Borrowed()
    lend = runtime.pool.connection

    def counting() -> Any:
        counter.count += 1
        return lend()

    monkeypatch.setattr(runtime.pool, "connection", counting)
    return counter


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


def registry() -> Any:
    """A fresh registry, typed Any so that bad arguments type-check."""
    return HandlerRegistry()


any_handler: Any = handler


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


async def _open(dsn: object, **options: object) -> None:
    options.setdefault("migrate", False)
    async with open_runtime(dsn, **options):  # type: ignore[arg-type]
        raise AssertionError("the runtime opened")


def open_with(**options: object) -> Call:
    return lambda rt, s: _open(rt.dsn, **options)


def _batch_of(command: BatchCommand) -> Call:
    return lambda rt, s: rt.bus.create_batch("d", [command])


def _register_twice() -> None:
    registry = HandlerRegistry()
    registry.register("d", "T", async_function)
    registry.register("d", "T", async_function)


BUS_CASES = [
    # send
    *name_cases("send-domain", "domain", lambda rt, s, v: rt.bus.send(v, "T", uuid.uuid4(), {})),
    *name_cases(
        "send-type",
        "command_type",
        lambda rt, s, v: rt.bus.send("d", v, uuid.uuid4(), {}),
        "domain 'd', command",
    ),
    *name_cases(
        "send-reply_to",
        "reply_to",
        lambda rt, s, v: rt.bus.send("d", "T", uuid.uuid4(), {}, reply_to=v),
        "domain 'd', command",
        optional=True,
    ),
    *uuid_cases(
        "send-id", lambda rt, s, v: rt.bus.send("d", "T", v, {}), "command_id must be a UUID.*'d'"
    ),
    *uuid_cases(
        "send-correlation",
        lambda rt, s, v: rt.bus.send("d", "T", uuid.uuid4(), {}, correlation_id=v),
        "correlation_id must be a UUID.*domain 'd', command",
    ),
    *json_cases(
        "send-data",
        "data",
        lambda rt, s, v: rt.bus.send("d", "T", uuid.uuid4(), v),
        "domain 'd', command",
    ),
    case(
        "send-max_attempts",
        "range",
        lambda rt, s: rt.bus.send("d", "T", uuid.uuid4(), {}, max_attempts=0),
        ValidationError,
        "max_attempts must be between 1 and 1000, got 0.*domain 'd'",
    ),
    case(
        "send-max_attempts",
        "wrong-type",
        lambda rt, s: rt.bus.send("d", "T", uuid.uuid4(), {}, max_attempts="3"),
        ValidationError,
        "max_attempts must be an int",
    ),
    case(
        "send-max_attempts",
        "huge",
        lambda rt, s: rt.bus.send("d", "T", uuid.uuid4(), {}, max_attempts=2**70),
        ValidationError,
        "max_attempts must be between 1 and 1000",
    ),
    case(
        "send-delay",
        "range",
        lambda rt, s: rt.bus.send("d", "T", uuid.uuid4(), {}, delay=-1),
        ValidationError,
        "delay must be a number of seconds >= 0.*domain 'd'",
    ),
    case(
        "send-delay",
        "json",
        lambda rt, s: rt.bus.send("d", "T", uuid.uuid4(), {}, delay=math.nan),
        ValidationError,
        "delay must be a number of seconds",
    ),
    case(
        "send-not_before",
        "wrong-type",
        lambda rt, s: rt.bus.send("d", "T", uuid.uuid4(), {}, not_before=datetime(2030, 1, 1)),
        ValidationError,
        "not_before must be a timezone-aware datetime.*domain 'd'",
    ),
    case(
        "send-not_before-str",
        "wrong-type",
        lambda rt, s: rt.bus.send("d", "T", uuid.uuid4(), {}, not_before="2030-01-01"),
        ValidationError,
        "not_before must be a timezone-aware datetime",
    ),
    case(
        "send-duplicate",
        "state",
        lambda rt, s: rt.bus.send("d", "Work", s.pending, {}),
        DuplicateCommandError,
        "command <pending> already exists in domain 'd'",
        reads=True,
    ),
    # get_command
    *name_cases("get_command-domain", "domain", lambda rt, s, v: rt.bus.get_command(v, s.pending)),
    *uuid_cases(
        "get_command-id",
        lambda rt, s, v: rt.bus.get_command("d", v),
        "command_id must be a UUID.*domain 'd'",
    ),
    # query_commands
    *name_cases(
        "query-domain", "domain", lambda rt, s, v: rt.bus.query_commands(domain=v), optional=True
    ),
    *name_cases(
        "query-type",
        "command_type",
        lambda rt, s, v: rt.bus.query_commands(domain="d", command_type=v),
        "domain 'd'",
        optional=True,
    ),
    case(
        "query-status",
        "unknown-value",
        lambda rt, s: rt.bus.query_commands(status="pending"),
        ValidationError,
        "status 'pending' is not one of PENDING, ",
    ),
    case(
        "query-status",
        "quotes",
        lambda rt, s: rt.bus.query_commands(status="PENDING' OR '1'='1"),
        ValidationError,
        "is not one of",
    ),
    case(
        "query-status",
        "wrong-type",
        lambda rt, s: rt.bus.query_commands(status=3),
        ValidationError,
        "status 3 is not one of",
    ),
    *uuid_cases(
        "query-correlation",
        lambda rt, s, v: rt.bus.query_commands(domain="d", correlation_id=v),
        "correlation_id must be a UUID.*domain 'd'",
    ),
    *uuid_cases(
        "query-batch",
        lambda rt, s, v: rt.bus.query_commands(batch_id=v),
        "batch_id must be a UUID.*all domains",
    ),
    case(
        "query-created_after",
        "wrong-type",
        lambda rt, s: rt.bus.query_commands(created_after=datetime(2020, 1, 1)),
        ValidationError,
        "created_after must be a timezone-aware datetime",
    ),
    case(
        "query-created_before",
        "wrong-type",
        lambda rt, s: rt.bus.query_commands(created_before="yesterday"),
        ValidationError,
        "created_before must be a timezone-aware datetime",
    ),
    *limit_offset_cases(
        "query", lambda rt, s, v, o: rt.bus.query_commands(domain="d", limit=v, offset=o), "'d'"
    ),
    # get_audit_trail
    *uuid_cases(
        "audit-id",
        lambda rt, s, v: rt.bus.get_audit_trail(v, domain="d"),
        "command_id must be a UUID.*domain 'd'",
    ),
    *uuid_cases(
        "audit-id-any-domain",
        lambda rt, s, v: rt.bus.get_audit_trail(v),
        r"command_id must be a UUID.*\(all domains\)",
    )[:1],
    *name_cases(
        "audit-domain",
        "domain",
        lambda rt, s, v: rt.bus.get_audit_trail(s.pending, v),
        optional=True,
    ),
    # read_replies, ack_replies, iter_replies
    *name_cases("read_replies-queue", "queue", lambda rt, s, v: rt.bus.read_replies(v)),
    case(
        "read_replies-limit",
        "range",
        lambda rt, s: rt.bus.read_replies("q", limit=0),
        ValidationError,
        "limit must be between 1 and 10000, got 0.*queue 'q'",
    ),
    *name_cases("ack_replies-queue", "queue", lambda rt, s, v: rt.bus.ack_replies(v, [1])),
    *[
        case(
            f"ack_replies-ids[{i}]",
            kind,
            bind(lambda rt, s, v: rt.bus.ack_replies("q", v), v),
            ValidationError,
            match,
        )
        for i, (kind, v, match) in enumerate(
            [
                ("wrong-type", None, "reply_ids must be an iterable of ints, got NoneType.*'q'"),
                ("wrong-type", 5, "reply_ids must be an iterable of ints, got int"),
                ("wrong-type", "12", "reply_ids must be an iterable of ints, got str"),
                ("wrong-type", [1.5], "reply ids must be ints, got 1.5.*queue 'q'"),
                ("wrong-type", [True], "reply ids must be ints, got True"),
                ("wrong-type", ["1; DELETE FROM triobus.reply"], "reply ids must be ints"),
                ("range", [0], "reply ids must be between 1 and 9223372036854775807, got 0"),
                ("range", [-1], "reply ids must be between 1 and"),
                ("huge", [2**63], "reply ids must be between 1 and 9223372036854775807"),
            ]
        )
    ],
    *name_cases("iter_replies-queue", "queue", lambda rt, s, v: rt.bus.iter_replies(v)),
    case(
        "iter_replies-poll",
        "range",
        lambda rt, s: rt.bus.iter_replies("q", poll_interval=0),
        ValidationError,
        "poll_interval must be a number of seconds > 0.*queue 'q'",
    ),
    case(
        "iter_replies-poll",
        "json",
        lambda rt, s: rt.bus.iter_replies("q", poll_interval=math.nan),
        ValidationError,
        "poll_interval must be a number of seconds",
    ),
    case(
        "iter_replies-batch_size",
        "range",
        lambda rt, s: rt.bus.iter_replies("q", batch_size=0),
        ValidationError,
        "batch_size must be between 1 and 10000, got 0.*queue 'q'",
    ),
    # create_batch
    *name_cases(
        "create_batch-domain",
        "domain",
        lambda rt, s, v: rt.bus.create_batch(v, [BatchCommand("T", uuid.uuid4(), {})]),
    ),
    *uuid_cases(
        "create_batch-id",
        lambda rt, s, v: rt.bus.create_batch(
            "d", [BatchCommand("T", uuid.uuid4(), {})], batch_id=v
        ),
        "batch_id must be a UUID.*domain 'd'",
    ),
    *[
        case(
            f"create_batch-commands[{i}]",
            kind,
            bind(lambda rt, s, v: rt.bus.create_batch("d", v), v),
            ValidationError,
            match,
        )
        for i, (kind, v, match) in enumerate(
            [
                ("wrong-type", None, "commands must be an iterable of BatchCommand, got NoneType"),
                ("wrong-type", 5, "commands must be an iterable of BatchCommand, got int"),
                ("wrong-type", "T", "commands must be an iterable of BatchCommand, got str"),
                ("wrong-type", [{"command_type": "T"}], r"commands\[0\] must be a BatchCommand"),
                ("empty", [], "a batch needs at least one command .domain 'd', batch"),
            ]
        )
    ],
    case(
        "create_batch-command-data",
        "json",
        _batch_of(BatchCommand("T", uuid.uuid4(), NAN_DATA)),
        ValidationError,
        r"commands\[0\] of batch .*: data is not JSON-serialisable.*domain 'd', command",
    ),
    case(
        "create_batch-command-type",
        "quotes",
        _batch_of(BatchCommand(INJECTION, uuid.uuid4(), {})),
        ValidationError,
        r"commands\[0\] of batch .*command_type .* may only contain",
    ),
    case(
        "create_batch-command-id",
        "invalid-uuid",
        _batch_of(BatchCommand("T", "nope", {})),
        ValidationError,
        r"commands\[0\] of batch .*command_id must be a UUID.*domain 'd'",
    ),
    case(
        "create_batch-command-reply_to",
        "nul",
        _batch_of(BatchCommand("T", uuid.uuid4(), {}, reply_to="q\x00")),
        ValidationError,
        r"commands\[0\] of batch .*reply_to",
    ),
    case(
        "create_batch-command-repeated",
        "state",
        lambda rt, s: rt.bus.create_batch(
            "d", [BatchCommand("T", UNKNOWN, {}), BatchCommand("T", str(UNKNOWN), {})]
        ),
        DuplicateCommandError,
        "command <unknown> already exists in domain 'd'",
    ),
    case(
        "create_batch-command-stored",
        "state",
        lambda rt, s: rt.bus.create_batch(
            "d", [BatchCommand("T", uuid.uuid4(), {}), BatchCommand("T", s.pending, {})]
        ),
        DuplicateCommandError,
        "command <pending> already exists in domain 'd'",
        reads=True,
    ),
    case(
        "create_batch-id-stored",
        "state",
        lambda rt, s: rt.bus.create_batch(
            "d", [BatchCommand("T", uuid.uuid4(), {})], batch_id=s.batch
        ),
        DuplicateBatchError,
        "batch <batch> already exists in domain 'd'",
        reads=True,
    ),
    *text_cases(
        "create_batch-name",
        "name",
        lambda rt, s, v: rt.bus.create_batch("d", [BatchCommand("T", uuid.uuid4(), {})], name=v),
        200,
        "domain 'd', batch",
    ),
    *json_cases(
        "create_batch-custom_data",
        "custom_data",
        lambda rt, s, v: rt.bus.create_batch(
            "d", [BatchCommand("T", uuid.uuid4(), {})], custom_data=v
        ),
        "domain 'd', batch",
    ),
    case(
        "create_batch-on_complete",
        "wrong-type",
        lambda rt, s: rt.bus.create_batch(
            "d", [BatchCommand("T", uuid.uuid4(), {})], on_complete=not_async
        ),
        ValidationError,
        "on_complete must be an async callable.*domain 'd', batch",
    ),
    # get_batch, list_batches, list_batch_commands
    *name_cases("get_batch-domain", "domain", lambda rt, s, v: rt.bus.get_batch(v, s.batch)),
    *uuid_cases(
        "get_batch-id",
        lambda rt, s, v: rt.bus.get_batch("d", v),
        "batch_id must be a UUID.*domain 'd'",
    ),
    *name_cases("list_batches-domain", "domain", lambda rt, s, v: rt.bus.list_batches(v)),
    case(
        "list_batches-status",
        "unknown-value",
        lambda rt, s: rt.bus.list_batches("d", status="DONE'; --"),
        ValidationError,
        "status .* is not one of PENDING, IN_PROGRESS, COMPLETED, COMPLETED_WITH_FAILURES",
    ),
    *limit_offset_cases(
        "list_batches", lambda rt, s, v, o: rt.bus.list_batches("d", limit=v, offset=o), "'d'"
    ),
    *name_cases(
        "list_batch_commands-domain",
        "domain",
        lambda rt, s, v: rt.bus.list_batch_commands(v, s.batch),
    ),
    *uuid_cases(
        "list_batch_commands-id",
        lambda rt, s, v: rt.bus.list_batch_commands("d", v),
        "batch_id must be a UUID.*domain 'd'",
    ),
    case(
        "list_batch_commands-status",
        "unknown-value",
        lambda rt, s: rt.bus.list_batch_commands("d", s.batch, status="DONE"),
        ValidationError,
        "status 'DONE' is not one of",
    ),
    *limit_offset_cases(
        "list_batch_commands",
        lambda rt, s, v, o: rt.bus.list_batch_commands("d", s.batch, limit=v, offset=o),
        "'d'",
    ),
]

RUNTIME_CASES = [
    # open_runtime
    *[
        case(
            f"open_runtime-dsn[{i}]",
            kind,
            bind(lambda rt, s, v: _open(v), v),
            ValidationError,
            match,
        )
        for i, (kind, v, match) in enumerate(
            [
                ("wrong-type", 5, "dsn must be a str, got int"),
                ("wrong-type", b"host=x", "dsn must be a str, got bytes"),
                ("empty", "", "dsn must not be empty or blank"),
                ("empty", "  ", "dsn must not be empty or blank"),
                ("nul", "host=localhost\x00dbname=other", "dsn must not contain a NUL"),
                ("quotes", "host='localhost", "dsn is not a valid PostgreSQL connection string"),
                ("unknown-value", "flavour=mint", "dsn is not a valid PostgreSQL connection"),
                ("huge", "x" * 100_000, "dsn is not a valid PostgreSQL connection string"),
            ]
        )
    ],
    *[
        case(f"open_runtime-{option}", kind, open_with(**{option: value}), ValidationError, match)
        for option, kind, value, match in [
            ("registry", "wrong-type", {}, "registry must be a HandlerRegistry, got dict"),
            ("migrate", "wrong-type", "no", "migrate must be a bool, got 'no'"),
            ("driver", "unknown-value", "bogus", "driver 'bogus' is not one of native, thread"),
            ("driver", "empty", "", "driver '' is not one of"),
            ("driver", "wrong-type", 1, "driver 1 is not one of"),
            ("pool_size", "range", 0, "pool_size must be between 1 and 1000, got 0"),
            ("pool_size", "huge", 10**6, "pool_size must be between 1 and 1000"),
            ("pool_size", "wrong-type", "8", "pool_size must be an int"),
            ("max_payload_bytes", "range", 0, "max_payload_bytes must be between 1 and"),
            ("max_payload_bytes", "huge", 2**40, "max_payload_bytes must be between 1 and"),
            ("batch_callback_timeout", "json", math.nan, "batch_callback_timeout must be"),
            ("batch_callback_timeout", "range", 0, "batch_callback_timeout must be"),
            ("batch_reconcile_interval", "range", -1, "batch_reconcile_interval must be"),
            ("batch_reconcile_interval", "json", math.inf, "batch_reconcile_interval must be"),
        ]
    ],
    # start_worker
    *name_cases("start_worker-domain", "domain", lambda rt, s, v: rt.start_worker(v)),
    *[
        case(
            f"start_worker-{option}[{i}]",
            kind,
            bind(lambda rt, s, o: rt.start_worker("d", **o), {option: value}),
            ValidationError,
            f"{match}.*worker of domain 'd'",
        )
        for i, (option, kind, value, match) in enumerate(
            [
                ("concurrency", "range", 0, "concurrency must be between 1 and 10000, got 0"),
                ("concurrency", "wrong-type", "8", "concurrency must be an int"),
                ("concurrency", "huge", 10**9, "concurrency must be between 1 and 10000"),
                ("prefetch", "range", -1, "prefetch must be between 0 and 10000, got -1"),
                ("prefetch", "wrong-type", 1.5, "prefetch must be an int"),
                ("prefetch", "wrong-type", True, "prefetch must be an int"),
                ("prefetch", "huge", 10**9, "prefetch must be between 0 and 10000"),
                (
                    "visibility_timeout",
                    "range",
                    0,
                    "visibility_timeout must be a number of seconds",
                ),
                ("visibility_timeout", "json", math.nan, "visibility_timeout must be a number"),
                ("retry_policy", "wrong-type", {}, "retry_policy must be a RetryPolicy, got dict"),
                ("retry_policy", "wrong-type", 3, "retry_policy must be a RetryPolicy, got int"),
                ("handler_timeout", "range", -1, "handler_timeout must be a number of seconds"),
                ("poll_interval", "range", 0, "poll_interval must be a number of seconds > 0"),
                ("poll_interval", "wrong-type", "5", "poll_interval must be a number of seconds"),
                ("heartbeat_interval", "range", 30.0, "heartbeat_interval .* must be shorter"),
                ("grace_period", "json", math.inf, "grace_period must be a number of seconds"),
            ]
        )
    ],
    # watch_batch, unwatch_batch, wait_batch
    *name_cases(
        "watch_batch-domain", "domain", lambda rt, s, v: rt.watch_batch(v, s.batch, async_function)
    ),
    *uuid_cases(
        "watch_batch-id",
        lambda rt, s, v: rt.watch_batch("d", v, async_function),
        "batch_id must be a UUID.*domain 'd'",
    ),
    case(
        "watch_batch-callback",
        "wrong-type",
        lambda rt, s: rt.watch_batch("d", s.batch, not_async),
        ValidationError,
        "on_complete must be an async callable.*domain 'd', batch <batch>",
    ),
    case(
        "watch_batch-callback-none",
        "wrong-type",
        lambda rt, s: rt.watch_batch("d", UNKNOWN, None),
        ValidationError,
        "on_complete must be an async callable",
    ),
    case(
        "watch_batch-unknown",
        "unknown-id",
        lambda rt, s: rt.watch_batch("d", UNKNOWN, async_function),
        BatchNotFoundError,
        "batch <unknown> not found in domain 'd'",
        reads=True,
    ),
    case(
        "watch_batch-other-domain",
        "wrong-domain",
        lambda rt, s: rt.watch_batch("e", s.batch, async_function),
        BatchNotFoundError,
        "batch <batch> not found in domain 'e'",
        reads=True,
    ),
    *name_cases("unwatch_batch-domain", "domain", lambda rt, s, v: rt.unwatch_batch(v, s.batch)),
    *uuid_cases(
        "unwatch_batch-id",
        lambda rt, s, v: rt.unwatch_batch("d", v),
        "batch_id must be a UUID.*domain 'd'",
    ),
    *name_cases("wait_batch-domain", "domain", lambda rt, s, v: rt.wait_batch(v, s.batch)),
    *uuid_cases(
        "wait_batch-id",
        lambda rt, s, v: rt.wait_batch("d", v),
        "batch_id must be a UUID.*domain 'd'",
    ),
    case(
        "wait_batch-timeout",
        "range",
        lambda rt, s: rt.wait_batch("d", s.batch, timeout=-1),
        ValidationError,
        "timeout must be a number of seconds > 0.*domain 'd', batch <batch>",
    ),
    case(
        "wait_batch-timeout",
        "json",
        lambda rt, s: rt.wait_batch("d", s.batch, timeout=math.nan),
        ValidationError,
        "timeout must be a number of seconds",
    ),
    case(
        "wait_batch-unknown",
        "unknown-id",
        lambda rt, s: rt.wait_batch("d", UNKNOWN, timeout=5),
        BatchNotFoundError,
        "batch <unknown> not found in domain 'd'",
        reads=True,
    ),
    case(
        "wait_batch-other-domain",
        "wrong-domain",
        lambda rt, s: rt.wait_batch("e", s.batch, timeout=5),
        BatchNotFoundError,
        "batch <batch> not found in domain 'e'",
        reads=True,
    ),
]


def _operator_state_cases(name: str, call: Callable[[Any, str, object], object]) -> list[Any]:
    """An operator action on an unknown id, on the wrong domain, on a command not in the TSQ."""
    return [
        case(
            f"{name}-unknown",
            "unknown-id",
            lambda rt, s: call(rt, "d", UNKNOWN),
            CommandNotFoundError,
            "command <unknown> not found in domain 'd'",
            reads=True,
        ),
        case(
            f"{name}-other-domain",
            "wrong-domain",
            lambda rt, s: call(rt, "e", s.parked),
            CommandNotFoundError,
            "command <parked> not found in domain 'e'",
            reads=True,
        ),
        case(
            f"{name}-pending",
            "state",
            lambda rt, s: call(rt, "d", s.pending),
            InvalidOperationError,
            "command <pending> in domain 'd' is PENDING, not in the troubleshooting queue",
            reads=True,
        ),
        case(
            f"{name}-canceled",
            "state",
            lambda rt, s: call(rt, "d", s.canceled),
            InvalidOperationError,
            "command <canceled> in domain 'd' is CANCELED, not in the troubleshooting queue",
            reads=True,
        ),
    ]


TSQ_CASES = [
    # list / count
    *name_cases("tsq_list-domain", "domain", lambda rt, s, v: rt.tsq.list_troubleshooting(v)),
    *name_cases(
        "tsq_list-type",
        "command_type",
        lambda rt, s, v: rt.tsq.list_troubleshooting("d", command_type=v),
        "domain 'd'",
        optional=True,
    ),
    *limit_offset_cases(
        "tsq_list",
        lambda rt, s, v, o: rt.tsq.list_troubleshooting("d", limit=v, offset=o),
        "domain 'd'",
    ),
    *name_cases("tsq_count-domain", "domain", lambda rt, s, v: rt.tsq.count_troubleshooting(v)),
    *name_cases(
        "tsq_count-type",
        "command_type",
        lambda rt, s, v: rt.tsq.count_troubleshooting("d", command_type=v),
        "domain 'd'",
        optional=True,
    ),
    # operator_retry
    *name_cases("retry-domain", "domain", lambda rt, s, v: rt.tsq.operator_retry(v, s.parked)),
    *uuid_cases(
        "retry-id",
        lambda rt, s, v: rt.tsq.operator_retry("d", v),
        "command_id must be a UUID.*domain 'd'",
    ),
    *text_cases(
        "retry-operator",
        "operator",
        lambda rt, s, v: rt.tsq.operator_retry("d", s.parked, operator=v),
        200,
        "domain 'd', command <parked>",
    ),
    *_operator_state_cases("retry", lambda rt, d, i: rt.tsq.operator_retry(d, i)),
    # operator_cancel
    *name_cases(
        "cancel-domain", "domain", lambda rt, s, v: rt.tsq.operator_cancel(v, s.parked, "r")
    ),
    *uuid_cases(
        "cancel-id",
        lambda rt, s, v: rt.tsq.operator_cancel("d", v, "r"),
        "command_id must be a UUID.*domain 'd'",
    ),
    *text_cases(
        "cancel-reason",
        "reason",
        lambda rt, s, v: rt.tsq.operator_cancel("d", s.parked, v),
        1000,
        "domain 'd', command <parked>",
    ),
    *text_cases(
        "cancel-operator",
        "operator",
        lambda rt, s, v: rt.tsq.operator_cancel("d", s.parked, "r", operator=v),
        200,
        "domain 'd', command <parked>",
    ),
    *_operator_state_cases("cancel", lambda rt, d, i: rt.tsq.operator_cancel(d, i, "r")),
    # operator_complete
    *name_cases(
        "complete-domain", "domain", lambda rt, s, v: rt.tsq.operator_complete(v, s.parked)
    ),
    *uuid_cases(
        "complete-id",
        lambda rt, s, v: rt.tsq.operator_complete("d", v),
        "command_id must be a UUID.*domain 'd'",
    ),
    *json_cases(
        "complete-result",
        "result_data",
        lambda rt, s, v: rt.tsq.operator_complete("d", s.parked, result_data=v),
        "domain 'd', command <parked>",
    ),
    *text_cases(
        "complete-operator",
        "operator",
        lambda rt, s, v: rt.tsq.operator_complete("d", s.parked, operator=v),
        200,
        "domain 'd', command <parked>",
    ),
    *_operator_state_cases("complete", lambda rt, d, i: rt.tsq.operator_complete(d, i)),
    # bulk forms
    *name_cases("retry_all-domain", "domain", lambda rt, s, v: rt.tsq.retry_all(v)),
    *name_cases(
        "retry_all-type",
        "command_type",
        lambda rt, s, v: rt.tsq.retry_all("d", command_type=v),
        "domain 'd'",
        optional=True,
    ),
    *text_cases(
        "retry_all-operator",
        "operator",
        lambda rt, s, v: rt.tsq.retry_all("d", operator=v),
        200,
        "domain 'd'",
    ),
    *name_cases("cancel_all-domain", "domain", lambda rt, s, v: rt.tsq.cancel_all(v, "r")),
    *name_cases(
        "cancel_all-type",
        "command_type",
        lambda rt, s, v: rt.tsq.cancel_all("d", "r", command_type=v),
        "domain 'd'",
        optional=True,
    ),
    *text_cases(
        "cancel_all-reason", "reason", lambda rt, s, v: rt.tsq.cancel_all("d", v), 1000, "'d'"
    ),
    *text_cases(
        "cancel_all-operator",
        "operator",
        lambda rt, s, v: rt.tsq.cancel_all("d", "r", operator=v),
        200,
        "domain 'd'",
    ),
]

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

ALL_CASES = [*BUS_CASES, *RUNTIME_CASES, *TSQ_CASES, *REGISTRY_CASES]


async def _run(bad: Case, runtime: Runtime, seed: Seed) -> None:
    with trio.fail_after(10):
        result = bad.call(runtime, seed)
        if inspect.isawaitable(result):
            await result


@pytest.mark.parametrize("bad", ALL_CASES)
async def test_bad_input_raises_a_specific_error_and_writes_nothing(
    runtime: Runtime, seed: Seed, borrowed: Borrowed, bad: Case
) -> None:
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


def test_every_case_has_a_unique_id() -> None:
    ids = [param.id for param in ALL_CASES]
    assert len(ids) == len(set(ids))


# -- lookups of what does not exist: None or nothing, and nothing written ------------------

LOOKUPS: list[Any] = [
    pytest.param(
        lambda rt, s: rt.bus.get_command("e", s.pending), None, id="get_command-other-domain"
    ),
    pytest.param(lambda rt, s: rt.bus.get_command("d", UNKNOWN), None, id="get_command-unknown"),
    pytest.param(lambda rt, s: rt.bus.get_batch("e", s.batch), None, id="get_batch-other-domain"),
    pytest.param(lambda rt, s: rt.bus.list_batches("e"), [], id="list_batches-unknown-domain"),
    pytest.param(
        lambda rt, s: rt.bus.list_batch_commands("e", s.batch), [], id="list_batch_commands-other"
    ),
    pytest.param(lambda rt, s: rt.bus.query_commands(domain="e"), [], id="query-unknown-domain"),
    pytest.param(lambda rt, s: rt.bus.get_audit_trail(s.pending, "e"), [], id="audit-other-domain"),
    pytest.param(lambda rt, s: rt.bus.read_replies("nobody"), [], id="read_replies-unknown-queue"),
    pytest.param(lambda rt, s: rt.bus.ack_replies("nobody", [1, 2, 3]), 0, id="ack-other-queue"),
    pytest.param(lambda rt, s: rt.tsq.count_troubleshooting("e"), 0, id="tsq_count-unknown-domain"),
    pytest.param(lambda rt, s: rt.tsq.list_troubleshooting("e"), [], id="tsq_list-unknown-domain"),
    pytest.param(lambda rt, s: rt.tsq.retry_all("e"), 0, id="retry_all-unknown-domain"),
    pytest.param(
        lambda rt, s: rt.tsq.cancel_all("d", "r", command_type="Work"), 0, id="cancel_all-no-match"
    ),
]


@pytest.mark.parametrize(("lookup", "expected"), LOOKUPS)
async def test_lookups_of_what_does_not_exist_find_nothing_and_write_nothing(
    runtime: Runtime, seed: Seed, lookup: Call, expected: object
) -> None:
    before = await snapshot(runtime.pool)
    result = lookup(runtime, seed)
    assert inspect.isawaitable(result)
    assert await result == expected
    assert await snapshot(runtime.pool) == before


async def test_sql_in_values_is_stored_verbatim(seeded_dsn: str, seed: Seed) -> None:
    """Quotes, semicolons and unicode in free text and payloads are values, never SQL."""
    async with open_runtime(seeded_dsn, migrate=False) as runtime:
        await _store_sql_like_values(runtime, seed)


async def _store_sql_like_values(runtime: Runtime, seed: Seed) -> None:
    reason = 'r\'); DELETE FROM triobus.audit; -- Zoë ☃ "quoted"'
    operator = "o'; DROP TABLE triobus.command; --"
    await runtime.tsq.operator_cancel("d", seed.parked, reason, operator=operator)
    trail = await runtime.bus.get_audit_trail(seed.parked, domain="d")
    assert trail[-1].details == {"operator": operator, "reason": reason}
    data: dict[str, object] = {
        INJECTION: INJECTION,
        "ü": ["'", '"', ";", "\\", "%s", "%(x)s", "$1"],
    }
    sent = await runtime.bus.send("d", "T", uuid.uuid4(), data)
    stored = await runtime.bus.get_command("d", sent.command_id)
    assert stored is not None and stored.data == data
    after = await snapshot(runtime.pool)
    assert after["command"][0] == 5 and after["audit"][0] > 0


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


CLI_CASES = [
    pytest.param(("tsq", "list", INJECTION), 1, "may only contain", id="tsq_list-quotes"),
    pytest.param(("tsq", "count", ""), 1, "domain must not be empty", id="tsq_count-empty"),
    pytest.param(("tsq", "count", "x" * 100_000), 1, "100000 characters long", id="count-huge"),
    pytest.param(("tsq", "count", UNICODE), 1, "may only contain", id="tsq_count-unicode"),
    pytest.param(("tsq", "count", "d", "--type", "T;"), 1, "command_type", id="tsq_count-type"),
    pytest.param(("tsq", "list", "d", "--limit", "0"), 1, "limit must be", id="list-limit-range"),
    pytest.param(("tsq", "list", "d", "--limit", "ten"), 2, "invalid int value", id="limit-type"),
    pytest.param(("tsq", "list", "d", "--offset", "-1"), 1, "offset must", id="offset-range"),
    pytest.param(("tsq", "list", "d", "--offset", str(2**63)), 1, "offset must", id="offset-huge"),
    pytest.param(("tsq", "retry", "d", "<unknown>'--"), 1, "must be a UUID", id="retry-uuid"),
    pytest.param(
        ("tsq", "retry", "e", "<parked>"),
        1,
        "<parked> not found in domain 'e'",
        id="retry-other-domain",
    ),
    pytest.param(
        ("tsq", "retry", "d", "<pending>"),
        1,
        "is PENDING, not in the troubleshooting",
        id="retry-wrong-state",
    ),
    pytest.param(
        ("tsq", "cancel", "d", "<parked>", "--reason", " "),
        1,
        "reason must not be empty",
        id="cancel-reason-empty",
    ),
    pytest.param(
        ("tsq", "cancel", "d", "<parked>"),
        2,
        "arguments are required: --reason",
        id="cancel-reason-missing",
    ),
    pytest.param(
        ("tsq", "complete", "d", "<parked>", "--result", '{"x": NaN}'),
        1,
        "not JSON-serialisable",
        id="complete-result-nan",
    ),
    pytest.param(
        ("tsq", "complete", "d", "<parked>", "--result", "[1]"),
        1,
        "must be a JSON object",
        id="complete-result-list",
    ),
    pytest.param(
        ("tsq", "complete", "d", "<parked>", "--result", "[" * 100_000),
        2,
        "nested too deeply",
        id="complete-result-deep",
    ),
    pytest.param(
        ("tsq", "complete", "d", "<parked>", "--operator", "a\tb"),
        1,
        "control characters",
        id="complete-operator-control",
    ),
    pytest.param(
        ("tsq", "retry-all", "d", "--operator", ""),
        1,
        "operator must not be empty",
        id="retry_all-operator-empty",
    ),
    pytest.param(
        ("tsq", "cancel-all", "d'", "--reason", "r"), 1, "may only contain", id="cancel_all-quotes"
    ),
    pytest.param(
        ("command", "show", "d", "x;y"), 1, "command_id must be a UUID", id="command_show-uuid"
    ),
    pytest.param(
        ("batch", "list", "d", "--status", "DONE"), 1, "is not one of", id="batch_list-status"
    ),
    pytest.param(
        ("batch", "show", "e", "<batch>"),
        1,
        "<batch> not found in domain 'e'",
        id="batch_show-other-domain",
    ),
    pytest.param(
        ("batch", "watch", "d", "<batch>", "--interval", "nan"),
        2,
        "--interval must be a number of seconds",
        id="batch_watch-interval-nan",
    ),
    pytest.param(
        ("batch", "watch", "d", "<batch>", "--interval", "0"),
        2,
        "--interval must be a number of seconds",
        id="batch_watch-interval-zero",
    ),
    pytest.param(("replies", "read", "q q"), 1, "may only contain", id="replies_read-space"),
    pytest.param(
        ("replies", "read", "q", "--limit", "-5"), 1, "limit must be", id="replies_read-limit"
    ),
    pytest.param(("tsq", "explode", "d"), 2, "invalid choice", id="unknown-action"),
    pytest.param(
        ("--dsn", "flavour=mint", "tsq", "count", "d"),
        1,
        "dsn is not a valid PostgreSQL connection string",
        id="dsn-invalid",
    ),
]


@pytest.mark.parametrize(("args", "status", "message"), CLI_CASES)
async def test_cli_bad_input_is_one_line_and_writes_nothing(
    runtime: Runtime, seed: Seed, shared_dsn: str, args: tuple[str, ...], status: int, message: str
) -> None:
    before = await snapshot(runtime.pool)
    result = await cli(*(seed.fill(arg) for arg in args), dsn=shared_dsn)
    assert result.returncode == status, result.stderr
    assert seed.fill(message) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert await snapshot(runtime.pool) == before


# -- DSN passwords are never shown --------------------------------------------------------

PASSWORD = "s3cret-pa55"
UNREACHABLE = f"postgresql://u:{PASSWORD}@127.0.0.1:1/db"
MALFORMED = [
    f"postgresql://u:{PASSWORD}@[::1/db",  # libpq quotes the whole URI
    f"postgresql://u:{PASSWORD}%zz@h/db",  # ... the bad token
    f"{PASSWORD}",  # ... a word without "="
    f"host=h password={PASSWORD} oops",
]


def shown(ex: BaseException) -> str:
    """Everything a user could see of an exception: message, chain and traceback."""
    return "".join(traceback.format_exception(ex))


def logged(caplog: pytest.LogCaptureFixture) -> str:
    handler = logging.Handler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    return "\n".join(handler.format(record) for record in caplog.records)


@pytest.mark.parametrize("driver", list(DriverKind))
@pytest.mark.parametrize("dsn", [UNREACHABLE, *MALFORMED])
async def test_dsn_passwords_are_never_logged_nor_in_errors(
    caplog: pytest.LogCaptureFixture, dsn: str, driver: DriverKind
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises((DatabaseUnavailableError, ValidationError)) as info:
        async with open_runtime(dsn, driver=driver):
            raise AssertionError("the runtime opened")
    assert PASSWORD not in shown(info.value)
    assert PASSWORD not in logged(caplog)


async def _borrow_one(dsn: str, driver: DriverKind) -> None:
    async with open_pool(dsn, driver=driver, connect_timeout=0.3) as pool, pool.connection():
        raise AssertionError("connected")


@pytest.mark.parametrize("driver", list(DriverKind))
async def test_pool_retries_do_not_log_the_password(
    caplog: pytest.LogCaptureFixture, driver: DriverKind
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DatabaseUnavailableError) as info:
        await _borrow_one(UNREACHABLE, driver)
    assert "could not connect after" in str(info.value)
    assert any("retrying with back-off" in r.getMessage() for r in caplog.records)
    assert PASSWORD not in shown(info.value)
    assert PASSWORD not in logged(caplog)


@pytest.mark.parametrize("how", ["option", "environment"])
@pytest.mark.parametrize("dsn", [UNREACHABLE, *MALFORMED])
async def test_cli_never_prints_the_password(dsn: str, how: str) -> None:
    args = ("--dsn", dsn) if how == "option" else ()
    result = await cli(*args, "tsq", "count", "d", dsn=dsn if how == "environment" else None)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stderr + result.stdout


@pytest.mark.parametrize("dsn", MALFORMED)
def test_dsn_check_never_quotes_the_dsn(dsn: str) -> None:
    with pytest.raises(ValidationError, match="not shown: it may contain a password") as info:
        check_dsn(dsn)
    assert PASSWORD not in shown(info.value)
