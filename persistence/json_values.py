"""How values JSON has no type for are stored in command data and handler results.

One encoding, everywhere triobus writes a payload (send, batches, handler results, an
operator's data or result):

| value                | stored as, and what a handler gets back                       |
|----------------------|---------------------------------------------------------------|
| `decimal.Decimal`    | a string of its digits: `"12.50"`                             |
| `uuid.UUID`          | its string: `"6f1c0a52-8f5e-4d55-9f65-0d6f3c0b7a11"`          |
| `datetime.datetime`  | ISO 8601: `"2026-12-01T12:00:00+00:00"` (naive: no offset)     |
| `datetime.date`      | ISO 8601: `"2026-12-01"`                                      |
| `datetime.time`      | ISO 8601: `"12:00:00"`                                        |
| `enum.Enum`          | its value, encoded by these same rules (str and int enums are |
|                      | JSON strings and numbers already)                             |

JSON has no such types, so a handler receives the strings (and enum values) back:
`Decimal(command.data["amount"])` restores a Decimal exactly. NaN and infinities, float
or Decimal, are refused. An application hook (`json_default`) may encode further types;
it is asked only about values neither JSON nor this table covers.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import uuid
from collections.abc import Callable

# An application's encoder for its own types: returns a JSON-encodable stand-in, or
# raises TypeError for a value it does not know.
JsonDefault = Callable[[object], object]


def everyday(value: object) -> object:
    """The stand-in for a value of the module docstring's table; TypeError otherwise."""
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValueError(f"Decimal {value} is not a JSON number")
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime.date | datetime.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def encoder(hook: JsonDefault | None = None) -> json.JSONEncoder:
    """The encoder of payloads: compact, UTF-8, no NaN, the table, then `hook`."""
    if hook is None:
        return _ENCODER

    def default(value: object) -> object:
        try:
            return everyday(value)
        except TypeError:
            if hook is None:
                raise
            return hook(value)

    return _encoder_with(default)


def _encoder_with(default: JsonDefault) -> json.JSONEncoder:
    return json.JSONEncoder(
        allow_nan=False, ensure_ascii=False, separators=(",", ":"), default=default
    )


_ENCODER = _encoder_with(everyday)
