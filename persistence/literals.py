"""SQL literals for the store's enum values: constants rendered into statements.

Only enum members go through here, never input (invariant 4: no SQL is built from input);
the values are plain upper-case words, so quoting them needs no escaping.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

_PLAIN = re.compile(r"[A-Z_]+")


def literal(value: enum.StrEnum) -> str:
    """`'VALUE'`: one enum member as an SQL string literal."""
    if not isinstance(value, enum.StrEnum) or not _PLAIN.fullmatch(value):
        raise TypeError(f"only plain StrEnum members become SQL literals, got {value!r}")
    return f"'{value}'"


def literal_list(values: Iterable[enum.StrEnum]) -> str:
    """`('A', 'B')`: enum members as a parenthesised list, for `IN`."""
    return "(" + ", ".join(literal(value) for value in values) + ")"
