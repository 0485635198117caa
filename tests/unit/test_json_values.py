"""The one encoding of everyday values in payloads (persistence/json_values.py)."""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import uuid

import pytest

from triobus.persistence.errors import ValidationError
from triobus.persistence.validation import encode_payload


class Colour(enum.Enum):
    RED = "red"
    NESTED = decimal.Decimal("1.5")


class Money:
    def __init__(self, cents: int) -> None:
        self.cents = cents


def encoded(data: dict[str, object], **options: object) -> object:
    return json.loads(encode_payload("data", data, max_bytes=10_000, **options))  # type: ignore[arg-type]


def test_each_everyday_type_is_stored_as_the_table_says() -> None:
    stamp = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
    assert encoded(
        {
            "amount": decimal.Decimal("12.50"),
            "id": uuid.UUID(int=1),
            "at": stamp,
            "naive": stamp.replace(tzinfo=None),
            "day": stamp.date(),
            "time": stamp.time(),
            "colour": Colour.RED,
            "nested": [Colour.NESTED, {"deeper": decimal.Decimal("-0.001")}],
        }
    ) == {
        "amount": "12.50",
        "id": "00000000-0000-0000-0000-000000000001",
        "at": "2026-12-01T12:00:00+00:00",
        "naive": "2026-12-01T12:00:00",
        "day": "2026-12-01",
        "time": "12:00:00",
        "colour": "red",
        "nested": ["1.5", {"deeper": "-0.001"}],
    }


@pytest.mark.parametrize(
    "value",
    [decimal.Decimal("NaN"), decimal.Decimal("Infinity"), float("nan"), float("-inf")],
    ids=str,
)
def test_nan_and_infinities_are_refused(value: object) -> None:
    with pytest.raises(ValidationError, match="data is not JSON-serialisable"):
        encoded({"x": value})


def test_a_hook_encodes_the_applications_own_types_and_only_those() -> None:
    asked: list[object] = []

    def hook(value: object) -> object:
        asked.append(value)
        if isinstance(value, Money):
            return {"cents": value.cents}
        raise TypeError(f"{type(value).__name__} is not known here")

    assert encoded({"price": Money(250), "tax": decimal.Decimal("0.2")}, json_default=hook) == {
        "price": {"cents": 250},
        "tax": "0.2",
    }
    assert [type(v) for v in asked] == [Money]  # the table's types never reach the hook
    with pytest.raises(ValidationError, match="object is not known here"):
        encoded({"x": object()}, json_default=hook)
    with pytest.raises(ValidationError, match="Money is not JSON serializable"):
        encoded({"price": Money(1)})  # without the hook


def test_a_failing_or_bad_hook_gets_a_validation_error() -> None:
    def broken(value: object) -> object:
        raise KeyError("rates")

    with pytest.raises(ValidationError, match="data is not JSON-serialisable: 'rates'"):
        encoded({"price": Money(1)}, json_default=broken)
    with pytest.raises(ValidationError, match="json_default must be a callable or None, got int"):
        encoded({"price": 1}, json_default=3)
