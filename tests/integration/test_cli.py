"""The real `triobus` executable, run as a subprocess against the test database."""

from __future__ import annotations

import getpass
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pytest
import trio

from triobus.actors import (
    BatchCommand,
    BatchMetadata,
    BatchStatus,
    Command,
    CommandStatus,
    FollowUpCommand,
    HandlerContext,
    PermanentCommandError,
    ReplyOutcome,
    Runtime,
)
from triobus.actors.cli import progress_line
from triobus.actors.pytest_plugin import SessionServer
from triobus.persistence.databases import create_database, drop_database
from triobus.persistence.schema import available_migrations

TRIOBUS = str(Path(sys.executable).with_name("triobus"))


@attrs.frozen
class Run:
    returncode: int
    stdout: str
    stderr: str


async def cli(*args: str, dsn: str | None = None, env: dict[str, str] | None = None) -> Run:
    """Run `triobus ARGS` to completion."""
    environment = {k: v for k, v in os.environ.items() if k != "TRIOBUS_DSN"}
    if dsn is not None:
        environment["TRIOBUS_DSN"] = dsn
    environment.update(env or {})
    result = await trio.run_process(
        [TRIOBUS, *args], env=environment, capture_stdout=True, capture_stderr=True, check=False
    )
    return Run(result.returncode, result.stdout.decode(), result.stderr.decode())


@pytest.fixture
async def parked(triobus_runtime: Runtime, eventually: Callable[..., Any]) -> list[uuid.UUID]:
    """Two commands of domain "d" parked in the TSQ, with replies to queue "q"."""

    @triobus_runtime.registry.handler("d", "Broken")
    async def broken(command: Command, ctx: HandlerContext) -> None:
        raise PermanentCommandError("BROKEN", "needs an operator")

    await triobus_runtime.start_worker("d", poll_interval=0.05)
    ids = []
    for _ in range(2):
        sent = await triobus_runtime.bus.send("d", "Broken", uuid.uuid4(), {"n": 1}, reply_to="q")
        ids.append(sent.command_id)

    async def all_parked() -> bool:
        return await triobus_runtime.tsq.count_troubleshooting("d") == 2

    await eventually(all_parked)
    return ids


async def test_tsq_list_and_count_json_and_table(triobus_dsn: str, parked: list[uuid.UUID]) -> None:
    listed = await cli("tsq", "list", "d", "--json", dsn=triobus_dsn)
    assert listed.returncode == 0, listed.stderr
    items = json.loads(listed.stdout)
    assert {item["command_id"] for item in items} == {str(i) for i in parked}
    assert items[0]["error_code"] == "BROKEN"

    counted = await cli("--json", "tsq", "count", "d", dsn=triobus_dsn)
    assert json.loads(counted.stdout) == {"domain": "d", "count": 2}

    table = await cli("tsq", "list", "d", "--dsn", triobus_dsn)
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["COMMAND_ID", "COMMAND_TYPE", "ERROR_CODE"]
    assert len(rows) == 2
    assert {row.split()[0] for row in rows} == {str(i) for i in parked}


async def test_tsq_actions(
    triobus_runtime: Runtime, triobus_dsn: str, parked: list[uuid.UUID]
) -> None:
    first, second = parked
    canceled = await cli(
        "tsq",
        "cancel",
        "d",
        str(first),
        "--reason",
        "not needed",
        "--operator",
        "alice",
        dsn=triobus_dsn,
    )
    assert canceled.returncode == 0, canceled.stderr
    completed = await cli(
        "tsq", "complete", "d", str(second), "--result", '{"by": "hand"}', "--json", dsn=triobus_dsn
    )
    assert json.loads(completed.stdout) == {"command_id": str(second), "action": "completed"}

    commands = [await triobus_runtime.bus.get_command("d", i) for i in parked]
    statuses = [c.status if c else None for c in commands]
    assert statuses == [CommandStatus.CANCELED, CommandStatus.COMPLETED]
    replies = json.loads((await cli("replies", "read", "q", "--json", dsn=triobus_dsn)).stdout)
    assert {(r["command_id"], r["outcome"]) for r in replies} == {
        (str(first), ReplyOutcome.CANCELED),
        (str(second), ReplyOutcome.SUCCESS),
    }


