"""OpenTelemetry (the `otel` extra: opentelemetry-api alone): the spans of send, claim and
handle, after the messaging semantic conventions, and the W3C trace context a command
carries from its send to its handler.

A send (through the bus or the producer module) runs in a PRODUCER span `send {domain}`,
a child of whatever span is current (the web request that sends), and stores that span's
context (`traceparent`, `tracestate`) on the command. The handler runs in a CONSUMER span
`process {domain}` whose parent is that context: one trace runs from the request into
the handler, across processes. A claim that took commands is a CONSUMER span
`receive {domain}`. Without opentelemetry-api, or without an SDK's tracer provider set
(checked at each span: one may be set later), no span is made and no context stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from triobus.persistence.new_commands import NewCommand

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the otel extra is not installed: no spans, no context
    _tracer: Any = None
else:
    _tracer = trace.get_tracer("triobus")

SYSTEM = "triobus"


def _tracing() -> bool:
    """Whether an SDK (a real tracer provider) is installed: without one, even the API's
    non-recording spans cost a fifth of a no-op handler's throughput, so none is made."""
    return _tracer is not None and not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


def _attributes(domain: str, operation: str, command_id: UUID | None = None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.destination.name": domain,
        "messaging.operation.type": operation,
    }
    if command_id is not None:
        attributes["messaging.message.id"] = str(command_id)
    return attributes


@contextmanager
def send_span(
    domain: str,
    *,
    command_type: str | None = None,
    command_id: UUID | None = None,
    batch_id: UUID | None = None,
    count: int = 1,
) -> Iterator[None]:
    """The span of a send: of one command, or of a batch's `count` commands."""
    if not _tracing():
        yield
        return
    attributes = _attributes(domain, "send", command_id)
    if command_type is not None:
        attributes["triobus.command_type"] = command_type
    if batch_id is not None:
        attributes["triobus.batch_id"] = str(batch_id)
        attributes["messaging.batch.message_count"] = count
    with _tracer.start_as_current_span(
        f"send {domain}", kind=SpanKind.PRODUCER, attributes=attributes
    ):
        yield


def command_send_span(command: NewCommand) -> AbstractContextManager[None]:
    """The span of one command's send."""
    return send_span(
        command.domain, command_type=command.command_type, command_id=command.command_id
    )


def current_trace_context() -> str | None:
    """The current span's W3C trace context as JSON, to store with a command (None: no
    span is being recorded)."""
    if not _tracing():
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return json.dumps(carrier, separators=(",", ":")) if carrier else None


def claimed(domain: str, started_ns: int, count: int) -> None:
    """Record a claim that took `count` commands, begun at `started_ns` (`now_ns()`)."""
    if not count or not _tracing():
        return
    attributes = _attributes(domain, "receive") | {"messaging.batch.message_count": count}
    span = _tracer.start_span(
        f"receive {domain}", kind=SpanKind.CONSUMER, attributes=attributes, start_time=started_ns
    )
    span.end()


def now_ns() -> int:
    return time.time_ns()


@contextmanager
def process_span(
    domain: str,
    command_type: str,
    command_id: UUID,
    attempt: int,
    trace_context: dict[str, str] | None,
) -> Iterator[Callable[[BaseException], None]]:
    """The span of a handler's run, a child of the context its command carries; yields
    the function that marks it failed."""
    if not _tracing():
        yield lambda error: None
        return
    parent = propagate.extract(trace_context) if trace_context else None
    attributes = _attributes(domain, "process", command_id) | {
        "triobus.command_type": command_type,
        "triobus.attempt": attempt,
    }
    with _tracer.start_as_current_span(
        f"process {domain}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:

        def failed(error: BaseException) -> None:
            try:  # str() of a handler's exception may itself raise: never the worker's problem
                description = f"{type(error).__name__}: {error}"
                span.record_exception(error)
            except Exception:
                description = type(error).__name__
            span.set_status(Status(StatusCode.ERROR, description))

        yield failed
