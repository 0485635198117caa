"""Decimal, UUID, dates and enums in command data and handler results, and an
application's own types through `json_default`, on the bus and the producer alike."""

from __future__ import annotations

import datetime
import decimal
import uuid

import psycopg
import pytest

from triobus.actors import (
    Command,
    CommandStatus,
    HandlerContext,
    HandlerRegistry,
    ValidationError,
    open_runtime,
)
from triobus.persistence import producer


class Money:
    def __init__(self, cents: int) -> None:
        self.cents = cents


def money(value: object) -> object:
    if isinstance(value, Money):
        return {"cents": value.cents}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


async def test_everyday_values_travel_as_the_readme_says_and_a_hook_encodes_the_rest(
    triobus_dsn: str,
) -> None:
    registry = HandlerRegistry()
    received: list[dict[str, object]] = []

    @registry.handler("billing", "Invoice")
    async def invoice(command: Command, ctx: HandlerContext) -> dict[str, object]:
        received.append(command.data)
        total = decimal.Decimal(str(command.data["amount"])) * 2
        return {"total": total, "due": datetime.date(2027, 1, 1), "fee": Money(30)}

    async with open_runtime(
        triobus_dsn, migrate=False, registry=registry, json_default=money
    ) as runtime:
        data = {
            "amount": decimal.Decimal("12.50"),
            "customer": uuid.UUID(int=7),
            "at": datetime.datetime(2026, 12, 1, 9, 30, tzinfo=datetime.UTC),
            "price": Money(1250),
        }
        sent = await runtime.bus.send("billing", "Invoice", uuid.uuid4(), data)
        await runtime.drain("billing")
        command = await runtime.bus.get_command("billing", sent.command_id)
    assert received == [
        {
            "amount": "12.50",
            "customer": "00000000-0000-0000-0000-000000000007",
            "at": "2026-12-01T09:30:00+00:00",
            "price": {"cents": 1250},
        }
    ]
    assert command is not None and command.status is CommandStatus.COMPLETED
    assert command.result == {"total": "25.00", "due": "2027-01-01", "fee": {"cents": 30}}


async def test_without_a_hook_an_unknown_type_is_refused_and_nothing_is_written(
    triobus_dsn: str,
) -> None:
    async with open_runtime(triobus_dsn, migrate=False) as runtime:
        with pytest.raises(ValidationError, match="Money is not JSON serializable"):
            await runtime.bus.send("billing", "Invoice", uuid.uuid4(), {"price": Money(1)})
        assert await runtime.bus.query_commands(domain="billing") == []


async def test_the_producer_takes_the_same_values_and_hook(triobus_dsn: str) -> None:
    command_id = uuid.uuid4()
    with psycopg.connect(triobus_dsn, autocommit=True) as conn:
        producer.send(
            conn,
            "billing",
            "Invoice",
            command_id,
            {"amount": decimal.Decimal("0.10"), "price": Money(10)},
            json_default=money,
        )
        row = conn.execute(
            "SELECT data FROM triobus.command WHERE command_id = %s", (command_id,)
        ).fetchone()
    assert row is not None and row[0] == {"amount": "0.10", "price": {"cents": 10}}
