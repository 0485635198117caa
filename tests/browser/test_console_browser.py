"""The web console in a real browser (headless Chromium): logging in, acting on the
troubleshooting queue and on batches, and the live pages that console.js reloads on the
server's events without the operator reloading them.

With TRIOBUS_SCREENSHOTS=1 the screenshot test writes docs/console-*.png.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import trio

from tests.browser.conftest import PASSWORD, USER, Browser
from triobus.actors import (
    AuditEventType,
    BatchCommand,
    BatchStatus,
    Command,
    CommandStatus,
    HandlerContext,
    PermanentCommandError,
    Runtime,
)

Eventually = Callable[[Callable[[], Awaitable[object]]], Awaitable[object]]

DOCS = Path(__file__).resolve().parents[2] / "docs"
SCREENSHOTS_ENV = "TRIOBUS_SCREENSHOTS"
FAST_STOP = 0.5  # seconds a worker's blocked handlers get when the test ends


def with_credentials(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{user}:{password}@{parts.netloc}").geturl()


async def status_of(runtime: Runtime, domain: str, command_id: uuid.UUID) -> CommandStatus | None:
    command = await runtime.bus.get_command(domain, command_id)
    return None if command is None else command.status


async def wait_status(
    runtime: Runtime,
    eventually: Eventually,
    domain: str,
    command_ids: list[uuid.UUID],
    status: CommandStatus,
) -> None:
    async def there() -> bool:
        return all([await status_of(runtime, domain, c) == status for c in command_ids])

    await eventually(there)


class Parking:
    """A domain whose worker (started by `park`) moves its commands to the TSQ with a
    PermanentCommandError, until `heal()`: then they complete."""

    def __init__(self, runtime: Runtime, eventually: Eventually, domain: str) -> None:
        self.runtime, self.eventually, self.domain = runtime, eventually, domain
        self.errors: dict[uuid.UUID, tuple[str, str]] = {}
        self.types: set[str] = set()
        self.healed = False
        self.runs = 0

    async def handler(self, command: Command, ctx: HandlerContext) -> dict[str, object]:
        self.runs += 1
        if not self.healed:
            code, message = self.errors[command.command_id]
            raise PermanentCommandError(code, message, {"attempt": ctx.attempt})
        return {"done": command.data}

    def heal(self) -> None:
        self.healed = True

    async def park(
        self,
        failures: list[tuple[str, str, str]],
        data: Callable[[int], dict[str, object]] = lambda n: {"n": n},
    ) -> list[uuid.UUID]:
        """Send one command per (type, error code, message); once all are in the TSQ,
        returns their ids, in the order sent."""
        if not self.types:
            await self.runtime.start_worker(self.domain, poll_interval=0.05)
        ids = []
        for n, (command_type, code, message) in enumerate(failures):
            if command_type not in self.types:
                self.runtime.registry.register(self.domain, command_type, self.handler)
                self.types.add(command_type)
            command_id = uuid.uuid4()
            self.errors[command_id] = (code, message)
            await self.runtime.bus.send(self.domain, command_type, command_id, data(n))
            ids.append(command_id)
        await wait_status(
            self.runtime, self.eventually, self.domain, ids, CommandStatus.IN_TROUBLESHOOTING_QUEUE
        )
        return ids


class Gates:
    """A handler that waits until the test lets its command through, one at a time."""

    def __init__(self) -> None:
        self._gates: dict[uuid.UUID, trio.Event] = {}
        self.started: set[uuid.UUID] = set()

    def gate(self, command_id: uuid.UUID) -> trio.Event:
        return self._gates.setdefault(command_id, trio.Event())

    async def handler(self, command: Command, ctx: HandlerContext) -> dict[str, object]:
        self.started.add(command.command_id)
        await self.gate(command.command_id).wait()
        return {"rendered": command.data}

    def release(self, command_id: uuid.UUID) -> None:
        self.gate(command_id).set()

    def release_all(self) -> None:
        for gate in self._gates.values():
            gate.set()


def progress_past(browser: Browser, before: int) -> Callable[[], int | None]:
    """What the batch page's progress bar shows, once it shows more than `before`."""

    def value() -> int | None:
        shown = browser.driver.execute_script("return document.getElementById('progress').value;")
        return int(shown) if shown > before else None

    return value


