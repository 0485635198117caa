"""Options records are checked when built: a worker, runtime or driver cannot be built
around the checks of `start_worker` and `open_runtime`."""

from __future__ import annotations

from typing import Any

import pytest

from triobus.actors import DriverKind, HandlerRegistry, RuntimeOptions, ValidationError
from triobus.actors.worker import WorkerOptions
from triobus.persistence.driver import DriverOptions

BAD_WORKER_OPTIONS = [
    ({"domain": "a b"}, r"domain 'a b' may only contain"),
    ({"concurrency": 0}, r"concurrency must be between 1 and 10000, got 0 \(worker of domain 'd"),
    ({"prefetch": -1}, r"prefetch must be between 0 and 10000"),
    ({"visibility_timeout": 0}, r"visibility_timeout must be a number of seconds > 0"),
    ({"retry_policy": 3}, r"retry_policy must be a RetryPolicy, got int"),
    ({"handler_timeout": float("inf")}, r"handler_timeout must be a number of seconds"),
    ({"poll_interval": "1"}, r"poll_interval must be a number of seconds"),
    ({"heartbeat_interval": 30.0}, r"heartbeat_interval \(30.0 s\) must be shorter"),
    ({"grace_period": -1}, r"grace_period must be a number of seconds"),
    ({"max_result_bytes": 0}, r"max_result_bytes must be between 1 and \d+, got 0 \(worker"),
]


@pytest.mark.parametrize(("options", "message"), BAD_WORKER_OPTIONS)
def test_worker_options_refuse_bad_values(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WorkerOptions(**{"domain": "d", **options})


def test_worker_options_default_the_heartbeat_to_a_third_of_the_lease() -> None:
    assert WorkerOptions(domain="d", visibility_timeout=9.0).effective_heartbeat_interval == 3.0
    assert WorkerOptions(domain="d", heartbeat_interval=1.0).effective_heartbeat_interval == 1.0


BAD_RUNTIME_OPTIONS = [
    ({"registry": {}}, r"registry must be a HandlerRegistry, got dict"),
    ({"migrate": 1}, r"migrate must be a bool"),
    ({"driver": "asyncio"}, r"driver 'asyncio' is not one of native, thread"),
    ({"pool_size": 0}, r"pool_size must be between 1 and 1000"),
    ({"max_payload_bytes": 2**40}, r"max_payload_bytes must be between"),
    ({"batch_callback_timeout": 0}, r"batch_callback_timeout must be a number of seconds"),
    ({"batch_reconcile_interval": None}, r"batch_reconcile_interval must be a number"),
]


@pytest.mark.parametrize(("options", "message"), BAD_RUNTIME_OPTIONS)
def test_runtime_options_refuse_bad_values(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RuntimeOptions(**options)


def test_runtime_options_take_a_driver_by_name() -> None:
    options = RuntimeOptions(driver="thread", registry=HandlerRegistry())
    assert options.driver is DriverKind.THREAD


@pytest.mark.parametrize("field", ["cancel_grace", "rollback_timeout", "thread_wait_slice"])
def test_driver_options_refuse_bad_durations(field: str) -> None:
    with pytest.raises(ValidationError, match=rf"{field} must be a number of seconds"):
        DriverOptions(**{field: 0})