async def test_tsq_retry_with_corrected_data_records_the_login_name_as_operator(
    triobus_runtime: Runtime, triobus_dsn: str, parked: list[uuid.UUID]
) -> None:
    command_id = parked[0]
    bad = await cli("tsq", "retry", "d", str(command_id), "--data", "{nope", dsn=triobus_dsn)
    assert bad.returncode == 2 and "--data is not valid JSON" in bad.stderr
    retried = await cli("tsq", "retry", "d", str(command_id), "--data", '{"n": 2}', dsn=triobus_dsn)
    assert retried.returncode == 0, retried.stderr
    trail = await triobus_runtime.bus.get_audit_trail(command_id, "d")
    retry = next(e for e in trail if e.event_type == "OPERATOR_RETRY")
    assert retry.details == {
        "operator": getpass.getuser(),  # no --operator: the login name
        "data_changed": True,
        "previous_data": {"n": 1},
    }


async def test_tsq_bulk_actions(triobus_dsn: str, parked: list[uuid.UUID]) -> None:
    result = await cli("tsq", "cancel-all", "d", "--reason", "cleanup", "--json", dsn=triobus_dsn)
    assert json.loads(result.stdout) == {"domain": "d", "canceled": 2}


async def test_command_show_includes_the_audit_trail(
    triobus_dsn: str, parked: list[uuid.UUID]
) -> None:
    shown = await cli("command", "show", "d", str(parked[0]), "--json", dsn=triobus_dsn)
    document = json.loads(shown.stdout)
    assert document["command"]["status"] == "IN_TROUBLESHOOTING_QUEUE"
    assert [e["event_type"] for e in document["audit"]] == ["SENT", "RECEIVED", "MOVED_TO_TSQ"]
    assert "visible_at" not in document["command"]  # it waits for an operator, not a time
    human = await cli("command", "show", "d", str(parked[0]), dsn=triobus_dsn)
    assert "MOVED_TO_TSQ" in human.stdout and "status" in human.stdout
    assert "visible_at" not in human.stdout.split("\n\n")[0]  # the record, not its trail


async def test_command_show_prints_long_errors_and_details_whole(
    triobus_runtime: Runtime, triobus_dsn: str, eventually: Callable[..., Any]
) -> None:
    message = "the card processor answered: " + "declined, " * 20

    @triobus_runtime.registry.handler("d", "Charge")
    async def charge(command: Command, ctx: HandlerContext) -> None:
        raise PermanentCommandError("DECLINED", message, {"codes": list(range(30))})

    await triobus_runtime.start_worker("d", poll_interval=0.05)
    sent = await triobus_runtime.bus.send("d", "Charge", uuid.uuid4(), {"card": "x" * 80})

    async def parked() -> bool:
        return await triobus_runtime.tsq.count_troubleshooting("d") == 1

    await eventually(parked)
    human = await cli("command", "show", "d", str(sent.command_id), dsn=triobus_dsn)
    assert message.strip() in human.stdout
    assert json.dumps(list(range(30))) in human.stdout
    assert "x" * 80 in human.stdout
    record = human.stdout.split("\n\n")[0]  # the command, before its audit trail
    assert "..." not in record


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (("tsq", "retry", "d", str(uuid.UUID(int=1))), 1, "not found in domain 'd'"),
        (("tsq", "retry", "d", "not-a-uuid"), 1, "must be a UUID"),
        (("tsq", "complete", "d", str(uuid.UUID(int=1)), "--result", "{oops"), 2, "not valid JSON"),
        (("command", "show", "d", str(uuid.UUID(int=1))), 1, "not found"),
        (("worker", "--app", "nowhere.module:registry", "--domain", "d"), 2, "cannot load"),
        (("worker", "--app", "a.b:registry", "--domain", "d=many"), 2, "expected DOMAIN"),
        (("worker", "--app", "a.b:registry", "--domain", "d", "--backoff", "1,x"), 2, "commas"),
        (
            ("worker", "--app", "a.b:registry", "--domain", "d", "--retention", "a week"),
            2,
            "'a week' is not a duration",
        ),
    ],
)
async def test_expected_errors_are_one_line_with_a_status(
    triobus_dsn: str, args: tuple[str, ...], status: int, message: str
) -> None:
    result = await cli(*args, dsn=triobus_dsn)
    assert result.returncode == status
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # no traceback
    assert "Traceback" not in result.stderr


