"""`triobus worker` as a service: loading the application from its own folder, starting
under the least-privilege worker role, and stopping on one signal or at once on two."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import attrs
import pytest
import trio
from psycopg.conninfo import conninfo_to_dict

from tests.integration.test_cli import TRIOBUS, cli
from triobus.actors import CommandStatus, Runtime

APP = """\
import trio
from triobus.actors import HandlerRegistry

registry = HandlerRegistry()


@registry.handler("d", "Hello")
async def hello(command, ctx):
    return {"hello": command.data["name"]}


@registry.handler("d", "Hang")
async def hang(command, ctx):
    await trio.sleep_forever()


@registry.handler("d", "Fail")
async def fail(command, ctx):
    raise RuntimeError("the rates service is down")
"""


FACTORY = """\
import sys
from contextlib import asynccontextmanager

import trio
from triobus.actors import HandlerRegistry


def log(line):
    print(line, file=sys.stderr, flush=True)


@asynccontextmanager
async def application(runtime):
    rates = {"open": True}  # stands for a client or a pool the handlers need
    log("dependency opened")
    registry = HandlerRegistry()

    @registry.handler("d", "Invoice")
    async def invoice(command, ctx):
        assert rates["open"]
        log("handler started")
        release = trio.Path(command.data["release"])
        while not await release.exists():  # the test says when the work is done
            await trio.sleep(0.02)
        log("handler finished")
        return {"rates_open": rates["open"], "bus": ctx.bus is runtime.bus}

    try:
        yield registry
    finally:
        rates["open"] = False
        log("dependency closed")
