"""DSN passwords are never shown: not in a log record (DEBUG included), an exception chain
or CLI output, for DSNs that cannot connect or cannot be parsed, with both drivers."""

from __future__ import annotations

import logging
import traceback

import pytest

from tests.integration.bad_input.cases import cli
from triobus.actors import DatabaseUnavailableError, ValidationError, open_runtime
from triobus.persistence.driver import DriverKind
from triobus.persistence.pool import open_pool
from triobus.persistence.validation import check_dsn

PASSWORD = "s3cret-pa55"
UNREACHABLE = f"postgresql://u:{PASSWORD}@127.0.0.1:1/db"
MALFORMED = [
    f"postgresql://u:{PASSWORD}@[::1/db",  # libpq quotes the whole URI
    f"postgresql://u:{PASSWORD}%zz@h/db",  # ... the bad token
    f"{PASSWORD}",  # ... a word without "="
    f"host=h password={PASSWORD} oops",
]


def shown(ex: BaseException) -> str:
    """Everything a user could see of an exception: message, chain and traceback."""
    return "".join(traceback.format_exception(ex))


def logged(caplog: pytest.LogCaptureFixture) -> str:
    handler = logging.Handler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    return "\n".join(handler.format(record) for record in caplog.records)


@pytest.mark.parametrize("driver", list(DriverKind))
@pytest.mark.parametrize("dsn", [UNREACHABLE, *MALFORMED])
async def test_dsn_passwords_are_never_logged_nor_in_errors(
    caplog: pytest.LogCaptureFixture, dsn: str, driver: DriverKind
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises((DatabaseUnavailableError, ValidationError)) as info:
        async with open_runtime(dsn, driver=driver):
            raise AssertionError("the runtime opened")
    assert PASSWORD not in shown(info.value)
    assert PASSWORD not in logged(caplog)


async def _borrow_one(dsn: str, driver: DriverKind) -> None:
    async with open_pool(dsn, driver=driver, connect_timeout=0.3) as pool, pool.connection():
        raise AssertionError("connected")


@pytest.mark.parametrize("driver", list(DriverKind))
async def test_pool_retries_do_not_log_the_password(
    caplog: pytest.LogCaptureFixture, driver: DriverKind
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DatabaseUnavailableError) as info:
        await _borrow_one(UNREACHABLE, driver)
    assert "could not connect after" in str(info.value)
    assert any("retrying with back-off" in r.getMessage() for r in caplog.records)
    assert PASSWORD not in shown(info.value)
    assert PASSWORD not in logged(caplog)


@pytest.mark.parametrize("how", ["option", "environment"])
@pytest.mark.parametrize("dsn", [UNREACHABLE, *MALFORMED])
async def test_cli_never_prints_the_password(dsn: str, how: str) -> None:
    args = ("--dsn", dsn) if how == "option" else ()
    result = await cli(*args, "tsq", "count", "d", dsn=dsn if how == "environment" else None)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stderr + result.stdout


@pytest.mark.parametrize("dsn", MALFORMED)
def test_dsn_check_never_quotes_the_dsn(dsn: str) -> None:
    with pytest.raises(ValidationError, match="not shown: it may contain a password") as info:
        check_dsn(dsn)
    assert PASSWORD not in shown(info.value)
