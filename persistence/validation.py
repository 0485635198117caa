"""Argument checks that run before anything touches the database.

Every check raises `ValidationError` with a message naming the domain and id concerned.
Names (domains, command types, reply queues) are plain values, never SQL identifiers;
they are still restricted to a safe alphabet so they print and log cleanly.
"""

from __future__ import annotations

import enum
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from psycopg.conninfo import conninfo_to_dict

from triobus.persistence.errors import ValidationError
from triobus.persistence.json_values import JsonDefault, encoder

E = TypeVar("E", bound=enum.StrEnum)

NAME_MAX_LENGTH = 100
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_ATTEMPTS_LIMIT = 1000
MAX_SECONDS = 10 * 365 * 24 * 3600.0  # ten years: beyond this a duration is a mistake
MAX_PAYLOAD_BYTES_LIMIT = 64 * 1024 * 1024
MAX_BIGINT = 2**63 - 1  # offsets and reply ids are PostgreSQL bigints
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]*")
# json.dumps escapes NUL as \u0000; jsonb refuses it. An escaped backslash before it is not it.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _check_str(kind: str, value: object, *, max_length: int, where: str) -> str:
    """A str that is neither blank nor longer than `max_length`."""
    if not isinstance(value, str):
        raise ValidationError(f"{kind} must be a str, got {type(value).__name__}{where}")
    if not value.strip():
        raise ValidationError(f"{kind} must not be empty or blank{where}")
    if len(value) > max_length:
        raise ValidationError(
            f"{kind} is {len(value)} characters long, the limit is {max_length}{where}"
        )
    return value


def check_name(
    kind: str, value: object, *, context: str = "", known_valid: set[str] | None = None
) -> str:
    """A domain, command type or queue name: 1-100 of ``A-Z a-z 0-9 _ . : -``.

    `known_valid`, when given, holds names already found valid and learns this one: a
    batch of 100,000 commands checks the same few names over and over.
    """
    if known_valid is not None and type(value) is str and value in known_valid:
        return value
    where = f" ({context})" if context else ""
    name = _check_str(kind, value, max_length=NAME_MAX_LENGTH, where=where)
    if not _NAME.fullmatch(name):
        raise ValidationError(
            f"{kind} {name!r} may only contain letters, digits and _ . : - "
            f"and must start with a letter or digit{where}"
        )
    if known_valid is not None:
        known_valid.add(name)
    return name


def check_text(kind: str, value: object, *, max_length: int, context: str) -> str:
    """Free text (an operator name, a reason): non-blank, printable, at most `max_length`."""
    text = _check_str(kind, value, max_length=max_length, where=f" ({context})")
    if not text.isprintable():
        raise ValidationError(f"{kind} must not contain control characters ({context})")
    return text


def check_operator(operator: object, *, context: str) -> str | None:
    """Who acts, as the audit trail records it (None: not said)."""
    return (
        None
        if operator is None
        else check_text("operator", operator, max_length=200, context=context)
    )


def check_reason(reason: object, *, context: str) -> str:
    """Why an operator cancels, as the audit trail and the reply record it."""
    return check_text("reason", reason, max_length=1000, context=context)


def check_enum(kind: str, enum_type: type[E], value: object, *, context: str = "") -> E:
    """A member of `enum_type`, or its value."""
    if isinstance(value, str):
        try:
            return enum_type(value)
        except ValueError:
            pass
    where = f" ({context})" if context else ""
    known = ", ".join(enum_type)
    raise ValidationError(f"{kind} {value!r:.80} is not one of {known}{where}")


def check_aware_datetime(kind: str, value: object, *, context: str = "") -> datetime:
    """A timezone-aware datetime."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        where = f" ({context})" if context else ""
        raise ValidationError(f"{kind} must be a timezone-aware datetime, got {value!r:.80}{where}")
    return value


def check_uuid(kind: str, value: object, *, context: str = "") -> UUID:
    """A UUID, or its canonical string form."""
    where = f" ({context})" if context else ""
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            pass
    raise ValidationError(f"{kind} must be a UUID, got {value!r:.80}{where}")


def check_optional_uuid(kind: str, value: object, *, context: str = "") -> UUID | None:
    return None if value is None else check_uuid(kind, value, context=context)


def check_int_in_range(
    kind: str, value: object, *, limit: int, minimum: int = 1, context: str = ""
) -> int:
    """An int from `minimum` (1 unless given) to `limit`."""
    where = f" ({context})" if context else ""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"{kind} must be an int, got {value!r:.80}{where}")
    if not minimum <= value <= limit:
        raise ValidationError(f"{kind} must be between {minimum} and {limit}, got {value}{where}")
    return value


def check_seconds(
    kind: str, value: object, *, allow_zero: bool = False, context: str = ""
) -> float:
    """A finite number of seconds, > 0 (>= 0 with `allow_zero`), at most ten years."""
    where = f" ({context})" if context else ""
    bound = ">= 0" if allow_zero else "> 0"
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not 0 <= value <= MAX_SECONDS  # also False for NaN; no OverflowError for 10**400
        or (value == 0 and not allow_zero)
    ):
        raise ValidationError(
            f"{kind} must be a number of seconds {bound} and at most {MAX_SECONDS:.0f},"
            f" got {value!r:.80}{where}"
        )
    return float(value)


def check_optional_seconds(kind: str, value: object, *, context: str = "") -> float | None:
    return None if value is None else check_seconds(kind, value, context=context)


def check_max_payload_bytes(kind: str, value: object, *, context: str = "") -> int:
    """A bound on JSON payloads, in bytes: 1 to 64 MiB."""
    return check_int_in_range(kind, value, limit=MAX_PAYLOAD_BYTES_LIMIT, context=context)


def check_limit_offset(limit: object, offset: object, *, context: str = "") -> tuple[int, int]:
    where = f" ({context})" if context else ""
    checked_limit = check_int_in_range("limit", limit, limit=10_000, context=context)
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_BIGINT:
        raise ValidationError(
            f"offset must be an int between 0 and {MAX_BIGINT}, got {offset!r:.80}{where}"
        )
    return checked_limit, offset


def check_bool(kind: str, value: object, *, context: str = "") -> bool:
    where = f" ({context})" if context else ""
    if not isinstance(value, bool):
        raise ValidationError(f"{kind} must be a bool, got {value!r:.80}{where}")
    return value


def check_reply_ids(value: object, *, context: str) -> list[int]:
    """An iterable of reply ids (ints from 1 to the bigint maximum), as a list."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise ValidationError(
            f"reply_ids must be an iterable of ints, got {type(value).__name__} ({context})"
        )
    ids = list(value)
    for reply_id in ids:
        if not isinstance(reply_id, int) or isinstance(reply_id, bool):
            raise ValidationError(f"reply ids must be ints, got {reply_id!r:.80} ({context})")
        if not 1 <= reply_id <= MAX_BIGINT:
            raise ValidationError(
                f"reply ids must be between 1 and {MAX_BIGINT}, got {reply_id} ({context})"
            )
    return ids


