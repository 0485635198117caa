"""The console's actions (POST, checked by the gate): on one TSQ command, on many, and on
a batch. Each acts as the authenticated operator, then redirects (303) to a page that
shows the outcome; a refused action renders the error and changes nothing."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from triobus.actors.console.pages import is_number
from triobus.actors.console.views import Console
from triobus.persistence.errors import ValidationError
from triobus.persistence.validation import check_name, check_uuid


class MoreThanConfirmed(Exception):
    """A bulk action on everything matching found more than the operator confirmed."""

    def __init__(self, count: int) -> None:
        self.count = count


def field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()


def json_object(form: FormData, name: str, context: str) -> dict[str, Any] | None:
    """A JSON object typed into the form (None: left empty)."""
    text = field(form, name)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as ex:
        raise ValidationError(
            f"{name} is not JSON: {ex.msg} at line {ex.lineno} ({context})"
        ) from None
    except RecursionError:
        raise ValidationError(f"{name} is nested too deeply ({context})") from None
    if not isinstance(value, dict):
        raise ValidationError(f"{name} must be a JSON object ({context})")
    return value


def required(form: FormData, name: str, context: str) -> str:
    value = field(form, name)
    if value is None:
        raise ValidationError(f"{name} is required ({context})")
    return value


async def on_command(console: Console, request: Request) -> Response:
    """Retry (with the data, edited or not), cancel (with a reason) or complete (with a
    result) one TSQ command."""
    domain = check_name("domain", request.path_params["domain"])
    command_id = check_uuid(
        "command_id", request.path_params["command_id"], context=f"domain {domain!r}"
    )
    context = f"domain {domain!r}, command {command_id}"
    form = await request.form()
    operator = request.state.operator
    tsq = console.runtime.tsq
    match request.path_params["action"]:
        case "retry":
            data = json_object(form, "data", context)
            if data is not None and data == json_object(form, "original", context):
                data = None  # not edited: retried as it is
            if data is not None and not console.settings.shows_payloads_of(domain):
                raise ValidationError(f"the payloads of this domain are hidden ({context})")
            await tsq.operator_retry(domain, command_id, data=data, operator=operator)
            done = "retried"
        case "cancel":
            reason = required(form, "reason", context)
            await tsq.operator_cancel(domain, command_id, reason, operator=operator)
            done = "canceled"
        case "complete":
            result = json_object(form, "result", context)
            await tsq.operator_complete(domain, command_id, result_data=result, operator=operator)
            done = "completed"
        case _:
            raise HTTPException(404)  # no such action: no such page
    return console.redirect(request, "/tsq", {"domain": domain, "done": done, "count": 1})


async def bulk(console: Console, request: Request) -> Response:
    """Retry or cancel the selected TSQ commands, or all matching the filter (a domain and
    maybe a type). Without `confirmed`, shows what would be done and asks first."""
    form = await request.form()
    domain = check_name("domain", field(form, "domain"))
    context = f"domain {domain!r}"
    action = field(form, "action")
    if action not in ("retry", "cancel"):
        raise ValidationError(f"action must be retry or cancel, not {action!r} ({context})")
    scope = field(form, "scope")
    command_type = field(form, "type")
    if command_type is not None:
        command_type = check_name("command_type", command_type, context=context)
    ids = [
        check_uuid("command_id", v, context=context)
        for v in form.getlist("id")
        if isinstance(v, str)
    ]
    if scope == "selected" and not ids:
        raise ValidationError(f"select at least one command ({context})")
    if scope not in ("selected", "matching"):
        raise ValidationError(f"scope must be selected or matching, not {scope!r} ({context})")
    reason = field(form, "reason")
    tsq = console.runtime.tsq
    question = {
        "domain": domain,
        "action": action,
        "scope": scope,
        "command_type": command_type,
        "ids": ids,
        "reason": reason,
    }
    if field(form, "confirmed") != "yes":
        count = (
            len(ids)
            if scope == "selected"
            else await tsq.count_troubleshooting(domain, command_type=command_type)
        )
        return console.render(request, "confirm.html", {**question, "count": count})
    operator = request.state.operator
    if action == "cancel":
        reason = required(form, "reason", context)
    if scope == "selected":
        async with console.runtime.transaction() as conn:  # all of them, or none
            for command_id in ids:
                if action == "retry":
                    await tsq.operator_retry(domain, command_id, operator=operator, conn=conn)
                else:
                    assert reason is not None
                    await tsq.operator_cancel(
                        domain, command_id, reason, operator=operator, conn=conn
                    )
        count = len(ids)
    else:
        confirmed = field(form, "expected") or ""
        if not is_number(confirmed):
            raise ValidationError(f"expected must be the count confirmed ({context})")
        try:
            async with console.runtime.transaction() as conn:
                if action == "retry":
                    count = await tsq.retry_all(
                        domain, command_type=command_type, operator=operator, conn=conn
                    )
                else:
                    assert reason is not None
                    count = await tsq.cancel_all(
                        domain, reason, command_type=command_type, operator=operator, conn=conn
                    )
                if count > int(confirmed):  # more than the operator agreed to: undone
                    raise MoreThanConfirmed(count)
        except MoreThanConfirmed as more:
            asked = {**question, "count": more.count, "grew_from": int(confirmed)}
            return console.render(request, "confirm.html", asked, 409)
    done = "retried" if action == "retry" else "canceled"
    query = {"domain": domain, "type": command_type, "done": done, "count": count}
    return console.redirect(request, "/tsq", query)


async def on_batch(console: Console, request: Request) -> Response:
    """Cancel (with a reason), retry (its TSQ members) or close (an open batch)."""
    domain = check_name("domain", request.path_params["domain"])
    batch_id = check_uuid("batch_id", request.path_params["batch_id"], context=f"domain {domain!r}")
    context = f"domain {domain!r}, batch {batch_id}"
    form = await request.form()
    operator = request.state.operator
    bus = console.runtime.bus
    count = 0
    match request.path_params["action"]:
        case "cancel":
            reason = required(form, "reason", context)
            count = await bus.cancel_batch(domain, batch_id, reason=reason, operator=operator)
            done = "batch-canceled"
        case "retry":
            count = await console.runtime.tsq.retry_batch(domain, batch_id, operator=operator)
            done = "batch-retried"
        case "close":
            await bus.close_batch(domain, batch_id)
            done = "batch-closed"
        case _:
            raise HTTPException(404)  # no such action: no such page
    path = f"/batches/{quote(domain, safe='')}/{batch_id}"
    return console.redirect(request, path, {"done": done, "count": count})
