"""The least-privilege roles of README.md ("Security") are enough, and no more than enough."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from psycopg.conninfo import make_conninfo

from tests.integration.console_support import console_client
from triobus.actors import (
    BatchCommand,
    Command,
    CommandStatus,
    DatabaseError,
    FollowUpCommand,
    HandlerContext,
    HandlerRegistry,
    PermanentCommandError,
    open_runtime,
)
from triobus.actors.maintenance import Pruner, RetentionPolicy
from triobus.persistence.driver import connect
from triobus.persistence.errors import SchemaError
from triobus.persistence.gauges import refresh_gauges


async def test_producer_worker_and_operator_roles_suffice(
    role_dsns: dict[str, str], eventually: Callable[..., Any]
) -> None:
    registry = HandlerRegistry()

    @registry.handler("d", "Work")
    async def work(command: Command, ctx: HandlerContext) -> dict[str, int]:
        return {"n": command.data["n"]}

    @registry.handler("d", "Broken")
    async def broken(command: Command, ctx: HandlerContext) -> None:
        raise PermanentCommandError("BROKEN", "needs an operator")

    async with (
        open_runtime(role_dsns["producer"], migrate=False) as producer,
        open_runtime(role_dsns["worker"], migrate=False, registry=registry) as worker,
        open_runtime(role_dsns["operator"], migrate=False) as operator,
    ):
        bus = producer.bus
        done = await bus.send("d", "Work", uuid.uuid4(), {"n": 1}, reply_to="q")
        parked = await bus.send("d", "Broken", uuid.uuid4(), {"n": 2}, reply_to="q")
        batch_id = await bus.create_batch(
            "d", [BatchCommand("Work", uuid.uuid4(), {"n": n}) for n in range(3)], name="b"
        )
        # a batch filled over time by the producer, whose follow-up the worker writes
        filled = await bus.create_batch(
            "d",
            [],
            open=True,
            on_complete_command=FollowUpCommand(domain="d", command_type="Work", data={"n": 9}),
        )
        await bus.add_to_batch("d", filled, [BatchCommand("Work", uuid.uuid4(), {"n": 4})])
        assert await bus.close_batch("d", filled) is False
        doomed = await bus.create_batch("d", [BatchCommand("Work", uuid.uuid4(), {"n": 5})])
        assert await operator.bus.cancel_batch("d", doomed, reason="not wanted") == 1
        await worker.start_worker("d", poll_interval=0.05)
        # the worker runs a schedule (its ticks go to a domain nobody works)
        await worker.schedule("ticks", "clock", "Tick", "* * * * * *")

        async def ticked() -> bool:
            return bool(await bus.query_commands(domain="clock"))

        await eventually(ticked)
        # ... and keeps the metrics' database gauges
        async with worker.pool.connection() as conn:
            assert await refresh_gauges(conn, max_age=0)
        assert (await producer.wait_batch("d", batch_id, timeout=15)).completed_count == 3
        follow_up = (await producer.wait_batch("d", filled, timeout=15)).follow_ups[0]

        async def follow_up_done() -> bool:
            command = await bus.get_command("d", follow_up.command_id)
            return command is not None and command.status is CommandStatus.COMPLETED

        await eventually(follow_up_done)

        async def is_parked() -> bool:
            return await operator.tsq.count_troubleshooting("d") == 1

        await eventually(is_parked)
        await operator.tsq.operator_complete("d", parked.command_id, result_data={"by": "hand"})

        replies = await bus.read_replies("q")
        assert {r.command_id for r in replies} == {done.command_id, parked.command_id}
        assert await bus.ack_replies("q", [r.reply_id for r in replies]) == 2
        command = await bus.get_command("d", parked.command_id)
        assert command is not None and command.status is CommandStatus.COMPLETED
        assert len(await bus.get_audit_trail(parked.command_id, domain="d")) == 4
        assert len(await bus.query_commands(domain="d")) == 8

        # ... and no more: a producer cannot act as an operator nor declare a schedule,
        # an operator cannot acknowledge replies, a worker cannot create a batch.
        with pytest.raises(DatabaseError, match="permission denied"):
            await producer.tsq.retry_all("d")
        with pytest.raises(DatabaseError, match="permission denied"):
            await producer.bus.cancel_batch(
                "d", await bus.create_batch("d", [], open=True), reason="no"
            )
        with pytest.raises(DatabaseError, match="permission denied"):
            await operator.bus.ack_replies("q", [1])
        with pytest.raises(DatabaseError, match="permission denied"):
            await worker.bus.create_batch("d", [BatchCommand("Work", uuid.uuid4(), {})])
        with pytest.raises(DatabaseError, match="permission denied"):
            await producer.schedule("ticks", "clock", "Tick", "* * * * * *")

    # the maintainer prunes what is finished (whole batches too), and can do nothing else
    async with open_runtime(role_dsns["maintainer"], migrate=False, retention=None) as keeper:
        everything = RetentionPolicy(commands=1e-6, replies=1e-6)
        report = await Pruner(keeper.pool, everything).prune(wait=True)
        assert report.total.commands == 8 and report.total.batches == 3
        assert report.total.replies == 0  # acknowledged, so deleted already
        with pytest.raises(DatabaseError, match="permission denied"):
            await keeper.bus.send("d", "Work", uuid.uuid4(), {})
        with pytest.raises(DatabaseError, match="permission denied"):
            await keeper.tsq.retry_all("d")


async def test_the_operator_role_runs_the_web_console(
    role_dsns: dict[str, str], eventually: Callable[..., Any]
) -> None:
    registry = HandlerRegistry()

    @registry.handler("d", "Broken")
    async def broken(command: Command, ctx: HandlerContext) -> None:
        raise PermanentCommandError("BROKEN", "needs an operator")

    async with (
        open_runtime(role_dsns["producer"], migrate=False) as producer,
        open_runtime(role_dsns["worker"], migrate=False, registry=registry) as worker,
        open_runtime(role_dsns["operator"], migrate=False, retention=None) as operator,
        console_client(operator) as console,
    ):
        parked = await producer.bus.send("d", "Broken", uuid.uuid4(), {}, reply_to="q")
        batch_id = await producer.bus.create_batch("d", [], open=True)
        await worker.start_worker("d", poll_interval=0.05)

        async def is_parked() -> bool:
            return await operator.tsq.count_troubleshooting("d") == 1

        await eventually(is_parked)
        for path in (
            "/",
            "/commands?domain=d",
            f"/commands/d/{parked.command_id}",
            "/tsq?domain=d",
            "/batches?domain=d",
            f"/batches/d/{batch_id}",
            "/replies?queue=q",
            "/metrics",
        ):
            assert (await console.get(path)).status_code == 200, path
        overview = (await console.get("/")).text
        assert '<a href="/tsq?domain=d">1</a>' in overview  # it refreshed the gauges
        cancel = await console.post(
            f"/tsq/d/{parked.command_id}/cancel", data={"reason": "by the console"}
        )
        assert cancel.status_code == 303
        assert (await console.post(f"/batches/d/{batch_id}/close")).status_code == 303


async def test_a_role_that_may_not_migrate_is_told_to_start_without_migrating(
    role_dsns: dict[str, str],
) -> None:
    with pytest.raises(SchemaError) as raised:
        async with open_runtime(role_dsns["worker"], migrate=True):
            pass
    message = str(raised.value)
    assert message.startswith("migrating the schema was refused (permission denied")
    assert message.endswith(
        ": run `triobus migrate` as the role that owns the schema, and open this runtime"
        " without migrating (migrate=False; triobus worker --no-migrate)"
    )


async def test_a_role_that_may_not_read_the_schema_version_is_told_the_grant(
    triobus_dsn: str,
) -> None:
    role = f"triobus_blind_{uuid.uuid4().hex[:8]}"
    admin = await connect(triobus_dsn)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")  # a generated name
        await admin.execute(f"GRANT USAGE ON SCHEMA triobus TO {role}")
        with pytest.raises(SchemaError, match=r"GRANT SELECT ON triobus\.schema_version to it"):
            async with open_runtime(make_conninfo(triobus_dsn, user=role), migrate=False):
                pass
    finally:
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()
