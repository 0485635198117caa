"""Live pages: `/live?topic=...` is a stream of server-sent events, one `changed` event
when the stream opens and one each time what the topic shows has changed; the page then
reloads its live part. Topics: `overview`, `tsq:DOMAIN`, `batch:DOMAIN:BATCH_ID`.

A change is seen by reading a small version of the topic every `live_interval` seconds
(the gauges' snapshot time; the TSQ's count and first page; the batch's counts), and at
once when the runtime's LISTEN connection hears that the batch completed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from triobus.actors.console.views import Console
from triobus.persistence.errors import DatabaseError, ValidationError
from triobus.persistence.notifications import Channel, batch_payload
from triobus.persistence.validation import check_name, check_uuid

HEARTBEAT = 15.0  # seconds: a comment line keeps proxies from closing a quiet stream

Version = Callable[[], Awaitable[object]]


def _topic(console: Console, topic: str) -> tuple[Version, AbstractContextManager[Any]]:
    """How to read the topic's version, and what wakes the reader early."""
    kind, _, rest = topic.partition(":")
    bus, tsq = console.runtime.bus, console.runtime.tsq
    if kind == "overview" and not rest:

        async def overview() -> object:
            snapshot = await console.gauges()
            return None if snapshot is None else snapshot.computed_at.isoformat()

        return overview, nullcontext(None)
    if kind == "tsq":
        domain = check_name("domain", rest)

        async def queue() -> object:
            items = await tsq.list_troubleshooting(domain, limit=console.settings.page_size)
            count = await tsq.count_troubleshooting(domain)
            return [count, [str(i.command_id) for i in items]]

        return queue, nullcontext(None)
    if kind == "batch":
        domain_text, _, batch_text = rest.rpartition(":")
        domain = check_name("domain", domain_text)
        batch_id = check_uuid("batch_id", batch_text, context=f"domain {domain!r}")

        async def batch() -> object:
            found = await bus.get_batch(domain, batch_id)
            if found is None:
                return None
            return [
                found.status,
                found.is_open,
                found.completed_count,
                found.failed_count,
                found.canceled_count,
                found.in_troubleshooting_count,
                found.total_count,
                [f.sent for f in found.follow_ups],
            ]

        hints = console.runtime.notifier.subscribe(Channel.BATCH, batch_payload(domain, batch_id))
        return batch, hints
    raise ValidationError(f"unknown live topic {topic!r}: overview, tsq:DOMAIN or batch:DOMAIN:ID")


async def changes(console: Console, request: Request) -> Response:
    read_version, wakeups = _topic(console, request.query_params.get("topic", ""))
    interval = console.settings.live_interval

    async def stream() -> AsyncIterator[str]:
        last: object = ...
        quiet = 0.0
        with wakeups as hints:
            while True:
                try:
                    version = await read_version()
                except DatabaseError:
                    version = last  # an outage: say nothing until it reads again
                if version != last:
                    last, quiet = version, 0.0
                    yield f"event: changed\ndata: {json.dumps(version, default=str)}\n\n"
                elif quiet >= HEARTBEAT:
                    quiet = 0.0
                    yield ": still here\n\n"
                with trio.move_on_after(interval):
                    if hints is None:
                        await trio.sleep_forever()
                    await hints.receive()
                quiet += interval

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
