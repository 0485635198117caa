"""Every page of the web console, through its ASGI app, against a real database."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import markupsafe
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from tests.integration.console_support import (
    HOSTILE,
    ORIGIN,
    PASSWORD,
    USER,
    Parker,
    basic,
    console_client,
)
from triobus.actors import (
    BatchCommand,
    Command,
    HandlerContext,
    PermanentCommandError,
    Runtime,
)
from triobus.actors.console import ConsoleSettings, console_app
from triobus.persistence.gauges import GAUGES_LOCK_KEY


@pytest.fixture
async def parker(triobus_runtime: Runtime, eventually: Callable[..., Any]) -> Parker:
    parker = Parker(triobus_runtime, eventually)
    await parker.start()
    return parker


def assert_escaped(page: str) -> None:
    """The hostile text shows as text: escaped, never as markup."""
    assert "<script>" not in page
    assert str(markupsafe.escape(HOSTILE)) in page


async def test_every_page_renders_and_escapes_the_databases_values(
    triobus_runtime: Runtime, parker: Parker
) -> None:
    runtime = triobus_runtime
    parked = await parker.park(data={"note": HOSTILE})
    batch_id = await runtime.bus.create_batch(
        "d", [BatchCommand("Later", uuid.uuid4(), {"note": HOSTILE})], name="nightly", open=True
    )
    async with console_client(runtime) as client:
        overview = await client.get("/")
        assert overview.status_code == 200 and ">d</a>" in overview.text
        listing = await client.get("/commands", params={"domain": "d"})
        assert listing.status_code == 200 and str(parked) in listing.text
        detail = await client.get(f"/commands/d/{parked}")
        assert detail.status_code == 200
        assert_escaped(detail.text)  # the data and the last error
        assert "MOVED_TO_TSQ" in detail.text and "OPERATOR" not in detail.text  # its trail
        tsq = await client.get("/tsq", params={"domain": "d"})
        assert tsq.status_code == 200 and f'data-command-id="{parked}"' in tsq.text
        assert_escaped(tsq.text)  # the error message
        batches = await client.get("/batches", params={"domain": "d"})
        assert batches.status_code == 200 and str(batch_id) in batches.text
        batch = await client.get(f"/batches/d/{batch_id}")
        assert batch.status_code == 200 and "nightly" in batch.text and "Close batch" in batch.text
        replies = await client.get("/replies")
        assert replies.status_code == 200 and "No unacknowledged replies" in replies.text
        for page in (overview, listing, detail, tsq, batches, batch, replies):
            assert page.headers["content-type"].startswith("text/html")
            assert "<script>alert" not in page.text


async def test_the_overview_counts_by_status_and_the_last_minutes_throughput(
    triobus_runtime: Runtime, parker: Parker, eventually: Callable[..., Any]
) -> None:
    runtime = triobus_runtime
    for _ in range(2):
        await parker.park()
    runtime.registry.register("fine", "T", fine)
    await runtime.start_worker("fine", poll_interval=0.05)
    sent = [(await runtime.bus.send("fine", "T", uuid.uuid4(), {})).command_id for _ in range(3)]

    async def all_done() -> bool:
        found = [await runtime.bus.get_command("fine", i) for i in sent]
        return all(c is not None and c.status == "COMPLETED" for c in found)

    await eventually(all_done)
    await runtime.bus.send("waiting", "T", uuid.uuid4(), {})  # no worker for this domain
    async with runtime.pool.connection() as conn:
        await conn.execute("ANALYZE triobus.command")  # what autovacuum does, in time
    async with console_client(runtime) as client:
        page = (await client.get("/")).text

    def cells(domain: str) -> list[str]:
        """pending, in progress, TSQ, oldest pending, finished last minute, then the
        estimates of completed, failed and canceled."""
        row = page[page.index(f'<tr data-domain="{domain}">') :].split("</tr>")[0]
        return [
            markupsafe.Markup(c.split(">", 1)[1].split("</td>")[0]).striptags()
            for c in row.split('<td class="n')[1:]
        ]

    assert cells("d") == ["0", "0", "2", "-", "0", "-", "-", "-"]
    assert cells("fine") == ["0", "0", "0", "-", "3", "3", "-", "-"]
    assert cells("waiting")[:2] == ["1", "0"] and cells("waiting")[3].endswith(" s")


async def fine(command: Command, ctx: HandlerContext) -> None:
    return None


async def test_commands_are_filtered_and_paged(triobus_runtime: Runtime) -> None:
    runtime = triobus_runtime
    correlation = uuid.uuid4()
    ids = [
        (await runtime.bus.send("d", "A", uuid.uuid4(), {}, correlation_id=correlation)).command_id
        for _ in range(3)
    ]
    other = (await runtime.bus.send("d", "B", uuid.uuid4(), {})).command_id
    settings = ConsoleSettings(users={USER: PASSWORD}, page_size=2)
    async with console_client(runtime, settings) as client:
        first = (await client.get("/commands", params={"domain": "d", "type": "A"})).text
        assert sum(str(i) in first for i in ids) == 2 and str(other) not in first
        assert "offset=2" in first and "older" in first
        second = await client.get("/commands", params={"domain": "d", "type": "A", "offset": 2})
        assert sum(str(i) in second.text for i in ids) == 1 and "newer" in second.text
        by_correlation = await client.get(
            "/commands", params={"domain": "d", "correlation_id": str(correlation)}
        )
        assert str(other) not in by_correlation.text
        pending = await client.get("/commands", params={"domain": "d", "status": "COMPLETED"})
        assert "No commands match." in pending.text
        bad = await client.get("/commands", params={"domain": "d", "status": "LOST"})
        assert bad.status_code == 400 and "status" in bad.text
        for offset in ("-1", "²", "1e3"):
            bad = await client.get("/commands", params={"domain": "d", "offset": offset})
            assert bad.status_code == 400 and "offset must be a whole number" in bad.text
        chosen = await client.get("/commands", params={"type": "A"})  # no domain: the first
        assert chosen.status_code == 303
        assert chosen.headers["location"] == "/commands?domain=d&type=A"
        odd = await client.get("/commands", params={"path": "x", "request": "y"})
        assert odd.headers["location"] == "/commands?domain=d&path=x&request=y"


async def test_unknown_commands_batches_and_pages_are_404s(triobus_runtime: Runtime) -> None:
    async with console_client(triobus_runtime) as client:
        missing = uuid.uuid4()
        command = await client.get(f"/commands/d/{missing}")
        assert command.status_code == 404 and str(missing) in command.text
        assert (await client.get(f"/batches/d/{missing}")).status_code == 404
        assert (await client.get("/nowhere")).status_code == 404
        not_an_id = await client.get("/commands/d/not-a-uuid")
        assert not_an_id.status_code == 400 and "command_id" in not_an_id.text


async def test_payloads_of_a_hidden_domain_are_never_shown(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    runtime = triobus_runtime
    secret = "4111-1111-1111-1111"

    async def declined(command: Command, ctx: HandlerContext) -> None:
        card = command.data["card"]
        raise PermanentCommandError("DECLINED", f"card {card} declined", {"card": card})

    runtime.registry.register("pay", "Charge", declined)
    await runtime.start_worker("pay", poll_interval=0.05)
    sent = await runtime.bus.send("pay", "Charge", uuid.uuid4(), {"card": secret}, reply_to="q")
    command_id = sent.command_id

    async def parked() -> bool:
        return await runtime.tsq.count_troubleshooting("pay") == 1

    await eventually(parked)
    # retried with other data: the audit trail keeps the secret as the previous data
    await runtime.tsq.operator_retry("pay", command_id, data={"card": "5500-0000"})
    await eventually(lambda: trail_has(runtime, command_id, "MOVED_TO_TSQ", 2))
    await runtime.tsq.operator_cancel("pay", command_id, "fraud")  # a reply with data
    settings = ConsoleSettings(users={USER: PASSWORD}, hidden_payload_domains={"pay"})
    async with console_client(runtime, settings) as client:
        pages = [
            (await client.get(path)).text
            for path in (f"/commands/pay/{command_id}", "/tsq?domain=pay", "/replies?queue=q")
        ]
        detail = pages[0]
        assert "payloads are not shown" in detail and "(message hidden)" in detail
        assert '"operator"' in detail and "OPERATOR_RETRY" in detail  # who acted is shown
        edited = await client.post(f"/tsq/pay/{command_id}/retry", data={"data": "{}"})
        assert edited.status_code == 400 and "payloads of this domain are hidden" in edited.text
    for page in pages:
        assert secret not in page and "4111" not in page and "5500" not in page
    async with console_client(runtime) as client:  # not hidden: all of it is shown
        assert "4111" in (await client.get(f"/commands/pay/{command_id}")).text


async def trail_has(runtime: Runtime, command_id: uuid.UUID, event: str, times: int) -> bool:
    trail = await runtime.bus.get_audit_trail(command_id, "pay")
    return sum(e.event_type == event for e in trail) == times


async def test_replies_per_queue(triobus_runtime: Runtime, parker: Parker) -> None:
    parked = await parker.park()
    await triobus_runtime.tsq.operator_cancel("d", parked, "no longer needed")
    async with console_client(triobus_runtime) as client:
        page = (await client.get("/replies", params={"queue": "q"})).text
    assert str(parked) in page and "CANCELED" in page and "no longer needed" in page


async def test_healthz_is_open_and_metrics_are_served(triobus_runtime: Runtime) -> None:
    async with console_client(triobus_runtime, auth="") as anonymous:
        health = await anonymous.get("/healthz")
        assert health.status_code == 200 and health.text == "ok\n"
        assert (await anonymous.get("/metrics")).status_code == 401
    await triobus_runtime.bus.send("d", "T", uuid.uuid4(), {})
    async with console_client(triobus_runtime) as client:
        metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert 'triobus_commands{domain="d",status="PENDING"} 1.0' in metrics.text


async def test_the_overview_renders_while_another_process_refreshes_the_gauges(
    triobus_runtime: Runtime,
) -> None:
    """The console only tries the gauges' refresh lock: while another process holds it,
    the page renders at once with the snapshot there is (none yet here)."""
    async with triobus_runtime.pool.connection() as holder, holder.transaction():
        await holder.execute("SELECT pg_advisory_xact_lock(%(k)s)", {"k": GAUGES_LOCK_KEY})
        async with console_client(triobus_runtime) as client:
            page = await client.get("/")
    assert page.status_code == 200 and "No counts yet" in page.text


async def test_mounted_under_a_prefix_its_links_and_redirects_carry_it(
    triobus_runtime: Runtime, parker: Parker
) -> None:
    parked = await parker.park()
    console = console_app(triobus_runtime, ConsoleSettings(users={USER: PASSWORD}))
    parent = Starlette(routes=[Mount("/ops/triobus", console)])
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=parent),
        base_url=ORIGIN,
        headers={"Authorization": basic(), "Origin": ORIGIN},
    )
    try:
        async with client:
            chosen = await client.get("/ops/triobus/tsq")
            assert chosen.headers["location"] == "/ops/triobus/tsq?domain=d"
            page = (await client.get(chosen.headers["location"])).text
            assert f'href="/ops/triobus/commands/d/{parked}"' in page
            assert 'href="/ops/triobus/static/console.css"' in page
            assert 'action="/ops/triobus/tsq/bulk"' in page
            assert (await client.get("/ops/triobus/healthz")).status_code == 200
            assert (await client.get("/ops/triobus/static/console.js")).status_code == 200
            done = await client.post(f"/ops/triobus/tsq/d/{parked}/cancel", data={"reason": "x"})
            assert done.headers["location"].startswith("/ops/triobus/tsq?domain=d")
            anonymous = await client.get("/ops/triobus/", headers={"Authorization": ""})
            assert anonymous.status_code == 401
    finally:
        console.state.console.close()