async def no_page_errors(browser: Browser) -> None:
    """No script error nor failed request, but the browser's own ask for a favicon (the
    console has none)."""
    errors = [e for e in await browser.console_errors() if "/favicon.ico " not in e]
    assert not errors, f"the page logged errors: {errors}"


async def test_logs_in_with_basic_auth_and_sees_the_overview(
    triobus_runtime: Runtime, console_url: str, browser: Browser
) -> None:
    for n in range(3):
        await triobus_runtime.bus.send("emails", "SendWelcome", uuid.uuid4(), {"n": n})

    # Without credentials the console shows nothing but its refusal.
    await browser.open(console_url)
    assert await browser.count("#live") == 0
    await browser.console_errors()  # the refused request's log line

    # Logging in: the browser answers the challenge with the URL's credentials, then
    # sends them with every request to the console, the page's own fetch and
    # EventSource included (`settled` waits for console.js to have swapped the live
    # part in with what it fetched).
    await browser.open(with_credentials(console_url, USER, PASSWORD) + "/")
    assert await browser.text("h1") == "Overview"
    assert await browser.text("header .who") == USER
    await browser.wait_text('tr[data-domain="emails"] td:nth-child(2)', "3")
    assert await browser.js("return document.querySelector('.stale').hidden;") is True

    # The links lead on, and the browser keeps the credentials: an address without
    # them needs no new login.
    await browser.click('header nav a[href$="/tsq"]')
    await browser.wait_text("h1", "Troubleshooting queue")
    await browser.settled()
    await browser.open(f"{console_url}/batches")
    assert await browser.text("h1") == "Batches"
    assert await browser.text("header .who") == USER

    # A request of the page that omits the credentials is refused.
    status = await browser.call(
        browser.driver.execute_async_script,
        "var done = arguments[arguments.length - 1];"
        " fetch('/', {credentials: 'omit'}).then(function (r) { done(r.status); });",
    )
    assert status == 401
    await browser.console_errors()
    # And a wrong password is no login.
    await browser.open(with_credentials(console_url, USER, "wrong") + "/commands")
    assert await browser.count("#live") == 0


async def test_retries_a_tsq_command_from_its_page_and_cancels_a_selected_one(
    triobus_runtime: Runtime, console_url: str, browser: Browser, eventually: Eventually
) -> None:
    runtime = triobus_runtime
    billing = Parking(runtime, eventually, "billing")
    broken, declined, kept = await billing.park(
        [
            ("ChargeCard", "GATEWAY_DOWN", "the payment gateway did not answer"),
            ("ChargeCard", "CARD_DECLINED", "the card was declined"),
            ("RefundPayment", "NOT_FOUND", "no such payment"),
        ],
    )
    await browser.authenticate(USER, PASSWORD)
    await browser.open(f"{console_url}/tsq?domain=billing")
    assert await browser.text(".meta .count") == "3"
    row = f'tr[data-command-id="{broken}"]'
    assert "GATEWAY_DOWN" in await browser.text(f"{row} td.error")

    # Its detail page, then Retry (the handler is healed: the retry completes).
    billing.heal()
    await browser.click(f"{row} a")
    await browser.wait_text("h1", str(broken))
    await browser.settled()
    assert await browser.text("dd .status") == "IN_TROUBLESHOOTING_QUEUE"
    assert "GATEWAY_DOWN" in await browser.text("p.error")
    await browser.click('form[action$="/retry"] button.retry')

    # Back on the TSQ page, which says what was done: the command is gone from it.
    await browser.wait_text("p.done", "Retried 1 command(s).")
    await browser.settled()
    assert urlsplit(await browser.url()).path == "/tsq"
    assert await browser.count(row) == 0
    assert await browser.text(".meta .count") == "2"
    await wait_status(runtime, eventually, "billing", [broken], CommandStatus.COMPLETED)
    command = await runtime.bus.get_command("billing", broken)
    assert command is not None and command.result == {"done": {"n": 0}}
    trail = await runtime.bus.get_audit_trail(broken, "billing")
    retried = [e for e in trail if e.event_type == AuditEventType.OPERATOR_RETRY]
    assert len(retried) == 1 and retried[0].details is not None
    # The data shown was not edited: it is retried as it is, with no new data recorded.
    assert retried[0].details == {"operator": USER}

    # Select one of the two left, cancel it with a reason, confirm.
    await browser.click(f'input[name="id"][value="{declined}"]')
    await browser.type('fieldset.bulk-actions input[name="reason"]', "customer paid by wire")
    await browser.click('button[name="action"][value="cancel"]')
    await browser.wait_text("h1", "Confirm")
    assert await browser.text(".confirm .count") == "1"
    await browser.click("button.confirm")
    await browser.wait_text("p.done", "Canceled 1 command(s).")
    await browser.settled()
    assert await browser.count(f'tr[data-command-id="{declined}"]') == 0
    assert await browser.count(f'tr[data-command-id="{kept}"]') == 1
    assert await status_of(runtime, "billing", declined) == CommandStatus.CANCELED
    assert await status_of(runtime, "billing", kept) == CommandStatus.IN_TROUBLESHOOTING_QUEUE
    assert billing.runs == 4  # three failed attempts, one retry
    await no_page_errors(browser)


