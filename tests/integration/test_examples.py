"""The examples are runnable documentation: run each as a user would, on the test database."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio

EXAMPLES = Path(__file__).parents[2] / "examples"


async def run_example(name: str, dsn: str) -> str:
    result = await trio.run_process(
        [sys.executable, str(EXAMPLES / name)],
        env={**os.environ, "TRIOBUS_DSN": dsn},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def test_quickstart_prints_the_audit_trail(triobus_dsn: str) -> None:
    out = await run_example("quickstart.py", triobus_dsn)
    assert "idempotent send: command" in out
    assert out.count("SENT") == 2


async def test_batch_callback_example_fires_only_after_the_operator_acts(triobus_dsn: str) -> None:
    out = await run_example("batch_callback.py", triobus_dsn)
    waiting, canceled, fired = out.splitlines()[:3]
    assert "batch IN_PROGRESS" in waiting and "callback fired: False" in waiting
    assert canceled.startswith("operator cancels")
    assert "COMPLETED_WITH_FAILURES: completed=4 failed=0 canceled=1 of 5" in fired
    assert out.count("BATCH_COMPLETED") == 1
    assert out.splitlines()[-2:] == [
        "follow-up ON_COMPLETE: ImportReport ran once, when the batch was COMPLETED_WITH_FAILURES",
        "follow-up ON_FAILURE: AlertOps ran once, when the batch was IN_PROGRESS",
    ]


async def test_worker_example_runs_every_outcome(triobus_dsn: str) -> None:
    out = await run_example("worker.py", triobus_dsn)
    assert "PlaceOrder  COMPLETED" in out
    assert "PlaceOrder  FAILED" in out
    assert "ChargeCard  COMPLETED attempts=3" in out
    assert "reply FAILED" in out


@pytest.mark.parametrize("example", ["producer_sync.py", "producer_asyncio.py"])
async def test_a_producer_outside_trio_feeds_a_trio_worker_process(
    example: str, triobus_dsn: str
) -> None:
    out = await run_example(example, triobus_dsn)
    assert out.splitlines() == [
        "order for book and its command: committed together",
        "payment for lamp declined: neither the order nor its command was stored",
        "a batch of 2 pens: committed",
        "worker: book COMPLETED",
        "worker: pen 1 COMPLETED",
        "worker: pen 2 COMPLETED",
    ]
