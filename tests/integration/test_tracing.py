"""OpenTelemetry: the spans of send, claim and handle, and one trace from the span that
sends a command into its handler, through the bus and through the producer module.
Recorded by the SDK into memory (this module installs the process's tracer provider)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind, StatusCode

from triobus.actors import (
    BatchCommand,
    BusinessRuleError,
    Command,
    HandlerContext,
    Runtime,
)
from triobus.persistence import producer

Eventually = Callable[..., Any]


class Recorder(SpanProcessor):
    """Keeps the spans that end while a test records (the provider is the process's)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.on = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            self.spans.append(span)

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name]


_RECORDER = Recorder()


@pytest.fixture
def spans() -> Iterator[Recorder]:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(_RECORDER)
        trace.set_tracer_provider(provider)
    _RECORDER.spans, _RECORDER.on = [], True
    try:
        yield _RECORDER
    finally:
        _RECORDER.on = False


def tracer() -> trace.Tracer:
    return trace.get_tracer("tests")


async def handled_in(runtime: Runtime, eventually: Eventually, domain: str = "d") -> dict[str, Any]:
    """Register a handler of `domain`/T that notes the trace it runs in; start a worker."""
    seen: dict[str, Any] = {}

    @runtime.registry.handler(domain, "T")
    async def handle(command: Command, ctx: HandlerContext) -> None:
        seen[str(command.command_id)] = trace.get_current_span().get_span_context()

    await runtime.start_worker(domain, poll_interval=0.05)
    return seen


async def test_one_trace_runs_from_the_sending_span_into_the_handler(
    triobus_runtime: Runtime, spans: Recorder, eventually: Eventually
) -> None:
    seen = await handled_in(triobus_runtime, eventually)
    with tracer().start_as_current_span("POST /orders") as request:
        sent = await triobus_runtime.bus.send("d", "T", uuid.uuid4(), {})

    async def handled() -> bool:
        return bool(spans.named("process d"))

    await eventually(handled)
    trace_id = request.get_span_context().trace_id
    assert seen[str(sent.command_id)].trace_id == trace_id
    (send,) = spans.named("send d")
    (process,) = spans.named("process d")
    assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.context.trace_id == trace_id
    assert dict(process.attributes or {}) == {
        "messaging.system": "triobus",
        "messaging.destination.name": "d",
        "messaging.operation.type": "process",
        "messaging.message.id": str(sent.command_id),
        "triobus.command_type": "T",
        "triobus.attempt": 1,
    }
    assert process.status.status_code is StatusCode.UNSET
    receive = spans.named("receive d")
    assert receive and receive[0].kind is SpanKind.CONSUMER
    assert (receive[0].attributes or {})["messaging.batch.message_count"] == 1


async def test_a_failing_handler_marks_its_span_failed(
    triobus_runtime: Runtime, spans: Recorder, eventually: Eventually
) -> None:
    @triobus_runtime.registry.handler("d", "Refused")
    async def refuse(command: Command, ctx: HandlerContext) -> None:
        raise BusinessRuleError("NO_STOCK", "out of stock")

    await triobus_runtime.bus.send("d", "Refused", uuid.uuid4(), {})
    await triobus_runtime.start_worker("d", poll_interval=0.05)

    async def handled() -> bool:
        return bool(spans.named("process d"))

    await eventually(handled)
    (process,) = spans.named("process d")
    assert process.status.status_code is StatusCode.ERROR
    assert "out of stock" in (process.status.description or "")
    assert [e.name for e in process.events] == ["exception"]


async def test_the_producer_module_carries_the_trace_too(
    triobus_runtime: Runtime, triobus_dsn: str, spans: Recorder, eventually: Eventually
) -> None:
    seen = await handled_in(triobus_runtime, eventually)

    def send_from_sync_code() -> tuple[int, uuid.UUID]:
        with (
            tracer().start_as_current_span("job") as job,
            psycopg.connect(triobus_dsn, autocommit=True) as conn,
        ):
            sent = producer.send(conn, "d", "T", uuid.uuid4(), {})
        return job.get_span_context().trace_id, sent.command_id

    trace_id, command_id = await trio.to_thread.run_sync(send_from_sync_code)

    async def handled() -> bool:
        return str(command_id) in seen

    await eventually(handled)
    assert seen[str(command_id)].trace_id == trace_id


async def test_a_batch_carries_its_sending_trace_to_every_member(
    triobus_runtime: Runtime, spans: Recorder, eventually: Eventually
) -> None:
    seen = await handled_in(triobus_runtime, eventually)
    ids = [uuid.uuid4() for _ in range(3)]
    with tracer().start_as_current_span("import") as job:
        batch_id = await triobus_runtime.bus.create_batch(
            "d", [BatchCommand("T", i, {}) for i in ids]
        )
    await triobus_runtime.wait_batch("d", batch_id, timeout=15)

    async def handled() -> bool:
        return len(seen) == 3

    await eventually(handled)
    assert {seen[str(i)].trace_id for i in ids} == {job.get_span_context().trace_id}
    (send,) = spans.named("send d")
    assert (send.attributes or {})["messaging.batch.message_count"] == 3


async def test_a_command_sent_outside_any_span_is_in_the_trace_its_send_starts(
    triobus_runtime: Runtime, spans: Recorder, eventually: Eventually
) -> None:
    seen = await handled_in(triobus_runtime, eventually)
    sent = await triobus_runtime.bus.send("d", "T", uuid.uuid4(), {})

    async def handled() -> bool:
        return str(sent.command_id) in seen

    await eventually(handled)
    async with triobus_runtime.pool.connection() as conn:
        row = await conn.fetch_one(
            "SELECT trace_context FROM triobus.command WHERE command_id = %s", (sent.command_id,)
        )
    assert row is not None
    _, trace_id, span_id, _ = row["trace_context"]["traceparent"].split("-")
    (send,) = spans.named("send d")
    assert send.parent is None  # a root: no span was current
    assert (int(trace_id, 16), int(span_id, 16)) == (send.context.trace_id, send.context.span_id)
    assert seen[str(sent.command_id)].trace_id == send.context.trace_id


async def test_an_asyncio_handler_runs_in_its_commands_trace(
    triobus_runtime: Runtime, spans: Recorder, eventually: Eventually
) -> None:
    seen: dict[str, Any] = {}

    @triobus_runtime.registry.handler("d", "T", asyncio=True)
    async def handle(command: Command, ctx: HandlerContext) -> None:
        seen["context"] = trace.get_current_span().get_span_context()

    await triobus_runtime.start_worker("d", poll_interval=0.05)
    with tracer().start_as_current_span("POST /orders") as request:
        await triobus_runtime.bus.send("d", "T", uuid.uuid4(), {})

    async def handled() -> bool:
        return "context" in seen

    await eventually(handled)
    assert seen["context"].trace_id == request.get_span_context().trace_id
    (process,) = spans.named("process d")
    assert seen["context"].span_id == process.context.span_id