async def test_the_batch_page_shows_progress_live_while_a_worker_runs(
    triobus_runtime: Runtime, console_url: str, browser: Browser, eventually: Eventually
) -> None:
    runtime = triobus_runtime
    gates = Gates()
    runtime.registry.register("reports", "Render", gates.handler)
    await runtime.start_worker("reports", poll_interval=0.05, grace_period=FAST_STOP)
    ids = [uuid.uuid4() for _ in range(5)]
    batch_id = await runtime.bus.create_batch(
        "reports",
        [BatchCommand("Render", c, {"page": n}) for n, c in enumerate(ids)],
        name="monthly-reports",
    )

    async def all_running() -> bool:
        return len(gates.started) == len(ids)

    await eventually(all_running)
    await browser.authenticate(USER, PASSWORD)
    await browser.open(f"{console_url}/batches/reports/{batch_id}")
    assert await browser.js("return document.getElementById('progress').max;") == len(ids)
    assert await browser.js("return document.getElementById('progress').value;") == 0
    # Anything the page is given now is lost if it is loaded again.
    await browser.js("window.notReloaded = true;")

    seen = [0]
    try:
        for command_id in ids:
            gates.release(command_id)
            before = seen[-1]

            seen.append(
                await browser.wait(progress_past(browser, before), f"the progress past {before}")
            )
    finally:
        gates.release_all()
    assert seen == sorted(set(seen)) and seen[-1] == len(ids), seen
    assert len(seen) >= 3  # at least two values shown after the page was loaded
    await browser.wait_text("#batch-status", BatchStatus.COMPLETED)
    assert await browser.text(".progress-text") == f"{len(ids)} of {len(ids)} finished"
    assert await browser.text("#completed") == str(len(ids))
    assert await browser.js("return window.notReloaded === true;") is True
    assert await browser.js("return document.querySelector('.stale').hidden;") is True
    await no_page_errors(browser)


async def test_cancels_a_batch_from_its_page(
    triobus_runtime: Runtime, console_url: str, browser: Browser
) -> None:
    runtime = triobus_runtime  # no worker: the members wait, PENDING
    batch_id = await runtime.bus.create_batch(
        "emails",
        [BatchCommand("SendNewsletter", uuid.uuid4(), {"to": f"user{n}"}) for n in range(4)],
        name="newsletter-june",
    )
    await browser.authenticate(USER, PASSWORD)
    await browser.open(f"{console_url}/batches/emails/{batch_id}")
    assert await browser.text(".progress-text") == "0 of 4 finished"
    await browser.type('form[action$="/cancel"] input[name="reason"]', "sent to the wrong list")
    await browser.click('form[action$="/cancel"] button.cancel')

    await browser.wait_text("p.done", "Canceled the batch: 4 member(s) canceled.")
    await browser.settled()
    assert urlsplit(await browser.url()).path == f"/batches/emails/{batch_id}"
    facts = await browser.text("dl.facts")
    assert f"by {USER}: sent to the wrong list" in facts
    assert await browser.text(".progress-text") == "4 of 4 finished"
    assert await browser.count('form[action$="/cancel"]') == 0  # nothing left to cancel
    batch = await runtime.bus.get_batch("emails", batch_id)
    assert batch is not None and batch.canceled_at is not None
    assert (batch.canceled_by, batch.cancel_reason) == (USER, "sent to the wrong list")
    assert batch.canceled_count == 4
    assert await browser.text("#batch-status") == batch.status
    await no_page_errors(browser)


