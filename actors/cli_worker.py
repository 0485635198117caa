"""`triobus worker`: the workers of an application, run as a service.

    triobus worker --app invoicing.app:application --domain invoicing=16 --no-migrate

Every option has a `TRIOBUS_*` environment variable (the option's name in capitals,
e.g. `TRIOBUS_HANDLER_TIMEOUT`; `TRIOBUS_DOMAINS` holds comma-separated domains); an
option given on the command line wins. `--app` is imported with the current directory
on `sys.path`, and names a registry or an application factory (`application.py`).

It logs one INFO line at start (each domain with its handlers and concurrency, the
database's host, port and name, never a password), a WARNING for a domain without
handlers, and an INFO statistics line every `--stats-interval` seconds. The first
SIGINT or SIGTERM stops it gracefully (exit status 0); a second stops it at once:
running handlers cancelled, their commands released, exit status 128 + the signal.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import attrs
import trio
from psycopg.conninfo import conninfo_to_dict

from triobus.actors.application import KINDS, ApplicationError, started
from triobus.actors.cli_common import UsageError, duration
from triobus.actors.handlers import HandlerRegistry
from triobus.actors.log_format import LogFormat, configure_logging
from triobus.actors.maintenance import RetentionPolicy
from triobus.actors.outcomes import RetryPolicy
from triobus.actors.runtime import Runtime, open_runtime
from triobus.actors.worker import Worker

logger = logging.getLogger("triobus.worker")

T = TypeVar("T")
ENV_PREFIX = "TRIOBUS_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@attrs.frozen
class DomainSpec:
    """`--domain NAME`, `NAME=CONCURRENCY` or `NAME=CONCURRENCY/PREFETCH`: None takes
    `--concurrency` or `--prefetch`."""

    name: str
    concurrency: int | None = None
    prefetch: int | None = None


_DOMAIN_SPEC = re.compile(r"(?P<name>[^=]+)(?:=(?P<concurrency>\d+)(?:/(?P<prefetch>\d+))?)?")


def _domain_spec(text: str) -> DomainSpec:
    match = _DOMAIN_SPEC.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected DOMAIN, DOMAIN=CONCURRENCY or DOMAIN=CONCURRENCY/PREFETCH, got {text!r}"
        )
    concurrency, prefetch = match["concurrency"], match["prefetch"]
    return DomainSpec(
        match["name"],
        None if concurrency is None else int(concurrency),
        None if prefetch is None else int(prefetch),
    )


def _delays(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds separated by commas, got {text!r}"
        ) from None


def _env_name(option: str) -> str:
    return ENV_PREFIX + option.removeprefix("--").replace("-", "_").upper()


def add_worker_arguments(worker: argparse.ArgumentParser) -> None:
    """The worker's options, each defaulting to its environment variable."""

    def option(name: str, convert: Callable[[str], T], default: T | None, help_text: str) -> None:
        env = _env_name(name)
        value: Any = os.environ.get(env)  # a string: argparse converts it as given
        worker.add_argument(
            name,
            type=convert,
            default=default if value is None else value,
            help=f"{help_text} (${env}; default: {default})",
        )

    option("--app", str, None, "handler registry or application factory, package.module:name")
    worker.add_argument(
        "--domain",
        action="append",
        type=_domain_spec,
        help="DOMAIN, DOMAIN=CONCURRENCY or DOMAIN=CONCURRENCY/PREFETCH, repeatable"
        " ($TRIOBUS_DOMAINS: comma-separated)",
    )
    worker.add_argument(
        "--no-migrate",
        action="store_true",
        default=os.environ.get("TRIOBUS_NO_MIGRATE", "") not in ("", "0"),
        help="do not migrate the schema first, for a role that does not own it"
        " ($TRIOBUS_NO_MIGRATE=1)",
    )
    option("--concurrency", int, 8, "handlers run at once per domain")
    option("--prefetch", int, 0, "commands claimed ahead of idle handlers")
    option("--visibility-timeout", float, 30.0, "seconds a claim's lease lasts")
    option("--heartbeat-interval", float, None, "seconds between lease extensions")
    option("--poll-interval", float, 5.0, "seconds an idle worker waits between polls")
    option("--handler-timeout", float, None, "seconds a handler may run")
    option("--grace-period", float, 10.0, "seconds running handlers may finish when stopping")
    option("--max-attempts", int, 3, "attempts of commands sent without max_attempts")
    backoff: tuple[float, ...] = RetryPolicy().backoff
    option("--backoff", _delays, backoff, "seconds before each retry, e.g. 10,60,300")
    option("--log-level", str.upper, "INFO", f"one of {', '.join(LOG_LEVELS)}")
    option("--log-format", LogFormat, LogFormat.TEXT, "text or json")
    option("--stats-interval", float, 60.0, "seconds between statistics lines, 0: none")
    option("--metrics-port", int, None, "serve Prometheus metrics on this port, 0: any free one")
    option("--metrics-host", str, "127.0.0.1", "the address the metrics are served on")
    option(
        "--retention",
        duration,
        7 * 86_400.0,
        "how long finished work is kept before this runtime prunes it: 90, 45s, 30m, 12h,"
        " 7d; 0 keeps everything",
    )