async def test_without_a_database_it_says_so() -> None:
    result = await cli("tsq", "list", "d")
    assert result.returncode == 2
    assert "pass --dsn or set TRIOBUS_DSN" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("tsq",),
        ("tsq", "cancel"),
        ("batch", "watch"),
        ("command", "show"),
        ("replies", "read"),
        ("worker",),
    ],
)
async def test_help_on_every_level(args: tuple[str, ...]) -> None:
    result = await cli(*args, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: triobus")


async def test_batch_list_show_and_watch(triobus_runtime: Runtime, triobus_dsn: str) -> None:
    @triobus_runtime.registry.handler("d", "Work")
    async def work(command: Command, ctx: HandlerContext) -> None:
        return None

    batch = [BatchCommand(command_type="Work", command_id=uuid.uuid4(), data={}) for _ in range(3)]
    batch_id = await triobus_runtime.bus.create_batch("d", batch, name="nightly")
    listed = json.loads((await cli("batch", "list", "d", "--json", dsn=triobus_dsn)).stdout)
    assert [(b["batch_id"], b["name"], b["total_count"]) for b in listed] == [
        (str(batch_id), "nightly", 3)
    ]
    await triobus_runtime.start_worker("d")
    watched = await cli("batch", "watch", "d", str(batch_id), "--interval", "0.1", dsn=triobus_dsn)
    assert watched.returncode == 0, watched.stderr
    last = watched.stdout.strip().splitlines()[-1]
    assert "3/3 100%" in last and "COMPLETED" in last
    shown = json.loads(
        (await cli("batch", "show", "d", str(batch_id), "--json", dsn=triobus_dsn)).stdout
    )
    assert shown["batch"]["status"] == "COMPLETED"
    assert [e["event_type"] for e in shown["audit"]] == ["BATCH_STARTED", "BATCH_COMPLETED"]
    missing = await cli("batch", "show", "d", str(uuid.UUID(int=7)), dsn=triobus_dsn)
    assert missing.returncode == 1 and "not found in domain 'd'" in missing.stderr


async def test_batch_cancel_retry_close_and_the_follow_ups_batch_show_lists(
    triobus_runtime: Runtime, triobus_dsn: str, eventually: Callable[..., Any]
) -> None:
    runtime = triobus_runtime

    @runtime.registry.handler("d", "Work")
    async def work(command: Command, ctx: HandlerContext) -> None:
        raise PermanentCommandError("NEEDS_OPERATOR", "an operator must decide")

    report = FollowUpCommand(domain="f", command_type="Report")
    parked_batch = await runtime.bus.create_batch(
        "d",
        [BatchCommand("Work", uuid.uuid4(), {})],
        on_complete_command=report,
        on_failure_command=report,
    )
    await runtime.start_worker("d", poll_interval=0.05)

    async def parked() -> bool:
        return await runtime.tsq.count_troubleshooting("d") == 1

    await eventually(parked)
    await runtime.stop_workers()
    retried = await cli("batch", "retry", "d", str(parked_batch), "--json", dsn=triobus_dsn)
    assert json.loads(retried.stdout) == {
        "batch_id": str(parked_batch),
        "action": "retried",
        "members_retried": 1,
    }
    canceled = await cli(
        "batch", "cancel", "d", str(parked_batch), "--reason", "wrong input", dsn=triobus_dsn
    )
    assert canceled.returncode == 0, canceled.stderr
    assert "members_canceled  1" in canceled.stdout
    again = await cli("batch", "cancel", "d", str(parked_batch), "--reason", "x", dsn=triobus_dsn)
    assert again.returncode == 1 and "was canceled: cancel does not apply" in again.stderr

    shown = json.loads(
        (await cli("batch", "show", "d", str(parked_batch), "--json", dsn=triobus_dsn)).stdout
    )
    assert shown["batch"]["canceled_by"] == getpass.getuser()
    assert shown["batch"]["cancel_reason"] == "wrong input"
    assert [(f["event"], f["sent"], f["status"]) for f in shown["follow_ups"]] == [
        ("ON_COMPLETE", True, "PENDING"),
        ("ON_FAILURE", True, "PENDING"),
    ]
    table = await cli("batch", "show", "d", str(parked_batch), dsn=triobus_dsn)
    assert "EVENT        DOMAIN  COMMAND_TYPE  COMMAND_ID" in table.stdout

    open_batch = await runtime.bus.create_batch("d", [], open=True, on_success_command=report)
    closed = await cli("batch", "close", "d", str(open_batch), "--json", dsn=triobus_dsn)
    assert json.loads(closed.stdout)["completed"] is True
    shown = json.loads(
        (await cli("batch", "show", "d", str(open_batch), "--json", dsn=triobus_dsn)).stdout
    )
    assert [(f["event"], f["sent"]) for f in shown["follow_ups"]] == [("ON_SUCCESS", True)]
    watched = await cli("batch", "watch", "d", str(open_batch), dsn=triobus_dsn)
    assert "0/0 100%" in watched.stdout and "COMPLETED" in watched.stdout
    usage = await cli("batch", "cancel", "d", str(open_batch), dsn=triobus_dsn)
    assert usage.returncode == 2 and "--reason" in usage.stderr


async def test_schedule_list_shows_each_schedule_with_its_next_tick(
    triobus_runtime: Runtime, triobus_dsn: str
) -> None:
    empty = await cli("schedule", "list", dsn=triobus_dsn)
    assert (empty.returncode, empty.stdout) == (0, "(none)\n")
    await triobus_runtime.schedule(
        "nightly", "reports", "Make", "0 3 * * *", timezone="Europe/Paris", data={"to": "ops"}
    )
    table = await cli("schedule", "list", dsn=triobus_dsn)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == [
        "NAME",
        "DOMAIN",
        "COMMAND_TYPE",
        "CRON",
        "TIMEZONE",
        "LAST_TICK",
        "NEXT_TICK",
        "VERSION",
    ]
    assert row.split()[:8] == ["nightly", "reports", "Make", "0", "3", "*", "*", "*"]
    listed = await cli("schedule", "list", "--json", dsn=triobus_dsn)
    (schedule,) = json.loads(listed.stdout)
    assert (schedule["timezone"], schedule["data"], schedule["last_tick"]) == (
        "Europe/Paris",
        {"to": "ops"},
        None,
    )
    next_tick = datetime.fromisoformat(schedule["next_tick"])
    assert next_tick.astimezone(ZoneInfo("Europe/Paris")).time() == time(3)
    assert timedelta(0) < next_tick - datetime.now(UTC) <= timedelta(days=1)


async def test_prune_counts_in_a_dry_run_then_removes_what_is_old(
    triobus_runtime: Runtime, triobus_dsn: str
) -> None:
    old = await triobus_runtime.bus.send("d", "T", uuid.uuid4(), {})
    await triobus_runtime.bus.send("d", "T", uuid.uuid4(), {})  # pending: never pruned
    async with triobus_runtime.pool.connection() as conn:
        await conn.execute(
            "UPDATE triobus.command SET status = 'CANCELED',"
            " finished_at = now() - interval '2 days' WHERE command_id = %s",
            (old.command_id,),
        )
    dry = await cli("prune", "--older-than", "1d", "--dry-run", "--json", dsn=triobus_dsn)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) == {
        "dry_run": True,
        "removed": [
            {"domain": "d", "commands": 1, "batches": 0, "audit_rows": 1, "replies": 0},
            {"domain": "(replies)", "commands": 0, "batches": 0, "audit_rows": 0, "replies": 0},
        ],
    }
    kept = await cli("prune", dsn=triobus_dsn)  # the default: older than 7 days
    assert kept.stdout.splitlines()[:3] == [
        "removed:",
        "DOMAIN     COMMANDS  BATCHES  AUDIT_ROWS  REPLIES",
        "d          0         0        0           0",
    ]
    removed = await cli("prune", "--older-than", "36h", "--domain", "d", dsn=triobus_dsn)
    assert removed.stdout.splitlines()[2].split() == ["d", "1", "0", "1", "0"]
    assert await triobus_runtime.bus.get_command("d", old.command_id) is None
    assert len(await triobus_runtime.bus.query_commands()) == 1


