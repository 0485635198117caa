"""Commands as `send` and `create_batch` store them: validated, encoded, with their
correlation ids. Every check runs before anything touches the database; a failure's
message names the domain and the command id."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from uuid import UUID

import attrs

from triobus.persistence.errors import DuplicateCommandError, ValidationError
from triobus.persistence.json_values import JsonDefault
from triobus.persistence.records import BatchCommand, FollowUpCommand, FollowUpEvent
from triobus.persistence.validation import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_ATTEMPTS_LIMIT,
    check_int_in_range,
    check_name,
    check_schedule,
    check_text,
    check_uuid,
    encode_payload,
)


@attrs.frozen
class NewCommand:
    """A validated command, ready to insert. `data_json` is the encoded payload."""

    domain: str
    command_type: str
    command_id: UUID
    data_json: str
    correlation_id: UUID
    reply_to: str | None
    max_attempts: int | None
    delay: float | None = None
    not_before: datetime | None = None

    @property
    def context(self) -> str:
        """How errors name this command."""
        return f"domain {self.domain!r}, command {self.command_id}"


class CorrelationIds:
    """UUIDv7 values (RFC 9562) for one send or one batch: 48 bits of Unix time in
    milliseconds, then 74 random bits. Ids generated close in time sort close together, so
    the index on correlation ids takes them near its right edge, not on random pages.

    The random bits come from `os.urandom`, drawn for up to 256 ids at a time (a system
    call per id would be most of the cost of validating a big batch). Make one per call
    and drop it with the call: buffered random bits must never outlive it, or a forked
    child could hand out the same ones as its parent.
    """

    _LOW_62_BITS = (1 << 62) - 1
    _VERSION_AND_VARIANT = (0x7 << 76) | (0x2 << 62)

    def __init__(self, expected: int = 1) -> None:
        self._chunk = 10 * max(1, min(expected, 256))
        self._pool = b""
        self._offset = 0

    def next(self) -> UUID:
        if self._offset >= len(self._pool):
            self._pool, self._offset = os.urandom(self._chunk), 0
        bits = int.from_bytes(self._pool[self._offset : self._offset + 10])  # 80 random bits
        self._offset += 10
        millis = time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF
        return UUID(
            int=(millis << 80)
            | ((bits >> 62 & 0xFFF) << 64)
            | (bits & self._LOW_62_BITS)
            | self._VERSION_AND_VARIANT
        )


def new_command_id() -> UUID:
    """A time-ordered command id (UUIDv7). Ids made close in time sort close together, so
    the command table's primary key and the audit index take new commands near their
    right edge: with a long history, random ids (uuid4) spread every send and claim over
    pages that have left the cache (see the README's "Retention")."""
    return CorrelationIds().next()


def new_command(
    domain: object,
    command_type: object,
    command_id: object,
    data: object,
    *,
    correlation_id: object = None,
    reply_to: object = None,
    max_attempts: object = None,
    delay: object = None,
    not_before: object = None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    json_default: JsonDefault | None = None,
    correlation_ids: CorrelationIds | None = None,
    known_valid_names: set[str] | None = None,
) -> NewCommand:
    """Validate everything `send` takes; generate a correlation id when none is given
    (from `correlation_ids`, else a new `CorrelationIds`). `known_valid_names` as for
    `check_name`.

    The checks run without a context; a failure's message gets the domain and id then
    (formatting them up front cost a sixth of validating a batch of small commands)."""
    names = known_valid_names
    checked_domain = check_name("domain", domain, known_valid=names)
    checked_id: UUID | None = None
    try:
        checked_id = check_uuid("command_id", command_id)
        checked_delay, checked_not_before = check_schedule(delay, not_before)
        return NewCommand(
            domain=checked_domain,
            command_type=check_name("command_type", command_type, known_valid=names),
            command_id=checked_id,
            data_json=encode_payload(
                "data", data, max_bytes=max_payload_bytes, json_default=json_default
            ),
            correlation_id=(
                (correlation_ids or CorrelationIds()).next()
                if correlation_id is None
                else check_uuid("correlation_id", correlation_id)
            ),
            reply_to=(
                None if reply_to is None else check_name("reply_to", reply_to, known_valid=names)
            ),
            max_attempts=(
                None
                if max_attempts is None
                else check_int_in_range("max_attempts", max_attempts, limit=MAX_ATTEMPTS_LIMIT)
            ),
            delay=checked_delay,
            not_before=checked_not_before,
        )
    except ValidationError as ex:
        command = "" if checked_id is None else f", command {checked_id}"
        raise ValidationError(f"{ex} (domain {checked_domain!r}{command})") from None


def new_batch_commands(
    domain: str,
    batch_id: UUID,
    commands: object,
    *,
    max_payload_bytes: int,
    json_default: JsonDefault | None = None,
    context: str,
    allow_none: bool = False,
) -> list[NewCommand]:
    """Validate every command of a batch of `domain` (already checked: its name is taken
    as valid) as `send` validates one; raise `DuplicateCommandError` for an id given
    twice and `ValidationError` for no command (unless `allow_none`: an open batch may
    start empty). `context` names the batch in errors."""
    if isinstance(commands, str | bytes | Mapping) or not isinstance(commands, Iterable):
        raise ValidationError(
            f"commands must be an iterable of BatchCommand, got {type(commands).__name__}"
            f" ({context})"
        )
    correlation_ids = CorrelationIds(expected=256)
    known_valid_names = {domain}
    validated: list[NewCommand] = []
    seen: set[UUID] = set()
    for index, command in enumerate(commands):
        if not isinstance(command, BatchCommand):
            raise ValidationError(
                f"commands[{index}] must be a BatchCommand, got {type(command).__name__}"
                f" ({context})"
            )
        try:
            checked = new_command(
                domain,
                command.command_type,
                command.command_id,
                command.data,
                correlation_id=command.correlation_id,
                reply_to=command.reply_to,
                max_attempts=command.max_attempts,
                delay=command.delay,
                not_before=command.not_before,
                max_payload_bytes=max_payload_bytes,
                json_default=json_default,
                correlation_ids=correlation_ids,
                known_valid_names=known_valid_names,
            )
        except ValidationError as ex:
            raise ValidationError(f"commands[{index}] of batch {batch_id}: {ex}") from None
        if checked.command_id in seen:
            raise DuplicateCommandError(domain, checked.command_id)
        seen.add(checked.command_id)
        validated.append(checked)
    if not validated and not allow_none:
        raise ValidationError(f"a batch needs at least one command ({context})")
    return validated


# Follow-up command ids are UUIDv5 in this namespace, of "domain/batch id/event": the
# same batch and event always give the same id, so a follow-up is stored at most once.
FOLLOW_UP_NAMESPACE = UUID("6f1c2a52-3a0e-4d1b-9a53-7c1e9b8f4d10")


def follow_up_command_id(domain: str, batch_id: UUID, event: FollowUpEvent) -> UUID:
    return uuid.uuid5(FOLLOW_UP_NAMESPACE, f"{domain}/{batch_id}/{event}")


def encode_follow_ups(
    domain: str,
    batch_id: UUID,
    follow_ups: Mapping[FollowUpEvent, object],
    *,
    max_payload_bytes: int,
    json_default: JsonDefault | None,
    context: str,
) -> str | None:
    """The batch row's `follow_ups` column (None: no follow-up): each given
    `FollowUpCommand` checked (names, data as `send` checks it, without the key "batch"
    that triobus fills in) and stored with its derived command id."""
    stored: dict[str, dict[str, object]] = {}
    for event, follow_up in follow_ups.items():
        if follow_up is None:
            continue
        kind = event.argument
        if not isinstance(follow_up, FollowUpCommand):
            raise ValidationError(
                f"{kind} must be a FollowUpCommand, got {type(follow_up).__name__} ({context})"
            )
        where = f"{kind} of {context}"
        data = {} if follow_up.data is None else follow_up.data
        if isinstance(data, Mapping) and "batch" in data:
            raise ValidationError(
                f'{kind}.data may not have the key "batch": triobus puts the batch there'
                f" ({context})"
            )
        spec = {
            "domain": check_name("domain", follow_up.domain, context=where),
            "command_type": check_name("command_type", follow_up.command_type, context=where),
            "command_id": str(follow_up_command_id(domain, batch_id, event)),
            "max_attempts": (
                None
                if follow_up.max_attempts is None
                else check_int_in_range(
                    "max_attempts", follow_up.max_attempts, limit=MAX_ATTEMPTS_LIMIT, context=where
                )
            ),
        }
        data_json = encode_payload(
            f"{kind}.data",
            data,
            max_bytes=max_payload_bytes,
            context=context,
            json_default=json_default,
        )
        stored[event.value] = {**spec, "data": json.loads(data_json)}  # now plain JSON values
    return json.dumps(stored) if stored else None


@attrs.frozen
class NewBatch:
    """A validated batch, ready to insert: its commands checked as sends are.
    `follow_ups_json` is the batch row's `follow_ups` (see `encode_follow_ups`)."""

    domain: str
    batch_id: UUID
    name: str | None
    custom_data_json: str | None
    commands: list[NewCommand]
    follow_ups_json: str | None = None
    is_open: bool = False

    @property
    def context(self) -> str:
        return batch_context(self.domain, self.batch_id)


def batch_context(domain: str, batch_id: UUID) -> str:
    """How errors name a batch."""
    return f"domain {domain!r}, batch {batch_id}"


def checked_batch_key(domain: object, batch_id: object) -> tuple[str, UUID, str]:
    """A batch's domain and id, checked, and how errors name it."""
    checked_domain = check_name("domain", domain)
    checked_id = check_uuid("batch_id", batch_id, context=f"domain {checked_domain!r}")
    return checked_domain, checked_id, batch_context(checked_domain, checked_id)


def new_batch(
    domain: object,
    commands: object,
    *,
    batch_id: object = None,
    name: object = None,
    custom_data: object = None,
    on_complete_command: object = None,
    on_success_command: object = None,
    on_failure_command: object = None,
    open: object = False,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    json_default: JsonDefault | None = None,
) -> NewBatch:
    """Validate everything `create_batch` takes; a batch id is generated when none is given."""
    checked_domain = check_name("domain", domain)
    checked_batch_id = (
        uuid.uuid4()
        if batch_id is None
        else check_uuid("batch_id", batch_id, context=f"domain {checked_domain!r}")
    )
    context = batch_context(checked_domain, checked_batch_id)
    if not isinstance(open, bool):
        raise ValidationError(f"open must be a bool, got {type(open).__name__} ({context})")
    follow_ups = {
        FollowUpEvent.ON_COMPLETE: on_complete_command,
        FollowUpEvent.ON_SUCCESS: on_success_command,
        FollowUpEvent.ON_FAILURE: on_failure_command,
    }
    return NewBatch(
        domain=checked_domain,
        batch_id=checked_batch_id,
        name=None if name is None else check_text("name", name, max_length=200, context=context),
        custom_data_json=(
            None
            if custom_data is None
            else encode_payload(
                "custom_data",
                custom_data,
                max_bytes=max_payload_bytes,
                context=context,
                json_default=json_default,
            )
        ),
        commands=new_batch_commands(
            checked_domain,
            checked_batch_id,
            commands,
            max_payload_bytes=max_payload_bytes,
            json_default=json_default,
            context=context,
            allow_none=open,
        ),
        follow_ups_json=encode_follow_ups(
            checked_domain,
            checked_batch_id,
            follow_ups,
            max_payload_bytes=max_payload_bytes,
            json_default=json_default,
            context=context,
        ),
        is_open=open,
    )