def load_application(spec: str) -> object:
    """`module:attribute`, imported with the current directory on `sys.path` (as uvicorn
    and celery do); an error raised inside the application shows its traceback."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"--app must look like package.module:registry, got {spec!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        dotted = module_name.removesuffix(".py").strip(os.sep).replace(os.sep, ".")
        raise UsageError(
            f"--app takes a module's dotted name, not a file: try {dotted}:{attribute}"
        )
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as ex:
        missing = ex.name or ""
        if module_name == missing or module_name.startswith(missing + "."):  # not found at all
            raise UsageError(f"cannot load {spec!r}: {ex} (from {os.getcwd()})") from None
        raise ApplicationError(f"importing the application {spec!r}", ex) from ex
    except Exception as ex:
        raise ApplicationError(f"importing the application {spec!r}", ex) from ex
    application: object = getattr(module, attribute, None)
    if application is None:
        raise UsageError(f"cannot load {spec!r}: module {module_name!r} has no {attribute!r}")
    if not isinstance(application, HandlerRegistry) and not callable(application):
        raise UsageError(f"{spec!r} is a {type(application).__name__}, {KINDS}")
    return application


def _domains(args: argparse.Namespace) -> list[DomainSpec]:
    if args.domain:
        return list(args.domain)
    listed = os.environ.get("TRIOBUS_DOMAINS", "")
    try:
        specs = [_domain_spec(part.strip()) for part in listed.split(",") if part.strip()]
    except argparse.ArgumentTypeError as ex:
        raise UsageError(f"$TRIOBUS_DOMAINS: {ex}") from None
    if not specs:
        raise UsageError("give at least one --domain (or set $TRIOBUS_DOMAINS)")
    return specs


async def run_worker(args: argparse.Namespace, dsn: str) -> int:
    """Run workers until SIGINT or SIGTERM (the module docstring); the exit status."""
    if args.log_level not in LOG_LEVELS:
        raise UsageError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
    if args.app is None:
        raise UsageError("give --app (or set $TRIOBUS_APP)")
    domains = _domains(args)
    configure_logging(args.log_level, args.log_format)
    application = load_application(args.app)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with (
            open_runtime(
                dsn,
                migrate=not args.no_migrate,
                retention=(
                    RetentionPolicy(commands=args.retention, replies=args.retention)
                    if args.retention
                    else None
                ),
            ) as runtime,
            started(application, runtime, f"the application {args.app!r}") as registry,
        ):
            close_metrics, watch_gauges = _serve_metrics(args, runtime)
            try:
                workers = [await _start(args, runtime, registry, d) for d in domains]
                _log_start(workers, registry, dsn)
                return await _serve(args, runtime, workers, signals, watch_gauges)
            finally:  # a factory's dependencies are closed after the last handler
                with trio.CancelScope(shield=True):
                    await runtime.stop_workers()
                close_metrics()


def _serve_metrics(
    args: argparse.Namespace, runtime: Runtime
) -> tuple[Callable[[], None], Callable[[], Awaitable[None]] | None]:
    """With --metrics-port: count the runtime's events and serve them; what stops it, and
    the task that keeps the database gauges."""
    if args.metrics_port is None:
        return (lambda: None), None
    try:
        from triobus.actors.metrics import PrometheusMetrics, serve_metrics, watch_gauges
    except ImportError as ex:
        raise UsageError(
            f"--metrics-port needs prometheus-client: pip install 'triobus[prometheus]' ({ex})"
        ) from None
    metrics = PrometheusMetrics(runtime.events)
    try:
        server = serve_metrics(metrics, port=args.metrics_port, host=args.metrics_host)
    except OSError as ex:
        metrics.close()
        raise UsageError(
            f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {ex}"
        ) from None
    logger.info("metrics at http://%s:%d/metrics", args.metrics_host, server.port)

    def close() -> None:
        server.close()
        metrics.close()

    return close, functools.partial(watch_gauges, runtime.pool, metrics)


async def _start(
    args: argparse.Namespace, runtime: Runtime, registry: HandlerRegistry, domain: DomainSpec
) -> Worker:
    return await runtime.start_worker(
        domain.name,
        concurrency=args.concurrency if domain.concurrency is None else domain.concurrency,
        prefetch=args.prefetch if domain.prefetch is None else domain.prefetch,
        visibility_timeout=args.visibility_timeout,
        heartbeat_interval=args.heartbeat_interval,
        poll_interval=args.poll_interval,
        handler_timeout=args.handler_timeout,
        grace_period=args.grace_period,
        retry_policy=RetryPolicy(max_attempts=args.max_attempts, backoff=args.backoff),
        registry=registry,
    )


def _log_start(workers: list[Worker], registry: HandlerRegistry, dsn: str) -> None:
    where = conninfo_to_dict(dsn)  # only host, port and database name are shown
    database = (
        f"{where.get('host') or 'localhost'}:{where.get('port') or 5432}/{where.get('dbname', '')}"
    )
    for worker in workers:
        types = registry.command_types(worker.domain)
        options = worker.options
        logger.info(
            "worker for domain %r: concurrency %d, prefetch %d, handlers: %s; database %s",
            worker.domain,
            options.concurrency,
            options.prefetch,
            ", ".join(types) or "none",
            database,
            extra={"domain": worker.domain},
        )
        if not types:
            logger.warning(
                "domain %r has no registered handler: its commands go to the troubleshooting"
                " queue (NO_HANDLER); the application registers handlers for: %s",
                worker.domain,
                ", ".join(registry.domains()) or "no domain",
                extra={"domain": worker.domain},
            )
    logger.info(
        "triobus worker running for %s; SIGINT or SIGTERM stops it",
        ", ".join(w.domain for w in workers),
    )


async def _serve(
    args: argparse.Namespace,
    runtime: Runtime,
    workers: list[Worker],
    signals: AsyncIterator[int],
    watch_gauges: Callable[[], Awaitable[None]] | None,
) -> int:
    async with trio.open_nursery() as nursery:
        if args.stats_interval > 0:
            nursery.start_soon(_log_statistics, workers, args.stats_interval)
        if watch_gauges is not None:
            nursery.start_soon(watch_gauges)
        first = await anext(aiter(signals))
        nursery.cancel_scope.cancel()
    running = sum(w.statistics().running for w in workers)
    grace = max(w.options.grace_period for w in workers)
    logger.info(
        "received %s: stopping: waiting up to %g s for %d running handlers (send it again to"
        " stop at once)",
        signal.Signals(first).name,
        grace,
        running,
    )
    forced: int | None = None
    async with trio.open_nursery() as nursery:

        async def stop_gracefully() -> None:
            await runtime.stop_workers()
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_gracefully)
        async for signum in signals:
            forced = signum
            logger.info("received %s again: stopping at once", signal.Signals(signum).name)
            await runtime.stop_workers(grace_period=0)
            break
    return 0 if forced is None else 128 + forced


async def _log_statistics(workers: list[Worker], interval: float) -> None:
    while True:
        await trio.sleep(interval)
        for worker in workers:
            s = worker.statistics()
            logger.info(
                "statistics of %r: claimed %d, completed %d, failed %d, retried %d,"
                " to the TSQ %d, canceled with their batch %d, discarded %d, in flight %d,"
                " running %d",
                s.domain,
                s.claimed,
                s.completed,
                s.failed,
                s.retried,
                s.moved_to_tsq,
                s.canceled_with_batch,
                s.discarded,
                s.in_flight,
                s.running,
                extra={"domain": s.domain},
            )