async def test_migrate_says_the_version_it_leaves(
    triobus_server: SessionServer, triobus_dsn: str
) -> None:
    version = len(available_migrations())
    result = await cli("migrate", "--json", dsn=triobus_dsn)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"applied": [], "version": version}
    again = await cli("migrate", dsn=triobus_dsn)
    assert again.stdout.strip() == f"schema already at version {version}"
    name = f"triobus_fresh_{uuid.uuid4().hex[:8]}"
    fresh = await create_database(triobus_server.admin_dsn, name)
    try:
        applied = await cli("migrate", dsn=fresh)
        versions = ", ".join(str(v) for v in range(1, version + 1))
        assert applied.stdout.strip() == f"schema at version {version} (applied {versions})"
    finally:
        await drop_database(triobus_server.admin_dsn, name)


async def test_stats_and_command_list_show_the_queue(
    triobus_runtime: Runtime, triobus_dsn: str, parked: list[uuid.UUID]
) -> None:
    waiting = await triobus_runtime.bus.send("e", "Later", uuid.uuid4(), {"n": 3})
    everything = json.loads((await cli("stats", "--json", dsn=triobus_dsn)).stdout)
    by_domain = {s["domain"]: s for s in everything}
    assert set(by_domain) == {"d", "e"}
    assert by_domain["d"]["in_troubleshooting_queue"] == 2
    assert by_domain["d"]["oldest_pending_seconds"] is None
    assert by_domain["e"]["pending"] == 1 and by_domain["e"]["oldest_pending_seconds"] >= 0
    one = await cli("stats", "e", dsn=triobus_dsn)
    header, row = one.stdout.strip().splitlines()
    assert header.split()[:3] == ["DOMAIN", "PENDING", "IN_PROGRESS"]
    assert row.split()[:2] == ["e", "1"]

    listed = await cli(
        "command",
        "list",
        "--domain",
        "d",
        "--status",
        "IN_TROUBLESHOOTING_QUEUE",
        "--json",
        dsn=triobus_dsn,
    )
    assert {c["command_id"] for c in json.loads(listed.stdout)} == {str(i) for i in parked}
    table = await cli("command", "list", dsn=triobus_dsn)
    assert table.stdout.splitlines()[0].split()[:3] == ["DOMAIN", "COMMAND_ID", "COMMAND_TYPE"]
    assert str(waiting.command_id) in table.stdout


