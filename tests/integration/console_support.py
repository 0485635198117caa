"""What the console's tests share: a client on the console's ASGI app, and commands
parked in the troubleshooting queue by a real worker."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from triobus.actors import (
    Command,
    CommandStatus,
    HandlerContext,
    PermanentCommandError,
    Runtime,
)
from triobus.actors.console import ConsoleSettings, console_app

ORIGIN = "http://console.test"
USER, PASSWORD = "ann", "ann's password: 🔑"
HOSTILE = "<script>alert('x')</script> \"quoted\" 'single' & żółw 🐢"


def basic(user: str = USER, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@asynccontextmanager
async def console_client(
    runtime: Runtime,
    settings: ConsoleSettings | None = None,
    *,
    auth: str | None = None,
    origin: str = ORIGIN,
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the console's app at `origin`, logged in as USER unless `auth` says
    otherwise (""), sending that Origin with each request, as the console's pages do."""
    app = console_app(runtime, settings or ConsoleSettings(users={USER: PASSWORD}))
    headers = {"Origin": origin}
    if auth != "":
        headers["Authorization"] = auth or basic()
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url=origin, headers=headers
        ) as client:
            yield client
    finally:
        app.state.console.close()


class Parker:
    """Sends commands of domain "d" that a worker moves to the TSQ (a permanent error
    whose message and details are hostile to HTML), and waits until they are there."""

    def __init__(self, runtime: Runtime, eventually: Callable[..., Any]) -> None:
        self.runtime = runtime
        self.eventually = eventually
        self.healed = False

    async def start(self) -> None:
        for command_type in ("Broken", "AlsoBroken"):
            self.runtime.registry.register("d", command_type, self._handle)
        await self.runtime.start_worker("d", poll_interval=0.05)

    async def _handle(self, command: Command, ctx: HandlerContext) -> dict[str, object]:
        if not self.healed:
            raise PermanentCommandError("BROKEN", HOSTILE, {"hint": HOSTILE})
        return {"done": True}

    async def park(
        self, command_type: str = "Broken", data: dict[str, object] | None = None
    ) -> uuid.UUID:
        sent = await self.runtime.bus.send(
            "d", command_type, uuid.uuid4(), {"x": 1} if data is None else data, reply_to="q"
        )
        await self.wait_for(sent.command_id, CommandStatus.IN_TROUBLESHOOTING_QUEUE)
        return sent.command_id

    async def wait_for(self, command_id: uuid.UUID, status: CommandStatus) -> None:
        async def reached() -> bool:
            command = await self.runtime.bus.get_command("d", command_id)
            return command is not None and command.status == status

        await self.eventually(reached)

    async def status(self, command_id: uuid.UUID) -> CommandStatus:
        command = await self.runtime.bus.get_command("d", command_id)
        assert command is not None
        return command.status
