"""Prometheus metrics: what the runtime's events count, and the /metrics endpoint."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from urllib.request import urlopen

import trio

from triobus.actors import (
    BatchCommand,
    Command,
    HandlerContext,
    PermanentCommandError,
    RetryPolicy,
    Runtime,
    TransientCommandError,
)
from triobus.actors.metrics import PrometheusMetrics, serve_metrics

FLAKY = {"domain": "d", "command_type": "Flaky"}


def sample(metrics: PrometheusMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_commands_are_counted_by_domain_type_and_outcome(
    triobus_runtime: Runtime, eventually: Callable[..., Any]
) -> None:
    runtime = triobus_runtime
    metrics = PrometheusMetrics(runtime.events)

    @runtime.registry.handler("d", "Flaky")
    async def flaky(command: Command, ctx: HandlerContext) -> None:
        if ctx.attempt == 1:
            raise TransientCommandError("LATER", "try again")

    @runtime.registry.handler("d", "Broken")
    async def broken(command: Command, ctx: HandlerContext) -> None:
        raise PermanentCommandError("BROKEN", "needs an operator")

    await runtime.bus.send("d", "Flaky", uuid.uuid4(), {})
    parked = await runtime.bus.send("d", "Broken", uuid.uuid4(), {})
    await runtime.bus.create_batch("d", [BatchCommand("Flaky", uuid.uuid4(), {})])
    await runtime.start_worker("d", poll_interval=0.05, retry_policy=RetryPolicy(backoff=(0.05,)))

    async def settled() -> bool:
        return (
            sample(metrics, "triobus_commands_finished_total", **FLAKY, outcome="COMPLETED") == 2
            and sample(
                metrics, "triobus_commands_moved_to_tsq_total", domain="d", command_type="Broken"
            )
            == 1
            and sample(metrics, "triobus_batches_completed_total", domain="d") == 1
        )

    await eventually(settled)
    assert sample(metrics, "triobus_commands_sent_total", **FLAKY) == 2
    assert sample(metrics, "triobus_commands_claimed_total", **FLAKY) == 4
    assert sample(metrics, "triobus_commands_retried_total", **FLAKY) == 2
    assert (
        sample(metrics, "triobus_commands_finished_total", **FLAKY, outcome="RETRY_SCHEDULED") == 2
    )
    assert sample(metrics, "triobus_command_wait_seconds_count", **FLAKY) == 4
    assert (
        sample(metrics, "triobus_command_duration_seconds_count", **FLAKY, outcome="COMPLETED") == 2
    )
    assert sample(metrics, "triobus_database_available") == 1
    await runtime.tsq.operator_cancel("d", parked.command_id, reason="no")
    assert sample(metrics, "triobus_operator_actions_total", domain="d", action="cancel") == 1

    metrics.close()  # counts nothing more
    await runtime.bus.send("d", "Flaky", uuid.uuid4(), {})
    assert sample(metrics, "triobus_commands_sent_total", **FLAKY) == 2


async def test_the_metrics_are_served_over_http(triobus_runtime: Runtime) -> None:
    metrics = PrometheusMetrics(triobus_runtime.events)
    await triobus_runtime.bus.send("d", "Flaky", uuid.uuid4(), {})
    server = serve_metrics(metrics, port=0)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        text = await trio.to_thread.run_sync(lambda: urlopen(url, timeout=10).read().decode())
    finally:
        server.close()
        metrics.close()
    assert 'triobus_commands_sent_total{command_type="Flaky",domain="d"} 1.0' in text
