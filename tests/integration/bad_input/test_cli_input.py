"""Bad input for the `triobus` CLI, run as a real subprocess: exit status 1 (2 for usage
errors), one line on stderr, no traceback, nothing on stdout and nothing written."""

from __future__ import annotations

import pytest

from tests.integration.bad_input.cases import INJECTION, UNICODE, Seed, cli, snapshot
from triobus.actors import Runtime

CLI_CASES = [
    pytest.param(("tsq", "list", INJECTION), 1, "may only contain", id="tsq_list-quotes"),
    pytest.param(("tsq", "count", ""), 1, "domain must not be empty", id="tsq_count-empty"),
    pytest.param(("tsq", "count", "x" * 100_000), 1, "100000 characters long", id="count-huge"),
    pytest.param(("tsq", "count", UNICODE), 1, "may only contain", id="tsq_count-unicode"),
    pytest.param(("tsq", "count", "d", "--type", "T;"), 1, "command_type", id="tsq_count-type"),
    pytest.param(("tsq", "list", "d", "--limit", "0"), 1, "limit must be", id="list-limit-range"),
    pytest.param(("tsq", "list", "d", "--limit", "ten"), 2, "invalid int value", id="limit-type"),
    pytest.param(("tsq", "list", "d", "--offset", "-1"), 1, "offset must", id="offset-range"),
    pytest.param(("tsq", "list", "d", "--offset", str(2**63)), 1, "offset must", id="offset-huge"),
    pytest.param(("tsq", "retry", "d", "<unknown>'--"), 1, "must be a UUID", id="retry-uuid"),
    pytest.param(
        ("tsq", "retry", "e", "<parked>"),
        1,
        "<parked> not found in domain 'e'",
        id="retry-other-domain",
    ),
    pytest.param(
        ("tsq", "retry", "d", "<pending>"),
        1,
        "is PENDING, not in the troubleshooting",
        id="retry-wrong-state",
    ),
    pytest.param(
        ("tsq", "cancel", "d", "<parked>", "--reason", " "),
        1,
        "reason must not be empty",
        id="cancel-reason-empty",
    ),
    pytest.param(
        ("tsq", "cancel", "d", "<parked>"),
        2,
        "arguments are required: --reason",
        id="cancel-reason-missing",
    ),
    pytest.param(
        ("tsq", "complete", "d", "<parked>", "--result", '{"x": NaN}'),
        1,
        "not JSON-serialisable",
        id="complete-result-nan",
    ),
    pytest.param(
        ("tsq", "complete", "d", "<parked>", "--result", "[1]"),
        1,
        "must be a JSON object",
        id="complete-result-list",
    ),
    pytest.param(
        ("tsq", "complete", "d", "<parked>", "--result", "[" * 100_000),
        2,
        "nested too deeply",
        id="complete-result-deep",
    ),
    pytest.param(
        ("tsq", "complete", "d", "<parked>", "--operator", "a\tb"),
        1,
        "control characters",
        id="complete-operator-control",
    ),
    pytest.param(
        ("tsq", "retry-all", "d", "--operator", ""),
        1,
        "operator must not be empty",
        id="retry_all-operator-empty",
    ),
    pytest.param(
        ("tsq", "cancel-all", "d'", "--reason", "r"), 1, "may only contain", id="cancel_all-quotes"
    ),
    pytest.param(
        ("batch", "cancel", "d", "x;y", "--reason", "r"),
        1,
        "batch_id must be a UUID",
        id="batch_cancel-uuid",
    ),
    pytest.param(
        ("batch", "cancel", "d", "<batch>", "--reason", "r" * 1001),
        1,
        "reason is 1001 characters long",
        id="batch_cancel-reason-huge",
    ),
    pytest.param(
        ("batch", "retry", "d", "<unknown>"),
        1,
        "batch <unknown> not found in domain 'd'",
        id="batch_retry-unknown",
    ),
    pytest.param(
        ("batch", "close", "d", "<batch>"),
        1,
        "batch <batch> in domain 'd' is closed: close does not apply",
        id="batch_close-closed",
    ),
    pytest.param(
        ("prune", "--older-than", "soon"), 2, "is not a duration", id="prune-older_than-text"
    ),
    pytest.param(
        ("prune", "--older-than=-1d"), 2, "of zero or more", id="prune-older_than-negative"
    ),
    pytest.param(("prune", "--domain", "a b"), 1, "may only contain", id="prune-domain"),
    pytest.param(
        ("command", "show", "d", "x;y"), 1, "command_id must be a UUID", id="command_show-uuid"
    ),
    pytest.param(
        ("batch", "list", "d", "--status", "DONE"), 1, "is not one of", id="batch_list-status"
    ),
    pytest.param(
        ("batch", "show", "e", "<batch>"),
        1,
        "<batch> not found in domain 'e'",
        id="batch_show-other-domain",
    ),
    pytest.param(
        ("batch", "watch", "d", "<batch>", "--interval", "nan"),
        2,
        "--interval must be a number of seconds",
        id="batch_watch-interval-nan",
    ),
    pytest.param(
        ("batch", "watch", "d", "<batch>", "--interval", "0"),
        2,
        "--interval must be a number of seconds",
        id="batch_watch-interval-zero",
    ),
    pytest.param(("replies", "read", "q q"), 1, "may only contain", id="replies_read-space"),
    pytest.param(
        ("replies", "read", "q", "--limit", "-5"), 1, "limit must be", id="replies_read-limit"
    ),
    pytest.param(("tsq", "explode", "d"), 2, "invalid choice", id="unknown-action"),
    pytest.param(
        ("--dsn", "flavour=mint", "tsq", "count", "d"),
        1,
        "dsn is not a valid PostgreSQL connection string",
        id="dsn-invalid",
    ),
]


@pytest.mark.parametrize(("args", "status", "message"), CLI_CASES)
async def test_cli_bad_input_is_one_line_and_writes_nothing(
    runtime: Runtime, seed: Seed, shared_dsn: str, args: tuple[str, ...], status: int, message: str
) -> None:
    before = await snapshot(runtime.pool)
    result = await cli(*(seed.fill(arg) for arg in args), dsn=shared_dsn)
    assert result.returncode == status, result.stderr
    assert seed.fill(message) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert await snapshot(runtime.pool) == before
