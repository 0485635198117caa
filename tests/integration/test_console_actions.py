"""The console's actions on the troubleshooting queue and on batches: each acts as the
logged-in operator, redirects to its outcome, and a refused one changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.console_support import USER, Parker, console_client
from triobus.actors import AuditEventType, BatchCommand, CommandStatus, Runtime


@pytest.fixture
async def parker(triobus_runtime: Runtime, eventually: Callable[..., Any]) -> Parker:
    parker = Parker(triobus_runtime, eventually)
    await parker.start()
    return parker


async def operator_events(runtime: Runtime, command_id: uuid.UUID) -> list[tuple[str, Any]]:
    trail = await runtime.bus.get_audit_trail(command_id, "d")
    return [
        (e.event_type, (e.details or {}).get("operator"))
        for e in trail
        if e.event_type.startswith("OPERATOR")
    ]


async def test_retry_with_edited_data_runs_it_again_as_the_operator(
    triobus_runtime: Runtime, parker: Parker
) -> None:
    parked = await parker.park()
    parker.healed = True
    async with console_client(triobus_runtime) as client:
        response = await client.post(f"/tsq/d/{parked}/retry", data={"data": '{"x": 2}'})
        assert response.status_code == 303
        assert response.headers["location"] == "/tsq?domain=d&done=retried&count=1"
        page = await client.get(response.headers["location"])
        assert "Retried 1 command(s)." in page.text
    await parker.wait_for(parked, CommandStatus.COMPLETED)
    command = await triobus_runtime.bus.get_command("d", parked)
    assert command is not None and command.data == {"x": 2}
    assert await operator_events(triobus_runtime, parked) == [(AuditEventType.OPERATOR_RETRY, USER)]


async def test_cancel_needs_a_reason_and_complete_takes_a_result(
    triobus_runtime: Runtime, parker: Parker
) -> None:
    first, second = await parker.park(), await parker.park()
    async with console_client(triobus_runtime) as client:
        refused = await client.post(f"/tsq/d/{first}/cancel", data={"reason": "  "})
        assert refused.status_code == 400 and "reason is required" in refused.text
        assert await parker.status(first) == CommandStatus.IN_TROUBLESHOOTING_QUEUE
        canceled = await client.post(f"/tsq/d/{first}/cancel", data={"reason": "duplicate"})
        assert canceled.status_code == 303
        bad_json = await client.post(f"/tsq/d/{second}/complete", data={"result": "{nope"})
        assert bad_json.status_code == 400 and "result is not JSON" in bad_json.text
        not_object = await client.post(f"/tsq/d/{second}/complete", data={"result": "[1]"})
        assert not_object.status_code == 400 and "JSON object" in not_object.text
        for hostile in ("[" * 100_000 + "]" * 100_000, '{"x": NaN}'):
            refused = await client.post(f"/tsq/d/{second}/complete", data={"result": hostile})
            assert refused.status_code == 400, refused.text
        assert await parker.status(second) == CommandStatus.IN_TROUBLESHOOTING_QUEUE
        completed = await client.post(f"/tsq/d/{second}/complete", data={"result": '{"ok": 1}'})
        assert completed.status_code == 303
        again = await client.post(f"/tsq/d/{second}/retry")
        assert again.status_code == 409 and "COMPLETED" in again.text
        unknown = await client.post(f"/tsq/d/{second}/explode")
        assert unknown.status_code == 404 and "no such page" in unknown.text
    assert await parker.status(first) == CommandStatus.CANCELED
    done = await triobus_runtime.bus.get_command("d", second)
    assert done is not None and done.status == CommandStatus.COMPLETED
    assert done.result == {"ok": 1}
    assert await operator_events(triobus_runtime, first) == [(AuditEventType.OPERATOR_CANCEL, USER)]


async def test_bulk_actions_ask_first_then_act_on_the_selection(
    triobus_runtime: Runtime, parker: Parker
) -> None:
    chosen = [await parker.park(), await parker.park()]
    left = await parker.park()
    form = {"domain": "d", "action": "cancel", "scope": "selected", "reason": "obsolete"}
    async with console_client(triobus_runtime) as client:
        question = await client.post("/tsq/bulk", data={**form, "id": [str(i) for i in chosen]})
        assert question.status_code == 200 and '<strong class="count">2</strong>' in question.text
        assert [await parker.status(i) for i in chosen] == [
            CommandStatus.IN_TROUBLESHOOTING_QUEUE
        ] * 2
        confirmed = {**form, "id": [str(i) for i in chosen], "confirmed": "yes"}
        done = await client.post("/tsq/bulk", data=confirmed)
        assert done.status_code == 303 and "done=canceled&count=2" in done.headers["location"]
        nothing = await client.post("/tsq/bulk", data={**form, "confirmed": "yes"})
        assert nothing.status_code == 400 and "select at least one" in nothing.text
    assert [await parker.status(i) for i in chosen] == [CommandStatus.CANCELED] * 2
    assert await parker.status(left) == CommandStatus.IN_TROUBLESHOOTING_QUEUE


async def test_a_bulk_action_on_a_selection_is_all_or_nothing(
    triobus_runtime: Runtime, parker: Parker
) -> None:
    parked = await parker.park()
    form = {
        "domain": "d",
        "action": "retry",
        "scope": "selected",
        "id": [str(parked), str(uuid.uuid4())],  # the second is no command of d
        "confirmed": "yes",
    }
    async with console_client(triobus_runtime) as client:
        refused = await client.post("/tsq/bulk", data=form)
    assert refused.status_code == 404
    assert await parker.status(parked) == CommandStatus.IN_TROUBLESHOOTING_QUEUE
    assert await operator_events(triobus_runtime, parked) == []


async def test_bulk_retry_of_everything_matching_a_type(
    triobus_runtime: Runtime, parker: Parker
) -> None:
    broken = [await parker.park("Broken"), await parker.park("Broken")]
    other = await parker.park("AlsoBroken")
    parker.healed = True
    form = {"domain": "d", "action": "retry", "scope": "matching", "type": "Broken"}
    async with console_client(triobus_runtime) as client:
        question = await client.post("/tsq/bulk", data=form)
        assert '<strong class="count">2</strong>' in question.text
        assert "of type Broken" in question.text and 'name="expected" value="2"' in question.text
        done = await client.post("/tsq/bulk", data={**form, "confirmed": "yes", "expected": "2"})
        assert "done=retried&count=2" in done.headers["location"]
    for command_id in broken:
        await parker.wait_for(command_id, CommandStatus.COMPLETED)
    assert await parker.status(other) == CommandStatus.IN_TROUBLESHOOTING_QUEUE


async def test_batch_actions_cancel_retry_and_close(
    triobus_runtime: Runtime, parker: Parker, eventually: Callable[..., Any]
) -> None:
    runtime = triobus_runtime
    failing = await runtime.bus.create_batch("d", [BatchCommand("Broken", uuid.uuid4(), {})])

    async def member_parked() -> bool:
        batch = await runtime.bus.get_batch("d", failing)
        return batch is not None and batch.in_troubleshooting_count == 1

    await eventually(member_parked)
    parker.healed = True
    open_batch = await runtime.bus.create_batch("d", [], open=True)
    doomed = await runtime.bus.create_batch("waiting", [BatchCommand("T", uuid.uuid4(), {})])
    async with console_client(runtime) as client:
        retried = await client.post(f"/batches/d/{failing}/retry")
        assert retried.status_code == 303
        assert retried.headers["location"] == f"/batches/d/{failing}?done=batch-retried&count=1"
        closed = await client.post(f"/batches/d/{open_batch}/close")
        assert closed.status_code == 303
        again = await client.post(f"/batches/d/{open_batch}/close")
        assert again.status_code == 409
        no_reason = await client.post(f"/batches/waiting/{doomed}/cancel")
        assert no_reason.status_code == 400
        canceled = await client.post(f"/batches/waiting/{doomed}/cancel", data={"reason": "late"})
        assert canceled.status_code == 303
        page = await client.get(canceled.headers["location"])
        assert "Canceled the batch: 1 member(s) canceled." in page.text
        assert f"by {USER}: late" in page.text

    async def completed(batch_id: uuid.UUID, domain: str = "d") -> bool:
        batch = await runtime.bus.get_batch(domain, batch_id)
        return batch is not None and batch.status == "COMPLETED"

    await eventually(lambda: completed(failing))
    assert await completed(open_batch)
    canceled_batch = await runtime.bus.get_batch("waiting", doomed)
    assert canceled_batch is not None and canceled_batch.canceled_by == USER


async def test_a_bulk_action_on_more_than_was_confirmed_is_undone_and_asked_again(
    triobus_runtime: Runtime, parker: Parker
) -> None:
    first = await parker.park()
    form = {"domain": "d", "action": "cancel", "scope": "matching", "reason": "flood"}
    async with console_client(triobus_runtime) as client:
        question = await client.post("/tsq/bulk", data=form)
        assert '<strong class="count">1</strong>' in question.text
        second = await parker.park()  # parked while the operator reads the question
        confirmed = {**form, "confirmed": "yes", "expected": "1"}
        again = await client.post("/tsq/bulk", data=confirmed)
        assert again.status_code == 409
        assert "2 match now, not the 1 you confirmed: nothing was done" in again.text
        assert 'name="expected" value="2"' in again.text
        statuses = [await parker.status(first), await parker.status(second)]
        assert statuses == [CommandStatus.IN_TROUBLESHOOTING_QUEUE] * 2
        done = await client.post("/tsq/bulk", data={**confirmed, "expected": "2"})
        assert "done=canceled&count=2" in done.headers["location"]
    assert [await parker.status(first), await parker.status(second)] == [CommandStatus.CANCELED] * 2
