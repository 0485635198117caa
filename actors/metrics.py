"""Prometheus metrics fed by a runtime's events (the `prometheus` extra: prometheus-client).

    metrics = PrometheusMetrics(runtime.events)   # counts from now on
    server = serve_metrics(metrics, port=9464)    # GET /metrics, in a thread
    nursery.start_soon(watch_gauges, runtime.pool, metrics)
    ...
    server.close()

`triobus worker --metrics-port` does all three. Each process counts its own work (sum
over processes in the queries); the labels are the domain, the command type and, where
there is one, the outcome or action: bounded by what the application registers, never
by ids. The database gauges (commands waiting per domain and status, the oldest runnable
one's age) are the same in every process: one process at a time computes them, at most
once per interval, and every process reads that snapshot (`persistence/gauges.py`), so
take `max` over processes, not the sum.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from wsgiref.simple_server import WSGIServer

import attrs
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from triobus.actors.events import (
    BatchCallbackFailed,
    BatchCompleted,
    CommandClaimed,
    CommandFinished,
    CommandMovedToTroubleshooting,
    CommandRetried,
    CommandSent,
    DatabaseRecovered,
    DatabaseUnavailable,
    Event,
    Events,
    LeaseExpired,
    OperatorActed,
)
from triobus.persistence import gauges
from triobus.persistence.errors import DatabaseError
from triobus.persistence.gauges import GaugeSnapshot
from triobus.persistence.pool import ConnectionPool
from triobus.persistence.records import CommandStatus

logger = logging.getLogger(__name__)

COMMAND = ("domain", "command_type")
GAUGES_INTERVAL = 15.0
# seconds: from a millisecond (a no-op handler, a claim on an idle queue) to an hour
BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0)


class PrometheusMetrics:
    """Counters and histograms of one runtime's events, in `registry` (a registry of
    its own unless given). `close()` stops counting."""

    def __init__(self, events: Events, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry

        def counter(name: str, help_text: str, labels: tuple[str, ...] = COMMAND) -> Counter:
            return Counter(name, help_text, labels, registry=self.registry)

        def histogram(name: str, help_text: str, labels: tuple[str, ...]) -> Histogram:
            return Histogram(name, help_text, labels, buckets=BUCKETS, registry=self.registry)

        self.sent = counter("triobus_commands_sent", "Commands sent through the bus")
        self.claimed = counter("triobus_commands_claimed", "Commands claimed by a worker")
        self.wait = histogram(
            "triobus_command_wait_seconds",
            "How long a claimed command had been claimable before its claim",
            COMMAND,
        )
        self.finished = counter(
            "triobus_commands_finished",
            "Handler runs whose result was written, by outcome",
            (*COMMAND, "outcome"),
        )
        self.duration = histogram(
            "triobus_command_duration_seconds",
            "How long a handler ran, by outcome",
            (*COMMAND, "outcome"),
        )
        self.retried = counter("triobus_commands_retried", "Attempts that ended in a retry")
        self.moved_to_tsq = counter(
            "triobus_commands_moved_to_tsq", "Commands that entered the troubleshooting queue"
        )
        self.leases_expired = counter(
            "triobus_leases_expired", "Commands claimed again after their lease expired"
        )
        self.operator_actions = counter(
            "triobus_operator_actions", "Operator actions committed", ("domain", "action")
        )
        self.batches_completed = counter(
            "triobus_batches_completed", "Batches completed by this process", ("domain",)
        )
        self.callbacks_failed = counter(
            "triobus_batch_callbacks_failed",
            "Batch on_complete callbacks that raised or timed out",
            ("domain",),
        )
        self.outages = counter("triobus_database_outages", "Database outages met", ())
        self.available = Gauge(
            "triobus_database_available",
            "1 while the database is reachable, 0 during an outage",
            registry=self.registry,
        )
        self.available.set(1)
        self.commands = Gauge(
            "triobus_commands",
            "Open commands per domain and status (PENDING, IN_PROGRESS, IN_TROUBLESHOOTING_QUEUE)",
            ("domain", "status"),
            registry=self.registry,
        )
        self.oldest_runnable = Gauge(
            "triobus_oldest_runnable_seconds",
            "How long the oldest runnable PENDING command of the domain has waited",
            ("domain",),
            registry=self.registry,
        )
        self.gauges_age = Gauge(
            "triobus_gauges_computed_seconds_ago",
            "The age of the database gauges' snapshot",
            registry=self.registry,
        )
        self._seen: set[tuple[str, str]] = set()
        self.close: Callable[[], None] = events.subscribe(self._count)

    def show(self, snapshot: GaugeSnapshot, now: datetime) -> None:
        """Set the database gauges from `snapshot`; a domain and status seen before but
        absent now is 0 (its series does not vanish, so alerts on it keep working)."""
        current = {(g.domain, str(g.status)): g for g in snapshot.gauges}
        for domain, status in self._seen - current.keys():
            self.commands.labels(domain, status).set(0)
            if status == CommandStatus.PENDING:
                self.oldest_runnable.labels(domain).set(0)
        for (domain, status), gauge in current.items():
            self.commands.labels(domain, status).set(gauge.commands)
            if gauge.status is CommandStatus.PENDING:
                self.oldest_runnable.labels(domain).set(gauge.oldest_runnable_seconds or 0)
        self._seen |= current.keys()
        self.gauges_age.set(max(0.0, (now - snapshot.computed_at).total_seconds()))

    def _count(self, event: Event) -> None:
        match event:
            case CommandSent():
                self.sent.labels(event.domain, event.command_type).inc()
            case CommandClaimed():
                self.claimed.labels(event.domain, event.command_type).inc()
                self.wait.labels(event.domain, event.command_type).observe(event.waited)
            case CommandFinished():
                labels = (event.domain, event.command_type, event.outcome)
                self.finished.labels(*labels).inc()
                self.duration.labels(*labels).observe(event.duration)
            case CommandRetried():
                self.retried.labels(event.domain, event.command_type).inc()
            case CommandMovedToTroubleshooting():
                self.moved_to_tsq.labels(event.domain, event.command_type).inc()
            case LeaseExpired():
                self.leases_expired.labels(event.domain, event.command_type).inc()
            case OperatorActed():
                self.operator_actions.labels(event.domain, event.action).inc()
            case BatchCompleted():
                self.batches_completed.labels(event.domain).inc()
            case BatchCallbackFailed():
                self.callbacks_failed.labels(event.domain).inc()
            case DatabaseUnavailable():
                self.outages.inc()
                self.available.set(0)
            case DatabaseRecovered():
                self.available.set(1)


async def watch_gauges(
    pool: ConnectionPool, metrics: PrometheusMetrics, *, interval: float = GAUGES_INTERVAL
) -> None:
    """Every `interval` seconds: refresh the database gauges' snapshot if it is due and no
    other process is at it, then show it. A database error is logged, and tried again."""
    while True:
        try:
            await refresh_and_show(pool, metrics, max_age=interval)
        except DatabaseError as ex:
            logger.warning("the database gauges could not be read: %s", ex)
        await trio.sleep(interval)


async def refresh_and_show(
    pool: ConnectionPool, metrics: PrometheusMetrics, *, max_age: float
) -> None:
    async with pool.connection() as conn:
        snapshot = await gauges.current_snapshot(conn, max_age=max_age)
    if snapshot is not None:
        metrics.show(snapshot, datetime.now(UTC))


@attrs.frozen
class MetricsServer:
    """The HTTP server of `serve_metrics`, running in a daemon thread."""

    server: WSGIServer

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(
    metrics: PrometheusMetrics, *, port: int, host: str = "127.0.0.1"
) -> MetricsServer:
    """Serve `metrics` at http://host:port/metrics (port 0: any free one, see `.port`)."""
    server, _ = start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsServer(server)