async def test_screenshots_of_the_console(
    triobus_runtime: Runtime,
    console_url: str,
    browser: Browser,
    eventually: Eventually,
    tmp_path: Path,
) -> None:
    """Overview, TSQ and batch pages with data that looks like a real day's."""
    runtime = triobus_runtime
    folder = DOCS if os.environ.get(SCREENSHOTS_ENV) == "1" else tmp_path
    # billing: some completed, four parked in the TSQ.
    await Parking(runtime, eventually, "billing").park(
        [
            ("ChargeCard", "CARD_DECLINED", "the card was declined by the issuer"),
            ("ChargeCard", "GATEWAY_TIMEOUT", "the payment gateway did not answer in 30 s"),
            ("RefundPayment", "NOT_FOUND", "no payment 8841-2207 to refund"),
            ("ChargeCard", "CARD_EXPIRED", "the card expired in 04/2024"),
        ],
        data=lambda n: {"customer": 4100 + n, "amount_cents": 1999 + 500 * n},
    )

    async def invoice(command: Command, ctx: HandlerContext) -> dict[str, object]:
        return {"invoice": f"INV-{command.data['n']:05d}"}

    runtime.registry.register("billing", "SendInvoice", invoice)
    invoices = [
        (await runtime.bus.send("billing", "SendInvoice", uuid.uuid4(), {"n": n})).command_id
        for n in range(9)
    ]
    await wait_status(runtime, eventually, "billing", invoices, CommandStatus.COMPLETED)
    # emails: no worker running, commands wait.
    for n in range(7):
        await runtime.bus.send("emails", "SendWelcome", uuid.uuid4(), {"user": 900 + n})
    # reports: a batch half way, three members running.
    gates = Gates()
    runtime.registry.register("reports", "RenderReport", gates.handler)
    await runtime.start_worker("reports", concurrency=3, poll_interval=0.05, grace_period=FAST_STOP)
    members = [uuid.uuid4() for _ in range(12)]
    batch_id = await runtime.bus.create_batch(
        "reports",
        [
            BatchCommand("RenderReport", c, {"region": region, "month": "2024-05"})
            for c, region in zip(members, ["north", "south", "east", "west"] * 3, strict=True)
        ],
        name="monthly-reports-2024-05",
    )
    try:
        for command_id in members[:5]:
            gates.release(command_id)
            await wait_status(runtime, eventually, "reports", [command_id], CommandStatus.COMPLETED)

        async def three_running() -> bool:
            batch = await runtime.bus.get_batch("reports", batch_id)
            return len(gates.started) == 8 and batch is not None and batch.completed_count == 5

        await eventually(three_running)

        async with runtime.pool.connection() as conn:  # as autovacuum would have
            await conn.execute("ANALYZE triobus.command")  # for the overview's estimate
        await browser.authenticate(USER, PASSWORD)
        await browser.open(console_url + "/")
        assert "About 32 commands stored" in await browser.text(".meta")
        await browser.wait_text('tr[data-domain="billing"] td.tsq', "4")
        await browser.wait_text('tr[data-domain="emails"] td:nth-child(2)', "7")
        await browser.wait_text('tr[data-domain="reports"] td:nth-child(3)', "3")
        await browser.screenshot(folder / "console-overview.png")

        await browser.open(f"{console_url}/tsq?domain=billing")
        assert await browser.count("tr[data-command-id]") == 4
        await browser.screenshot(folder / "console-tsq.png")

        await browser.open(f"{console_url}/batches/reports/{batch_id}")
        assert await browser.text(".progress-text") == "5 of 12 finished"
        await browser.screenshot(folder / "console-batch.png")
        await no_page_errors(browser)
    finally:
        gates.release_all()
    for name in ("overview", "tsq", "batch"):
        png = (folder / f"console-{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000, name
