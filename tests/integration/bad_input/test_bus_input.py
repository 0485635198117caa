"""Bad input for the CommandBus: send, get_command, query_commands, get_audit_trail,
read/ack/iter_replies, create_batch, get_batch, list_batches and list_batch_commands (what
every case asserts: cases.py)."""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Any

import pytest

from tests.integration.bad_input.cases import (
    INJECTION,
    NAN_DATA,
    UNKNOWN,
    Borrowed,
    Call,
    Case,
    Seed,
    bind,
    case,
    check_bad_input,
    json_cases,
    limit_offset_cases,
    name_cases,
    not_async,
    text_cases,
    uuid_cases,
)
from triobus.actors import (
    BatchCommand,
    BatchNotFoundError,
    DuplicateBatchError,
    DuplicateCommandError,
    FollowUpCommand,
    InvalidOperationError,
    Runtime,
    ValidationError,
)


def _batch_of(command: BatchCommand) -> Call:
    return lambda rt, s: rt.bus.create_batch("d", [command])


def _with_follow_up(argument: str, follow_up: object) -> Call:
    return lambda rt, s: rt.bus.create_batch(
        "d", [BatchCommand("T", uuid.uuid4(), {})], **{argument: follow_up}
    )


def _follow_up(**fields: Any) -> FollowUpCommand:
    """A FollowUpCommand with any (also ill-typed) field values."""
    return FollowUpCommand(**fields)


