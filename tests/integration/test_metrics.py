"""Prometheus metrics: what the runtime's events count, the database gauges, and the
/metrics endpoint."""

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
from triobus.actors.metrics import PrometheusMetrics, refresh_and_show, serve_metrics
from triobus.persistence.driver import connect
from triobus.persistence.gauges import GAUGES_LOCK_KEY

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


async def test_the_database_gauges_are_computed_by_one_process_at_a_time_and_read_by_all(
    triobus_runtime: Runtime, triobus_dsn: str, eventually: Callable[..., Any]
) -> None:
    runtime = triobus_runtime

    @runtime.registry.handler("p", "Broken")
    async def broken(command: Command, ctx: HandlerContext) -> None:
        raise PermanentCommandError("BROKEN", "needs an operator")

    await runtime.bus.send("p", "Broken", uuid.uuid4(), {})
    await runtime.drain("p")
    for _ in range(3):
        await runtime.bus.send("d", "T", uuid.uuid4(), {})
    await runtime.bus.send("e", "T", uuid.uuid4(), {}, delay=3600)  # waiting, not runnable
    first, second = PrometheusMetrics(runtime.events), PrometheusMetrics(runtime.events)

    await refresh_and_show(runtime.pool, first, max_age=60)
    assert sample(first, "triobus_commands", domain="d", status="PENDING") == 3
    assert sample(first, "triobus_commands", domain="e", status="PENDING") == 1
    assert sample(first, "triobus_commands", domain="p", status="IN_TROUBLESHOOTING_QUEUE") == 1
    assert sample(first, "triobus_oldest_runnable_seconds", domain="d") > 0
    assert sample(first, "triobus_oldest_runnable_seconds", domain="e") == 0

    # a second process within the interval reads the same snapshot: nothing is recounted
    await runtime.bus.send("d", "T", uuid.uuid4(), {})
    await refresh_and_show(runtime.pool, second, max_age=60)
    assert sample(second, "triobus_commands", domain="d", status="PENDING") == 3
    # while another process computes (holds the lock), a due snapshot is left to it
    holder = await connect(triobus_dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock(%s)", (GAUGES_LOCK_KEY,))
            await refresh_and_show(runtime.pool, second, max_age=0)
            assert sample(second, "triobus_commands", domain="d", status="PENDING") == 3
    finally:
        await holder.close()
    await refresh_and_show(runtime.pool, second, max_age=0)
    assert sample(second, "triobus_commands", domain="d", status="PENDING") == 4

    # a domain with nothing open any more shows 0, it does not vanish
    await runtime.tsq.cancel_all("p", reason="done")
    await refresh_and_show(runtime.pool, second, max_age=0)
    assert sample(second, "triobus_commands", domain="p", status="IN_TROUBLESHOOTING_QUEUE") == 0
    assert 0 <= sample(second, "triobus_gauges_computed_seconds_ago") < 60