def test_batch_watch_says_when_only_operators_can_finish_the_batch() -> None:
    now = datetime.now(UTC)
    batch = BatchMetadata(
        domain="d",
        batch_id=uuid.uuid4(),
        name=None,
        custom_data=None,
        status=BatchStatus.IN_PROGRESS,
        total_count=10,
        completed_count=8,
        failed_count=0,
        canceled_count=0,
        in_troubleshooting_count=2,
        created_at=now,
        started_at=now,
        completed_at=None,
    )
    line = progress_line(batch, 0.0)
    assert "waiting for an operator: 2 in the troubleshooting queue" in line
    assert "ETA" not in line
    running = attrs.evolve(batch, in_troubleshooting_count=1)
    assert "ETA" in progress_line(running, 0.0)  # one is still to run


async def test_worker_runs_until_sigterm(
    triobus_runtime: Runtime, triobus_dsn: str, tmp_path: Path, eventually: Callable[..., Any]
) -> None:
    (tmp_path / "cli_app.py").write_text(
        "from triobus.actors import HandlerRegistry\n"
        "registry = HandlerRegistry()\n"
        "@registry.handler('d', 'Hello')\n"
        "async def hello(command, ctx):\n"
        "    return {'hello': command.data['name']}\n"
    )
    python_path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRIOBUS_DSN": triobus_dsn, "PYTHONPATH": python_path}
    process = await trio.lowlevel.open_process(
        [
            *(TRIOBUS, "worker", "--app", "cli_app:registry", "--domain", "d"),
            *("--concurrency", "2", "--prefetch", "2"),
        ],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        banner = b""
        with trio.fail_after(30):
            while b"running" not in banner:
                chunk = await process.stderr.receive_some()
                assert chunk, banner
                banner += chunk
        sent = await triobus_runtime.bus.send("d", "Hello", uuid.uuid4(), {"name": "cli"})

        async def completed() -> bool:
            command = await triobus_runtime.bus.get_command("d", sent.command_id)
            return command is not None and command.result == {"hello": "cli"}

        await eventually(completed)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