FOLLOW_UP_ARGUMENTS = ("on_complete_command", "on_success_command", "on_failure_command")


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
        "send-conn",
        "wrong-type",
        lambda rt, s: rt.bus.send("d", "T", uuid.uuid4(), {}, conn="a connection"),
        ValidationError,
        r"conn must be a transaction from runtime\.transaction\(\), got str \(domain 'd',",
    ),
    case(
        "create_batch-conn",
        "wrong-type",
        lambda rt, s: rt.bus.create_batch("d", [BatchCommand("T", uuid.uuid4(), {})], conn=1),
        ValidationError,
        r"conn must be a transaction from runtime\.transaction\(\), got int \(domain 'd', batch",
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
    # create_batch's follow-up commands and open batches
    *(
        case(
            f"create_batch-{argument}",
            "wrong-type",
            _with_follow_up(argument, {"domain": "d", "command_type": "T"}),
            ValidationError,
            f"{argument} must be a FollowUpCommand, got dict .*domain 'd', batch",
        )
        for argument in FOLLOW_UP_ARGUMENTS
    ),
    *name_cases(
        "create_batch-follow_up-domain",
        "domain",
        lambda rt, s, v: rt.bus.create_batch(
            "d",
            [BatchCommand("T", uuid.uuid4(), {})],
            on_complete_command=_follow_up(domain=v, command_type="T"),
        ),
        "on_complete_command of domain 'd', batch",
    ),
    *name_cases(
        "create_batch-follow_up-type",
        "command_type",
        lambda rt, s, v: rt.bus.create_batch(
            "d",
            [BatchCommand("T", uuid.uuid4(), {})],
            on_failure_command=_follow_up(domain="d", command_type=v),
        ),
        "on_failure_command of domain 'd', batch",
    ),
    *json_cases(
        "create_batch-follow_up-data",
        "on_success_command.data",
        lambda rt, s, v: rt.bus.create_batch(
            "d",
            [BatchCommand("T", uuid.uuid4(), {})],
            on_success_command=_follow_up(domain="d", command_type="T", data=v),
        ),
        "domain 'd', batch",
    ),
    case(
        "create_batch-follow_up-data",
        "reserved-key",
        _with_follow_up(
            "on_complete_command",
            FollowUpCommand(domain="d", command_type="T", data={"batch": 1}),
        ),
        ValidationError,
        "on_complete_command.data may not have the key \"batch\".*domain 'd', batch",
    ),
    *(
        case(
            f"create_batch-follow_up-max_attempts[{i}]",
            kind,
            _with_follow_up(
                "on_complete_command",
                _follow_up(domain="d", command_type="T", max_attempts=value),
            ),
            ValidationError,
            f"max_attempts {match}.*on_complete_command of domain 'd', batch",
        )
        for i, (kind, value, match) in enumerate(
            [
                ("out-of-range", 0, "must be between 1 and 1000, got 0"),
                ("out-of-range", 10**9, "must be between 1 and 1000"),
                ("wrong-type", "3", "must be an int"),
            ]
        )
    ),
    case(
        "create_batch-open",
        "wrong-type",
        lambda rt, s: rt.bus.create_batch("d", [], open="yes"),
        ValidationError,
        "open must be a bool, got str .*domain 'd', batch",
    ),
    case(
        "create_batch-commands",
        "empty",
        lambda rt, s: rt.bus.create_batch("d", []),
        ValidationError,
        "a batch needs at least one command .*domain 'd', batch",
    ),
    # add_to_batch, close_batch, cancel_batch
    *name_cases(
        "add_to_batch-domain",
        "domain",
        lambda rt, s, v: rt.bus.add_to_batch(v, s.batch, [BatchCommand("T", uuid.uuid4(), {})]),
    ),
    *uuid_cases(
        "add_to_batch-id",
        lambda rt, s, v: rt.bus.add_to_batch("d", v, [BatchCommand("T", uuid.uuid4(), {})]),
        "batch_id must be a UUID.*domain 'd'",
    ),
    case(
        "add_to_batch-commands",
        "empty",
        lambda rt, s: rt.bus.add_to_batch("d", s.batch, []),
        ValidationError,
        "a batch needs at least one command .*domain 'd', batch <batch>",
    ),
    case(
        "add_to_batch-command-data",
        "json",
        lambda rt, s: rt.bus.add_to_batch(
            "d", s.batch, [BatchCommand("T", uuid.uuid4(), NAN_DATA)]
        ),
        ValidationError,
        r"commands\[0\] of batch <batch>: data is not JSON-serialisable.*domain 'd'",
    ),
    case(
        "add_to_batch-closed",
        "state",
        lambda rt, s: rt.bus.add_to_batch("d", s.batch, [BatchCommand("T", uuid.uuid4(), {})]),
        InvalidOperationError,
        "batch <batch> in domain 'd' is closed: adding commands does not apply",
        reads=True,
    ),
    case(
        "add_to_batch-unknown",
        "state",
        lambda rt, s: rt.bus.add_to_batch("d", UNKNOWN, [BatchCommand("T", uuid.uuid4(), {})]),
        BatchNotFoundError,
        "batch <unknown> not found in domain 'd'",
        reads=True,
    ),
    *name_cases("close_batch-domain", "domain", lambda rt, s, v: rt.bus.close_batch(v, s.batch)),
    *uuid_cases(
        "close_batch-id",
        lambda rt, s, v: rt.bus.close_batch("d", v),
        "batch_id must be a UUID.*domain 'd'",
    ),
    case(
        "close_batch-closed",
        "state",
        lambda rt, s: rt.bus.close_batch("d", s.batch),
        InvalidOperationError,
        "batch <batch> in domain 'd' is closed: close does not apply",
        reads=True,
    ),
    case(
        "close_batch-conn",
        "wrong-type",
        lambda rt, s: rt.bus.close_batch("d", s.batch, conn=object()),
        ValidationError,
        "conn must be a transaction from runtime.transaction.., got object .domain 'd', batch",
    ),
    *name_cases(
        "cancel_batch-domain",
        "domain",
        lambda rt, s, v: rt.bus.cancel_batch(v, s.batch, reason="r"),
    ),
    *uuid_cases(
        "cancel_batch-id",
        lambda rt, s, v: rt.bus.cancel_batch("d", v, reason="r"),
        "batch_id must be a UUID.*domain 'd'",
    ),
    *text_cases(
        "cancel_batch-reason",
        "reason",
        lambda rt, s, v: rt.bus.cancel_batch("d", s.batch, reason=v),
        1000,
        "domain 'd', batch <batch>",
    ),
    *text_cases(
        "cancel_batch-operator",
        "operator",
        lambda rt, s, v: rt.bus.cancel_batch("d", s.batch, reason="r", operator=v),
        200,
        "domain 'd', batch <batch>",
    ),
    case(
        "cancel_batch-unknown",
        "state",
        lambda rt, s: rt.bus.cancel_batch("d", UNKNOWN, reason="r"),
        BatchNotFoundError,
        "batch <unknown> not found in domain 'd'",
        reads=True,
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


@pytest.mark.parametrize("bad", BUS_CASES)
async def test_bad_input_raises_a_specific_error_and_writes_nothing(
    runtime: Runtime, seed: Seed, borrowed: Borrowed, bad: Case
) -> None:
    await check_bad_input(bad, runtime, seed, borrowed)
