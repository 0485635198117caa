"""The console's pages (GET): each reads through the bus, the TSQ or an index-only query,
a page of rows at a time, so it stays fast however many commands are stored."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TypeVar

import trio
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from triobus.actors.console import live
from triobus.actors.console.auth import route_path
from triobus.actors.console.views import Console
from triobus.persistence import console as queries
from triobus.persistence.errors import (
    BatchNotFoundError,
    CommandNotFoundError,
    DatabaseError,
    ValidationError,
)
from triobus.persistence.records import BatchStatus, CommandStatus

T = TypeVar("T")
Paging = tuple[int | None, int | None]

HEALTH_TIMEOUT = 2.0  # seconds /healthz waits for the database

FINISHED = (CommandStatus.COMPLETED, CommandStatus.FAILED, CommandStatus.CANCELED)

# What an action's redirect may say it did (a fixed text, never one from the request).
DONE = {
    "retried": "Retried {count} command(s).",
    "canceled": "Canceled {count} command(s).",
    "completed": "Completed {count} command(s) by hand.",
    "batch-canceled": "Canceled the batch: {count} member(s) canceled.",
    "batch-retried": "Retried {count} member(s) of the batch.",
    "batch-closed": "Closed the batch.",
}


def param(request: Request, name: str) -> str | None:
    value = request.query_params.get(name, "").strip()
    return value or None


def is_number(text: str) -> bool:
    return text.isascii() and text.isdecimal()


def offset_of(request: Request) -> int:
    text = param(request, "offset") or "0"
    if not is_number(text):
        raise ValidationError(f"offset must be a whole number >= 0, not {text!r}")
    return int(text)


def with_default(
    console: Console, request: Request, name: str, default: str | None
) -> Response | None:
    """A page asked for without `name` (a domain, a queue) shows the default one under a
    URL that names it (303), so reloading it, live or by hand, shows the same one."""
    if param(request, name) is not None or default is None:
        return None
    params = {name: default, **{k: v for k, v in request.query_params.items() if k != name}}
    return console.redirect(request, route_path(request.scope), params)


def one_page(found: Sequence[T], offset: int, size: int) -> tuple[Sequence[T], Paging]:
    """The page to show of what a query for `size + 1` rows from `offset` found, and the
    offsets of the previous and the next page (None: there is none)."""
    previous = max(offset - size, 0) if offset > 0 else None
    return found[:size], (previous, offset + size if len(found) > size else None)


def done_message(request: Request) -> str | None:
    template = DONE.get(param(request, "done") or "")
    count = param(request, "count") or "0"
    return None if template is None or not is_number(count) else template.format(count=count)


async def overview(console: Console, request: Request) -> Response:
    async with console.runtime.pool.connection() as conn:
        snapshot = await console.gauges(conn)
        domains = await queries.select_domains(conn)
        estimate = await queries.estimate_commands(conn)
        estimates = await queries.estimate_by_status(conn)
    rows = []
    for domain in domains:
        gauges = snapshot.of(domain) if snapshot is not None else {}
        pending = gauges.get(CommandStatus.PENDING)
        rows.append(
            {
                "domain": domain,
                "counts": {s: g.commands for s, g in gauges.items()},
                "oldest": None if pending is None else pending.oldest_runnable_seconds,
                "finished": 0 if snapshot is None else snapshot.finished_last_minute.get(domain, 0),
                "estimated": {s: estimates.get((domain, s)) for s in FINISHED},
            }
        )
    return console.render(
        request,
        "overview.html",
        {
            "rows": rows,
            "snapshot": snapshot,
            "estimate": estimate,
            "live": "overview",
            "since": live.overview_version(snapshot),
        },
    )


async def _domains(console: Console) -> list[str]:
    async with console.runtime.pool.connection() as conn:
        return await queries.select_domains(conn)


async def commands(console: Console, request: Request) -> Response:
    domains = await _domains(console)
    if redirect := with_default(console, request, "domain", domains[0] if domains else None):
        return redirect
    domain = param(request, "domain")
    filters = {
        "status": param(request, "status"),
        "command_type": param(request, "type"),
        "correlation_id": param(request, "correlation_id"),
        "batch_id": param(request, "batch_id"),
    }
    offset = offset_of(request)
    size = console.settings.page_size
    found = (
        []
        if domain is None
        else await console.runtime.bus.query_commands(
            domain=domain,
            status=filters["status"],
            command_type=filters["command_type"],
            correlation_id=filters["correlation_id"],
            batch_id=filters["batch_id"],
            limit=size + 1,
            offset=offset,
        )
    )
    shown, pages = one_page(found, offset, size)
    return console.render(
        request,
        "commands.html",
        {
            "domains": domains,
            "domain": domain,
            "filters": filters,
            "statuses": list(CommandStatus),
            "commands": shown,
            "paging": pages,
        },
    )


async def command(console: Console, request: Request) -> Response:
    domain, command_id = request.path_params["domain"], request.path_params["command_id"]
    found = await console.runtime.bus.get_command(domain, command_id)
    if found is None:
        raise CommandNotFoundError(domain, command_id)
    trail = await console.runtime.bus.get_audit_trail(found.command_id, found.domain)
    return console.render(
        request,
        "command.html",
        {"command": found, "trail": trail, "done": done_message(request)},
    )


async def troubleshooting(console: Console, request: Request) -> Response:
    async with console.runtime.pool.connection() as conn:
        snapshot = await console.gauges(conn)
        known = await queries.select_domains(conn)
    waiting = (
        []
        if snapshot is None
        else [
            g.domain for g in snapshot.gauges if g.status is CommandStatus.IN_TROUBLESHOOTING_QUEUE
        ]
    )
    domains = sorted(set(waiting) | set(known))
    default = waiting[0] if waiting else domains[0] if domains else None
    if redirect := with_default(console, request, "domain", default):
        return redirect
    domain = param(request, "domain")
    command_type = param(request, "type")
    offset = offset_of(request)
    size = console.settings.page_size
    found, total = [], 0
    if domain is not None:
        tsq = console.runtime.tsq
        found = await tsq.list_troubleshooting(
            domain, command_type=command_type, limit=size + 1, offset=offset
        )
        total = await tsq.count_troubleshooting(domain, command_type=command_type)
    items, pages = one_page(found, offset, size)
    return console.render(
        request,
        "tsq.html",
        {
            "domains": domains,
            "domain": domain,
            "command_type": command_type,
            "items": items,
            "total": total,
            "paging": pages,
            "done": done_message(request),
            "live": None if domain is None else f"tsq:{domain}",
            "since": None if domain is None else live.tsq_version(snapshot, domain, items),
        },
    )


async def batches(console: Console, request: Request) -> Response:
    domains = await _domains(console)
    if redirect := with_default(console, request, "domain", domains[0] if domains else None):
        return redirect
    domain = param(request, "domain")
    status = param(request, "status")
    offset = offset_of(request)
    size = console.settings.page_size
    found = (
        []
        if domain is None
        else await console.runtime.bus.list_batches(
            domain, status=status, limit=size + 1, offset=offset
        )
    )
    shown, pages = one_page(found, offset, size)
    return console.render(
        request,
        "batches.html",
        {
            "domains": domains,
            "domain": domain,
            "status": status,
            "statuses": list(BatchStatus),
            "batches": shown,
            "paging": pages,
        },
    )


async def batch(console: Console, request: Request) -> Response:
    domain, batch_id = request.path_params["domain"], request.path_params["batch_id"]
    found = await console.runtime.bus.get_batch(domain, batch_id)
    if found is None:
        raise BatchNotFoundError(domain, batch_id)
    size = console.settings.page_size
    members = await console.runtime.bus.list_batch_commands(
        found.domain, found.batch_id, status=param(request, "status"), limit=size
    )
    trail = await console.runtime.bus.get_audit_trail(found.batch_id, found.domain)
    return console.render(
        request,
        "batch.html",
        {
            "batch": found,
            "members": members,
            "trail": trail,
            "done": done_message(request),
            "live": f"batch:{found.domain}:{found.batch_id}",
            "since": live.batch_version(found),
        },
    )


async def replies(console: Console, request: Request) -> Response:
    async with console.runtime.pool.connection() as conn:
        queues = await queries.select_reply_queues(conn)
    if redirect := with_default(console, request, "queue", queues[0] if queues else None):
        return redirect
    queue = param(request, "queue")
    found = (
        []
        if queue is None
        else await console.runtime.bus.read_replies(queue, limit=console.settings.page_size)
    )
    return console.render(
        request, "replies.html", {"queues": queues, "queue": queue, "replies": found}
    )


async def health(console: Console, request: Request) -> Response:
    """200 when the database answers within HEALTH_TIMEOUT, else 503 (no authentication:
    for load balancers)."""
    with trio.move_on_after(HEALTH_TIMEOUT):
        try:
            async with console.runtime.pool.connection() as conn:
                await conn.fetch_one("SELECT 1 AS ok")
        except DatabaseError:
            pass
        else:
            return PlainTextResponse("ok\n")
    return PlainTextResponse("database unavailable\n", 503)


async def metrics(console: Console, request: Request) -> Response:
    metrics = console.metrics()
    if metrics is None:
        return PlainTextResponse(
            "metrics need prometheus-client: pip install 'triobus[prometheus]'\n", 404
        )
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    snapshot = await console.gauges()
    if snapshot is not None:
        metrics.show(snapshot, datetime.now(UTC))
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