def check_dsn(value: object) -> str:
    """A libpq connection string or URI that parses. The messages never quote the DSN:
    it may hold a password (libpq's own parse errors can quote it)."""
    if not isinstance(value, str):
        raise ValidationError(f"dsn must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValidationError("dsn must not be empty or blank")
    if "\x00" in value:
        raise ValidationError("dsn must not contain a NUL character")
    try:
        conninfo_to_dict(value)
    except Exception:
        raise ValidationError(
            "dsn is not a valid PostgreSQL connection string or URI"
            " (not shown: it may contain a password)"
        ) from None
    return value


def encode_payload(
    kind: str,
    data: object,
    *,
    max_bytes: int,
    context: str = "",
    json_default: JsonDefault | None = None,
) -> str:
    """A JSON object, encoded (Decimal, UUID, dates and enums as `json_values` says, other
    types by `json_default`); rejects other values, NaN/Infinity, NUL and oversize."""
    where = f" ({context})" if context else ""
    if not isinstance(data, Mapping):
        raise ValidationError(
            f"{kind} must be a JSON object (a mapping), got {type(data).__name__}{where}"
        )
    check_optional_callable("json_default", json_default, context=context)
    try:
        text = encoder(json_default).encode(data if type(data) is dict else dict(data))
        # ASCII text is as many bytes as characters; other text is encoded, which also
        # refuses lone surrogates (UnicodeEncodeError is a ValueError)
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
    except Exception as ex:  # what JSON refuses, and whatever an application hook raises
        raise ValidationError(f"{kind} is not JSON-serialisable: {ex}{where}") from None
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise ValidationError(
            f"{kind} contains a NUL character, which PostgreSQL cannot store{where}"
        )
    if size > max_bytes:
        raise ValidationError(f"{kind} is {size} bytes as JSON, the limit is {max_bytes}{where}")
    return text


def check_schedule(
    delay: object, not_before: object, *, context: str = ""
) -> tuple[float | None, datetime | None]:
    """`delay` (seconds >= 0) or `not_before` (an aware datetime), not both."""
    where = f" ({context})" if context else ""
    if delay is not None and not_before is not None:
        raise ValidationError(f"give delay or not_before, not both{where}")
    checked_delay = (
        None if delay is None else check_seconds("delay", delay, allow_zero=True, context=context)
    )
    checked_not_before = (
        None
        if not_before is None
        else check_aware_datetime("not_before", not_before, context=context)
    )
    return checked_delay, checked_not_before


def storable_text(value: object, *, max_length: int) -> str:
    """`str(value)` as PostgreSQL can store it: NUL and lone surrogates escaped, and cut to
    `max_length` characters. For text that is recorded, never refused (handler errors)."""
    try:
        text = str(value)
    except Exception:
        text = f"<{type(value).__name__} whose str() failed>"
    text = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= max_length else text[: max_length - 1] + "\u2026"


def checked_by(check: Callable[..., object], **options: Any) -> Callable[[Any, Any, Any], None]:
    """An attrs validator: `check(the attribute's name, value, **options)`, in the context
    that the instance's `validation_context` names, if it has one."""

    def validate(instance: Any, attribute: Any, value: Any) -> None:
        context = getattr(instance, "validation_context", "")
        check(attribute.name, value, context=context, **options)

    return validate


def check_optional_callable(kind: str, value: object, *, context: str = "") -> None:
    """A callable, or None."""
    if value is not None and not callable(value):
        where = f" ({context})" if context else ""
        raise ValidationError(
            f"{kind} must be a callable or None, got {type(value).__name__}{where}"
        )


def check_async_callable(kind: str, value: object, *, context: str) -> None:
    """An async function, or an object whose __call__ is one."""
    call = inspect.getattr_static(value, "__call__", None)
    if not (inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(call)):
        raise ValidationError(f"{kind} must be an async callable, got {value!r:.80} ({context})")
