"""The console served by Hypercorn's Trio server: in a runtime (`serve_console`, with
its live event streams) and as `triobus web`, a real subprocess."""

from __future__ import annotations

import html
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trio

from tests.integration.console_support import PASSWORD, USER, basic
from triobus.actors import BatchCommand, Command, HandlerContext, Runtime
from triobus.actors.console import ConsoleSettings, serve_console

TRIOBUS = shutil.which("triobus", path=os.path.dirname(sys.executable)) or "triobus"


@pytest.fixture
async def served(triobus_runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the console served on a free loopback port, logged in."""
    settings = ConsoleSettings(users={USER: PASSWORD}, live_interval=0.05)
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(
            lambda task_status: serve_console(
                triobus_runtime, settings, bind="127.0.0.1:0", task_status=task_status
            )
        )
        async with httpx.AsyncClient(
            base_url=addresses[0], headers={"Authorization": basic()}, timeout=10
        ) as client:
            yield client
        nursery.cancel_scope.cancel()


async def events(response: httpx.Response) -> AsyncIterator[Any]:
    """The data of each `changed` event of a live stream."""
    name = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: ") and name == "changed":
            yield json.loads(line.removeprefix("data: "))


async def test_a_batch_page_streams_each_change_of_its_counts(
    triobus_runtime: Runtime, served: httpx.AsyncClient
) -> None:
    runtime = triobus_runtime
    gate = trio.Semaphore(0)

    async def gated(command: Command, ctx: HandlerContext) -> None:
        await gate.acquire()

    runtime.registry.register("d", "Gated", gated)
    batch_id = await runtime.bus.create_batch(
        "d", [BatchCommand("Gated", uuid.uuid4(), {}) for _ in range(3)]
    )
    await runtime.start_worker("d", poll_interval=0.05)
    page = await served.get(f"/batches/d/{batch_id}")
    assert page.status_code == 200 and f'data-live="batch:d:{batch_id}"' in page.text
    completed = []
    with trio.fail_after(20):
        async with served.stream("GET", "/live", params={"topic": f"batch:d:{batch_id}"}) as live:
            assert live.headers["content-type"].startswith("text/event-stream")
            async for version in events(live):
                completed.append(version[2])  # the completed count
                if version[0] == "COMPLETED":
                    break
                if completed[-1] == len(completed) - 1:  # seen as it is: let one more finish
                    gate.release()
    assert completed[0] == 0 and completed[-1] == 3
    assert completed == sorted(completed) and len(set(completed)) == 4


async def test_the_tsq_and_overview_streams_open_with_their_state(
    triobus_runtime: Runtime, served: httpx.AsyncClient
) -> None:
    """Without `since`, a stream opens with its topic's version: the overview's open
    commands and last-minute throughput; the TSQ's size and first page."""
    await triobus_runtime.bus.send("d", "T", uuid.uuid4(), {})  # no worker: it waits
    opened = {}
    for topic in ("tsq:d", "overview"):
        with trio.fail_after(10):
            async with served.stream("GET", "/live", params={"topic": topic}) as live:
                opened[topic] = await anext(aiter(events(live)))
    assert opened == {"tsq:d": [None, []], "overview": [[["d", "PENDING", 1]], {}]}
    refused = await served.get("/live", params={"topic": "everything"})
    assert refused.status_code == 400 and "unknown live topic" in refused.text
    assert (await served.get("/live", params={"topic": "batch:d:nope"})).status_code == 400


async def test_triobus_web_serves_until_sigterm_and_never_logs_a_secret(
    triobus_dsn: str, tmp_path: Path
) -> None:
    users = tmp_path / "users"
    users.write_text(f"{USER}:{PASSWORD}\n", encoding="utf-8")
    users.chmod(0o600)
    process = await trio.lowlevel.open_process(
        [TRIOBUS, "web", "--bind", "127.0.0.1:0", "--users-file", str(users), "--read-only"],
        env={**os.environ, "TRIOBUS_DSN": triobus_dsn, "TRIOBUS_WEB_TOKEN": "s3cret-" * 4},
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    output = b""
    try:
        with trio.fail_after(30):
            while b"console at " not in output:
                chunk = await process.stderr.receive_some()
                assert chunk, output
                output += chunk
        line = next(x for x in output.decode().splitlines() if "console at " in x)
        url = line.split("console at ")[1].split()[0]
        assert "1 user(s), 1 token(s), read-only" in line
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            assert (await client.get("/healthz")).text == "ok\n"
            assert (await client.get("/")).status_code == 401
            page = await client.get("/", headers={"Authorization": basic()})
            assert page.status_code == 200 and "read-only" in page.text
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await process.wait() == 0
        output += await process.stderr.receive_some() or b""
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode()
    assert "stopping the console" in text
    assert PASSWORD not in text and "s3cret" not in text


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "the console needs credentials"),
        (["--no-auth", "--bind", "0.0.0.0:8080"], "--no-auth serves only a loopback address"),
        (["--no-auth", "--bind", "8080"], "bind must be HOST:PORT"),
        (["--no-auth", "--bind", "127.0.0.1:²"], "bind must be HOST:PORT"),
        (["--no-auth", "--origin", "ops.example.com"], "an origin is scheme://host"),
        (["--no-auth", "TRIOBUS_WEB_TOKEN=" + "t" * 20], "--no-auth) contradicts"),
    ],
)
async def test_triobus_web_refuses_to_start_open_or_misconfigured(
    triobus_dsn: str, arguments: list[str], message: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOBUS_WEB_")}
    env.update(a.partition("=")[::2] for a in arguments if a.startswith("TRIOBUS_"))
    result = await trio.run_process(
        [TRIOBUS, "web", *(a for a in arguments if not a.startswith("TRIOBUS_"))],
        env={**env, "TRIOBUS_DSN": triobus_dsn},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 2 and message in stderr and "Traceback" not in stderr


async def test_a_live_stream_from_its_pages_version_says_only_what_changed_since(
    triobus_runtime: Runtime, served: httpx.AsyncClient
) -> None:
    runtime = triobus_runtime
    gate = trio.Event()

    async def gated(command: Command, ctx: HandlerContext) -> None:
        await gate.wait()

    runtime.registry.register("d", "Gated", gated)
    batch_id = await runtime.bus.create_batch("d", [BatchCommand("Gated", uuid.uuid4(), {})])
    page = (await served.get(f"/batches/d/{batch_id}")).text
    source = html.unescape(page.split('data-source="')[1].split('"')[0])
    assert source.startswith("/live?topic=batch") and "since=" in source
    assert (await served.head(source)).status_code == 200  # answered, not streamed
    await runtime.start_worker("d", poll_interval=0.05)
    rendered = json.loads(parse_qs(urlsplit(source).query)["since"][0])
    assert rendered[0] == "PENDING"
    seen = []
    with trio.fail_after(20):
        async with served.stream("GET", source) as live:
            gate.set()
            async for version in events(live):
                seen.append(version)
                if version[0] == "COMPLETED":
                    break
    assert rendered not in seen  # the page had that: only the changes since came
    assert seen[-1][2] == 1
