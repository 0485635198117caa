"""Argument checks: pure functions, no database."""

from __future__ import annotations

import pytest

from triobus.persistence.errors import ValidationError
from triobus.persistence.validation import (
    MAX_SECONDS,
    check_max_payload_bytes,
    check_name,
    check_seconds,
    encode_payload,
    storable_text,
)


@pytest.mark.parametrize("value", ["", "   ", "a b", "-lead", "x" * 101, "nul\x00", "é", 7, None])
def test_bad_names_are_rejected(value: object) -> None:
    with pytest.raises(ValidationError):
        check_name("domain", value)


@pytest.mark.parametrize("value", ["payments", "billing.v2", "a:b-c_d", "X" * 100])
def test_good_names_pass(value: str) -> None:
    assert check_name("domain", value) == value


def test_payload_rejects_nul_and_deep_nesting_and_accepts_unicode() -> None:
    with pytest.raises(ValidationError, match="NUL"):
        encode_payload("data", {"s": "a\x00b"}, max_bytes=1000, context="c")
    deep: dict[str, object] = {}
    node = deep
    for _ in range(100_000):
        node["n"] = {}
        node = node["n"]  # type: ignore[assignment]
    with pytest.raises(ValidationError, match="not JSON-serialisable"):
        encode_payload("data", deep, max_bytes=10**9, context="c")
    assert encode_payload("data", {"name": "Zoë ☃"}, max_bytes=100, context="c")


def test_payload_limit_counts_utf8_bytes() -> None:
    encode_payload("data", {"s": "é" * 10}, max_bytes=30, context="c")  # 28 bytes as JSON
    with pytest.raises(ValidationError, match="limit is 20"):
        encode_payload("data", {"s": "é" * 10}, max_bytes=20, context="c")


def test_payload_nul_check_is_not_fooled_by_an_escaped_backslash() -> None:
    text = encode_payload("data", {"s": "\\u0000"}, max_bytes=100, context="c")
    assert text == '{"s":"\\\\u0000"}'
    with pytest.raises(ValidationError, match="NUL"):
        encode_payload("data", {"s": "\\\x00"}, max_bytes=100, context="c")


def test_payload_rejects_lone_surrogates() -> None:
    with pytest.raises(ValidationError, match="not JSON-serialisable"):
        encode_payload("data", {"s": "\ud800"}, max_bytes=100, context="c")


def test_storable_text_escapes_nul_and_lone_surrogates_and_truncates() -> None:
    assert storable_text("a\x00b\ud800c", max_length=100) == "a\\x00b\\ud800c"
    assert storable_text("é✓", max_length=100) == "é✓"
    assert storable_text("x" * 50, max_length=10) == "x" * 9 + "\u2026"

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert storable_text(Unprintable(), max_length=100) == "<Unprintable whose str() failed>"


@pytest.mark.parametrize(
    "value", [-1, 0, float("inf"), float("nan"), 1e12, 10**400, -(10**400), True, "5", None]
)
def test_seconds_must_be_positive_finite_and_at_most_ten_years(value: object) -> None:
    with pytest.raises(ValidationError, match="visibility_timeout must be a number of seconds"):
        check_seconds("visibility_timeout", value)


def test_seconds_allow_zero_when_asked_and_the_ten_year_bound() -> None:
    assert check_seconds("delay", 0, allow_zero=True) == 0.0
    assert check_seconds("delay", MAX_SECONDS) == MAX_SECONDS


@pytest.mark.parametrize("value", [0, -5, 2**40, 1.5, None])
def test_max_payload_bytes_is_checked(value: object) -> None:
    with pytest.raises(ValidationError, match="max_payload_bytes"):
        check_max_payload_bytes("max_payload_bytes", value)
