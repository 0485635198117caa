"""Faults during a batch: worker processes SIGKILLed, PostgreSQL restarted, backends
terminated. Nothing lost, nothing doubled, the callback exactly once, each follow-up
command once if its event happened and never otherwise; the long version is
tests/soak/campaign.py (see docs/RELIABILITY.md)."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator

import pytest

from tests.soak.campaign import (
    TrialResult,
    fresh_database,
    restart_trial,
    sigkill_trial,
    terminate_trial,
)
from triobus.persistence.embedded import EmbeddedCluster, open_embedded_cluster


@pytest.fixture
async def cluster() -> AsyncIterator[EmbeddedCluster]:
    """A cluster of this test's own, since it gets restarted."""
    async with open_embedded_cluster(settings={"fsync": "off"}) as cluster:
        yield cluster


def assert_exactly_once(result: TrialResult) -> None:
    assert result.problems == []
    assert result.callbacks == 1


async def test_worker_processes_sigkilled_mid_batch(triobus_dsn: str) -> None:
    result = await sigkill_trial(triobus_dsn, 400, 3, random.Random(7), failures=True)
    assert_exactly_once(result)
    assert result.redelivered > 0  # the kills hit claimed commands


async def test_postgresql_restarted_mid_batch_logs_one_line_per_outage(
    cluster: EmbeddedCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="triobus")
    async with fresh_database(cluster.dsn) as dsn:
        result = await restart_trial(cluster, dsn, 1000, 1, random.Random(7))
    assert_exactly_once(result)
    outage_lines = [r for r in caplog.records if "database unavailable" in r.getMessage()]
    assert len(outage_lines) == result.outages_logged == 1
    assert sum("reachable again" in r.getMessage() for r in caplog.records) == 1


async def test_backends_terminated_repeatedly_mid_batch(triobus_dsn: str) -> None:
    result = await terminate_trial(triobus_dsn, 1000, 4, random.Random(7), failures=True)
    assert_exactly_once(result)
