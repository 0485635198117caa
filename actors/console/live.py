"""Live pages: `/live?topic=...&since=VERSION` is a stream of server-sent events, one
`changed` event each time what the topic shows differs from the version last sent (at
first, the `since` the page was rendered with); the page then reloads its live part.
Topics: `overview`, `tsq:DOMAIN`, `batch:DOMAIN:BATCH_ID`.

The versions are small: the gauges' snapshot (overview); the domain's TSQ size in that
snapshot and the ids of the first page (TSQ); the batch's status and counts (batch). The
stream reads its topic's version every `live_interval` seconds, and a batch's at once when
the runtime's LISTEN connection hears that it completed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from triobus.actors.console.views import Console
from triobus.persistence.errors import DatabaseError, ValidationError
from triobus.persistence.gauges import GaugeSnapshot
from triobus.persistence.notifications import Channel, batch_payload
from triobus.persistence.records import BatchMetadata, CommandStatus, TroubleshootingItem
from triobus.persistence.validation import check_name, check_uuid

HEARTBEAT = 15.0  # seconds: a comment line keeps proxies from closing a quiet stream

ReadVersion = Callable[[], Awaitable[str]]


def version(value: object) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def overview_version(snapshot: GaugeSnapshot | None) -> str:
    if snapshot is None:
        return version(None)
    gauges = [[g.domain, g.status, g.commands] for g in snapshot.gauges]
    return version([gauges, snapshot.finished_last_minute])


def tsq_version(
    snapshot: GaugeSnapshot | None, domain: str, first_page: Sequence[TroubleshootingItem]
) -> str:
    waiting = (
        None
        if snapshot is None
        else snapshot.of(domain).get(CommandStatus.IN_TROUBLESHOOTING_QUEUE)
    )
    return version([waiting and waiting.commands, [str(i.command_id) for i in first_page]])


def batch_version(batch: BatchMetadata | None) -> str:
    if batch is None:
        return version(None)
    return version(
        [
            batch.status,
            batch.is_open,
            batch.completed_count,
            batch.failed_count,
            batch.canceled_count,
            batch.in_troubleshooting_count,
            batch.total_count,
            batch.canceled_at,
            [f.sent for f in batch.follow_ups],
        ]
    )


def _topic(console: Console, topic: str) -> tuple[ReadVersion, AbstractContextManager[Any]]:
    """How to read the topic's version, and what wakes the reader early."""
    kind, _, rest = topic.partition(":")
    bus, tsq, size = console.runtime.bus, console.runtime.tsq, console.settings.page_size
    if kind == "overview" and not rest:

        async def overview() -> str:
            return overview_version(await console.gauges())

        return overview, nullcontext(None)
    if kind == "tsq":
        domain = check_name("domain", rest)

        async def queue() -> str:
            snapshot = await console.gauges()
            return tsq_version(snapshot, domain, await tsq.list_troubleshooting(domain, limit=size))

        return queue, nullcontext(None)
    if kind == "batch":
        domain_text, _, batch_text = rest.rpartition(":")
        domain = check_name("domain", domain_text)
        batch_id = check_uuid("batch_id", batch_text, context=f"domain {domain!r}")

        async def batch() -> str:
            return batch_version(await bus.get_batch(domain, batch_id))

        hints = console.runtime.notifier.subscribe(Channel.BATCH, batch_payload(domain, batch_id))
        return batch, hints
    raise ValidationError(f"unknown live topic {topic!r}: overview, tsq:DOMAIN or batch:DOMAIN:ID")


async def changes(console: Console, request: Request) -> Response:
    read_version, wakeups = _topic(console, request.query_params.get("topic", ""))
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if request.method == "HEAD":
        return Response(media_type="text/event-stream", headers=headers)
    interval = console.settings.live_interval

    async def stream() -> AsyncIterator[str]:
        last: str | None = request.query_params.get("since")
        quiet = 0.0
        with wakeups as hints:
            while True:
                current: str | None
                try:
                    current = await read_version()
                except DatabaseError:
                    current = last  # an outage: say nothing until it reads again
                if current != last:
                    last, quiet = current, 0.0
                    yield f"event: changed\ndata: {current}\n\n"
                elif quiet >= HEARTBEAT:
                    quiet = 0.0
                    yield ": still here\n\n"
                with trio.move_on_after(interval):
                    if hints is None:
                        await trio.sleep_forever()
                    await hints.receive()
                quiet += interval

    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