"""


@pytest.fixture
def app_folder(tmp_path: Path) -> Path:
    """An application folder holding the package `invoicing` (not on PYTHONPATH)."""
    package = tmp_path / "invoicing"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "handlers.py").write_text(APP)
    (package / "app.py").write_text(FACTORY)
    return tmp_path


@attrs.define
class WorkerProcess:
    process: trio.Process
    lines: list[str] = attrs.field(factory=list)

    def read_line_with(self, text: str) -> str:
        """The first line read so far that holds `text`."""
        return next(line for line in self.lines if text in line)

    async def line_with(self, text: str) -> str:
        """Read stderr until a new line holds `text`."""
        assert self.process.stderr is not None
        buffer = b""
        with trio.fail_after(30):
            while True:
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self.lines.append(line.decode())
                    if text in self.lines[-1]:
                        return self.lines[-1]
                chunk = await self.process.stderr.receive_some()
                assert chunk, f"the worker ended ({self.process.poll()}): {self.lines}"
                buffer += chunk


@pytest.fixture
async def start_worker(app_folder: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start `triobus worker --app invoicing.handlers:registry --domain d` in the app's
    folder; kill what is left at the end."""
    started: list[trio.Process] = []

    async def start(
        dsn: str,
        *extra: str,
        app: str = "invoicing.handlers:registry",
        domain: str = "d",
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        process = await trio.lowlevel.open_process(
            [TRIOBUS, "worker", "--app", app, "--domain", domain, *extra],
            cwd=str(app_folder),
            env={**environment, "TRIOBUS_DSN": dsn, **(env or {})},
            stderr=subprocess.PIPE,
        )
        started.append(process)
        worker = WorkerProcess(process)
        await worker.line_with("triobus worker running")
        return worker

    yield start
    for process in started:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def completes(runtime: Runtime, eventually: Callable[..., Any]) -> None:
    sent = await runtime.bus.send("d", "Hello", uuid.uuid4(), {"name": "app"})

    async def completed() -> bool:
        command = await runtime.bus.get_command("d", sent.command_id)
        return command is not None and command.result == {"hello": "app"}

    await eventually(completed)


async def test_the_application_loads_from_its_own_folder_and_stops_on_sigterm(
    triobus_runtime: Runtime,
    triobus_dsn: str,
    start_worker: Callable[..., Any],
    eventually: Callable[..., Any],
) -> None:
    worker = await start_worker(triobus_dsn)
    await completes(triobus_runtime, eventually)
    worker.process.send_signal(signal.SIGTERM)
    assert "stopping: waiting up to 10 s for 0 running handlers" in await worker.line_with(
        "received SIGTERM"
    )
    with trio.fail_after(30):
        assert await worker.process.wait() == 0


async def test_a_factory_opens_its_dependency_before_the_first_handler_and_closes_it_after_the_last(
    triobus_runtime: Runtime,
    triobus_dsn: str,
    tmp_path: Path,
    start_worker: Callable[..., Any],
    eventually: Callable[..., Any],
) -> None:
    worker = await start_worker(triobus_dsn, app="invoicing.app:application")
    release = tmp_path / "release"
    sent = await triobus_runtime.bus.send("d", "Invoice", uuid.uuid4(), {"release": str(release)})
    await worker.line_with("handler started")
    worker.process.send_signal(signal.SIGTERM)
    await worker.line_with("stopping: waiting up to 10 s for 1 running handlers")
    release.touch()  # the handler finishes only now, while the worker stops
    await worker.line_with("dependency closed")
    with trio.fail_after(30):
        assert await worker.process.wait() == 0
    order = [line for line in worker.lines if line.startswith(("dependency", "handler"))]
    assert order == [
        "dependency opened",
        "handler started",
        "handler finished",
        "dependency closed",
    ]
    command = await triobus_runtime.bus.get_command("d", sent.command_id)
    assert command is not None and command.result == {"rates_open": True, "bus": True}


async def test_the_worker_role_runs_it_with_no_migrate_and_is_told_so_without(
    triobus_runtime: Runtime,
    role_dsns: dict[str, str],
    start_worker: Callable[..., Any],
    app_folder: Path,
    eventually: Callable[..., Any],
) -> None:
    refused = await cli(
        *("worker", "--app", "invoicing.handlers:registry", "--domain", "d"),
        dsn=role_dsns["worker"],
        env={"PYTHONPATH": str(app_folder)},
    )
    assert refused.returncode == 1
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("triobus: error: migrating the schema was refused (permission denied")
    assert line.endswith("(migrate=False; triobus worker --no-migrate)")

    await start_worker(role_dsns["worker"], "--no-migrate")
    await completes(triobus_runtime, eventually)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_a_second_signal_stops_at_once_and_releases_the_claimed_commands(
    triobus_runtime: Runtime,
    triobus_dsn: str,
    start_worker: Callable[..., Any],
    eventually: Callable[..., Any],
    signum: signal.Signals,
) -> None:
    runtime = triobus_runtime
    worker = await start_worker(triobus_dsn)
    ids = [(await runtime.bus.send("d", "Hang", uuid.uuid4(), {})).command_id for _ in "ab"]

    async def both_running() -> bool:
        commands = [await runtime.bus.get_command("d", i) for i in ids]
        return all(c is not None and c.status is CommandStatus.IN_PROGRESS for c in commands)

    await eventually(both_running)
    worker.process.send_signal(signum)
    assert "waiting up to 10 s for 2 running handlers" in await worker.line_with("stopping")
    worker.process.send_signal(signum)
    with trio.fail_after(2):
        status = await worker.process.wait()
    assert status == 128 + signum
    assert not any("Traceback" in line for line in worker.lines)
    for command_id in ids:
        command = await runtime.bus.get_command("d", command_id)
        assert command is not None
        assert (command.status, command.attempts) == (CommandStatus.PENDING, 0)


async def test_a_file_path_gets_the_dotted_form_and_an_error_in_the_app_shows_its_traceback(
    triobus_dsn: str, app_folder: Path
) -> None:
    def worker(app: str) -> Any:
        return cli("worker", "--app", app, "--domain", "d", dsn=triobus_dsn)

    as_file = await worker("invoicing/handlers.py:registry")
    assert as_file.returncode == 2
    assert "try invoicing.handlers:registry" in as_file.stderr

    missing = await worker("nowhere.handlers:registry")
    assert missing.returncode == 2
    assert "cannot load 'nowhere.handlers:registry': No module named 'nowhere'" in missing.stderr

    (app_folder / "invoicing" / "broken.py").write_text("import trio\n\nraise KeyError('rates')\n")
    broken = await cli(
        *("worker", "--app", "invoicing.broken:registry", "--domain", "d"),
        dsn=triobus_dsn,
        env={"PYTHONPATH": str(app_folder)},
    )
    assert broken.returncode == 1
    assert "Traceback" in broken.stderr and 'broken.py", line 3' in broken.stderr
    assert broken.stderr.strip().splitlines()[-1] == (
        "triobus: error: importing the application 'invoicing.broken:registry' failed"
        " (traceback above)"
    )

    (app_folder / "invoicing" / "failing.py").write_text(
        "from contextlib import asynccontextmanager\n\n"
        "@asynccontextmanager\n"
        "async def application(runtime):\n"
        "    raise ConnectionError('the rates service is down')\n"
        "    yield\n"
    )
    failing = await cli(
        *("worker", "--app", "invoicing.failing:application", "--domain", "d"),
        dsn=triobus_dsn,
        env={"PYTHONPATH": str(app_folder)},
    )
    assert failing.returncode == 1
    assert "ConnectionError: the rates service is down" in failing.stderr
    assert failing.stderr.strip().splitlines()[-1] == (
        "triobus: error: starting the application 'invoicing.failing:application' failed"
        " (traceback above)"
    )


async def test_options_come_from_flags_and_the_environment_and_json_logs_carry_fields(
    triobus_runtime: Runtime,
    triobus_dsn: str,
    start_worker: Callable[..., Any],
    eventually: Callable[..., Any],
) -> None:
    worker = await start_worker(
        triobus_dsn,
        *("--log-format", "json", "--stats-interval", "0.2"),
        domain="d=3/2",
        env={"TRIOBUS_MAX_ATTEMPTS": "1", "TRIOBUS_GRACE_PERIOD": "7"},
    )
    started = json.loads(worker.read_line_with("worker for domain"))  # before "running"
    assert started["level"] == "INFO" and started["logger"] == "triobus.worker"
    assert started["domain"] == "d" and "T" in started["timestamp"]
    assert "concurrency 3, prefetch 2" in started["message"]
    assert "handlers: Fail, Hang, Hello" in started["message"]
    host = conninfo_to_dict(triobus_dsn).get("host")
    assert f"database {host}" in started["message"]
    sent = await triobus_runtime.bus.send("d", "Fail", uuid.uuid4(), {})
    failed = json.loads(await worker.line_with("RETRY_EXHAUSTED"))  # one attempt: the env's
    assert (failed["level"], failed["domain"], failed["command_id"]) == (
        "WARNING",
        "d",
        str(sent.command_id),
    )
    statistics = json.loads(await worker.line_with("statistics of 'd'"))
    assert "to the TSQ 1" in statistics["message"]
    worker.process.send_signal(signal.SIGTERM)
    assert "waiting up to 7 s" in await worker.line_with("stopping")
    with trio.fail_after(30):
        assert await worker.process.wait() == 0
    assert all(json.loads(line) for line in worker.lines)  # every line is JSON


async def test_a_domain_without_handlers_is_warned_of(
    triobus_dsn: str, start_worker: Callable[..., Any]
) -> None:
    worker = await start_worker(triobus_dsn, domain="dd")
    warning = worker.read_line_with("has no registered handler")  # logged before "running"
    assert "WARNING" in warning and "registers handlers for: d" in warning


async def test_every_worker_option_is_in_help_with_its_variable() -> None:
    shown = await cli("worker", "--help")
    assert shown.returncode == 0
    text = " ".join(shown.stdout.split())
    for variable in (
        "TRIOBUS_APP",
        "TRIOBUS_DOMAINS",
        "TRIOBUS_NO_MIGRATE",
        "TRIOBUS_CONCURRENCY",
        "TRIOBUS_PREFETCH",
        "TRIOBUS_VISIBILITY_TIMEOUT",
        "TRIOBUS_HEARTBEAT_INTERVAL",
        "TRIOBUS_POLL_INTERVAL",
        "TRIOBUS_HANDLER_TIMEOUT",
        "TRIOBUS_GRACE_PERIOD",
        "TRIOBUS_MAX_ATTEMPTS",
        "TRIOBUS_BACKOFF",
        "TRIOBUS_LOG_LEVEL",
        "TRIOBUS_LOG_FORMAT",
        "TRIOBUS_STATS_INTERVAL",
    ):
        assert f"${variable}" in text, variable


async def test_metrics_are_served_on_the_metrics_port(
    triobus_runtime: Runtime,
    triobus_dsn: str,
    start_worker: Callable[..., Any],
    eventually: Callable[..., Any],
) -> None:
    worker = await start_worker(triobus_dsn, "--metrics-port", "0")
    url = worker.read_line_with("metrics at ").split("metrics at ")[1]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    await completes(triobus_runtime, eventually)

    async def counted() -> str:
        text = await trio.to_thread.run_sync(lambda: urlopen(url, timeout=10).read().decode())
        line = (
            'triobus_commands_finished_total{command_type="Hello",domain="d",outcome="COMPLETED"}'
        )
        return text if f"{line} 1.0" in text else ""

    text = await eventually(counted)
    assert 'triobus_command_duration_seconds_count{command_type="Hello",domain="d"' in text
    assert "triobus_database_available 1.0" in text
    assert "triobus_gauges_computed_seconds_ago" in text  # its gauges were read at start
    worker.process.send_signal(signal.SIGTERM)
    with trio.fail_after(30):
        assert await worker.process.wait() == 0


async def test_a_taken_metrics_port_is_a_usage_error(triobus_dsn: str, app_folder: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        result = await trio.run_process(
            [
                TRIOBUS,
                "worker",
                "--app",
                "invoicing.handlers:registry",
                "--domain",
                "d",
                "--metrics-port",
                str(port),
            ],
            cwd=str(app_folder),
            env={**environment, "TRIOBUS_DSN": triobus_dsn},
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr.decode()
