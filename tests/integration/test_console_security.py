"""The console is closed by default: credentials or nothing, POST from its own pages
only (CSRF), a read-only mode, and the operator's name, never a secret, on record."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.console_support import (
    ORIGIN,
    PASSWORD,
    USER,
    Parker,
    basic,
    console_client,
)
from triobus.actors import AuditEventType, CommandStatus, Runtime, ValidationError
from triobus.actors.console import ConsoleSettings, check_bind, credentials_from_environment

TOKEN = "t0ken-for-the-deploy-bot-" + "x" * 8


@pytest.fixture
async def parker(triobus_runtime: Runtime, eventually: Callable[..., Any]) -> Parker:
    parker = Parker(triobus_runtime, eventually)
    await parker.start()
    return parker


def test_the_console_refuses_to_exist_without_credentials() -> None:
    with pytest.raises(ValidationError, match="the console needs credentials"):
        ConsoleSettings()
    with pytest.raises(ValidationError, match="contradicts"):
        ConsoleSettings(users={USER: PASSWORD}, no_auth=True)
    with pytest.raises(ValidationError, match="at least 16"):
        ConsoleSettings(tokens={"short": "bot"})
    with pytest.raises(ValidationError, match="non-empty password"):
        ConsoleSettings(users={USER: ""})
    assert PASSWORD not in repr(ConsoleSettings(users={USER: PASSWORD}))


@pytest.mark.parametrize(
    "authorization",
    [None, basic(USER, "wrong"), basic("mallory", PASSWORD), "Basic !!!", "Bearer " + "y" * 30],
    ids=["none", "wrong-password", "unknown-user", "garbage", "unknown-token"],
)
async def test_every_page_but_healthz_needs_credentials(
    triobus_runtime: Runtime, authorization: str | None
) -> None:
    settings = ConsoleSettings(users={USER: PASSWORD}, tokens={TOKEN: "bot"})
    async with console_client(triobus_runtime, settings, auth=authorization or "") as client:
        for path in ("/", "/commands", "/tsq", "/batches", "/replies", "/metrics", "/live"):
            response = await client.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Basic realm=")
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/static/console.css")).status_code == 200


async def test_a_bearer_token_acts_as_its_operator_without_an_origin(
    triobus_runtime: Runtime, parker: Parker
) -> None:
    parked = await parker.park()
    settings = ConsoleSettings(tokens={TOKEN: "deploy-bot"})
    async with console_client(triobus_runtime, settings, auth=f"Bearer {TOKEN}") as client:
        del client.headers["Origin"]  # not a browser
        assert "deploy-bot" in (await client.get("/")).text
        response = await client.post(f"/tsq/d/{parked}/cancel", data={"reason": "scripted"})
    assert response.status_code == 303
    trail = await triobus_runtime.bus.get_audit_trail(parked, "d")
    cancel = [e for e in trail if e.event_type == AuditEventType.OPERATOR_CANCEL]
    assert [e.details and e.details["operator"] for e in cancel] == ["deploy-bot"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "https://console.test"},  # the same host by another scheme
        {"Origin": "null"},
        {"Origin": "http://console.test.evil.example"},
        {"Referer": "https://evil.example/console.test/tsq"},
        {},
    ],
    ids=[
        "foreign-origin",
        "other-scheme",
        "null-origin",
        "lookalike-origin",
        "foreign-referer",
        "neither",
    ],
)
async def test_an_action_from_another_site_is_refused_and_changes_nothing(
    triobus_runtime: Runtime, parker: Parker, headers: dict[str, str]
) -> None:
    parked = await parker.park()
    async with console_client(triobus_runtime) as client:
        del client.headers["Origin"]
        response = await client.post(
            f"/tsq/d/{parked}/cancel", data={"reason": "csrf"}, headers=headers
        )
    assert response.status_code == 403 and "did not come from the console" in response.text
    assert await parker.status(parked) == CommandStatus.IN_TROUBLESHOOTING_QUEUE


async def test_an_action_with_the_consoles_own_referer_is_allowed(
    triobus_runtime: Runtime, parker: Parker
) -> None:
    parked = await parker.park()
    async with console_client(triobus_runtime) as client:
        del client.headers["Origin"]
        response = await client.post(
            f"/tsq/d/{parked}/cancel",
            data={"reason": "ok"},
            headers={"Referer": f"{ORIGIN}/commands/d/{parked}"},
        )
    assert response.status_code == 303
    assert await parker.status(parked) == CommandStatus.CANCELED


async def test_actions_must_be_posts(triobus_runtime: Runtime, parker: Parker) -> None:
    parked = await parker.park()
    async with console_client(triobus_runtime) as client:
        assert (await client.get(f"/tsq/d/{parked}/cancel")).status_code == 405
        deleted = await client.request("DELETE", f"/tsq/d/{parked}/cancel")
        assert deleted.status_code == 405
    assert await parker.status(parked) == CommandStatus.IN_TROUBLESHOOTING_QUEUE


async def test_read_only_shows_no_actions_and_refuses_them(
    triobus_runtime: Runtime, parker: Parker
) -> None:
    parked = await parker.park()
    batch_id = await triobus_runtime.bus.create_batch("d", [], open=True)
    settings = ConsoleSettings(users={USER: PASSWORD}, read_only=True)
    async with console_client(triobus_runtime, settings) as client:
        for path in (f"/commands/d/{parked}", "/tsq?domain=d", f"/batches/d/{batch_id}"):
            page = (await client.get(path)).text
            assert 'method="post"' not in page and "read-only" in page, path
        response = await client.post(f"/tsq/d/{parked}/cancel", data={"reason": "no"})
        assert response.status_code == 403 and "read-only" in response.text
        closing = await client.post(f"/batches/d/{batch_id}/close")
        assert closing.status_code == 403
    assert await parker.status(parked) == CommandStatus.IN_TROUBLESHOOTING_QUEUE


async def test_no_auth_acts_as_console_and_serves_only_loopback(
    triobus_runtime: Runtime, parker: Parker
) -> None:
    parked = await parker.park()
    settings = ConsoleSettings(no_auth=True)
    async with console_client(triobus_runtime, settings, auth="", origin=ORIGIN) as rebound:
        # A page of console.test whose name now points at 127.0.0.1 (DNS rebinding).
        assert (await rebound.get("/")).status_code == 403
        refused = await rebound.post(f"/tsq/d/{parked}/cancel", data={"reason": "rebound"})
        assert refused.status_code == 403 and "not a loopback host" in refused.text
    local = "http://127.0.0.1:8080"
    async with console_client(triobus_runtime, settings, auth="", origin=local) as client:
        assert (await client.get("/")).status_code == 200
        response = await client.post(f"/tsq/d/{parked}/cancel", data={"reason": "local"})
    assert response.status_code == 303
    trail = await triobus_runtime.bus.get_audit_trail(parked, "d")
    assert [e.details and e.details.get("operator") for e in trail][-1] == "console"
    for bind in ("127.0.0.1:8080", "[::1]:0", "localhost:9000"):
        check_bind(bind, no_auth=True)
    for bind in ("0.0.0.0:8080", "10.1.2.3:80", "console.example:443", "[::]:8080"):
        with pytest.raises(ValidationError, match="--no-auth serves only a loopback"):
            check_bind(bind, no_auth=True)
        check_bind(bind, no_auth=False)
    for bad in ("8080", "host:", "host:http", "127.0.0.1:70000"):
        with pytest.raises(ValidationError, match="bind must be HOST:PORT"):
            check_bind(bad, no_auth=False)


def test_credentials_from_the_environment_and_a_users_file(tmp_path: Path) -> None:
    users, tokens = credentials_from_environment(
        {"TRIOBUS_WEB_USER": USER, "TRIOBUS_WEB_PASSWORD": PASSWORD, "TRIOBUS_WEB_TOKEN": TOKEN}
    )
    assert users == {USER: PASSWORD} and tokens == {TOKEN: "api"}
    with pytest.raises(ValidationError, match="set both"):
        credentials_from_environment({"TRIOBUS_WEB_USER": USER})
    file = tmp_path / "users"
    file.write_text("# operators\nbob:pw:with:colons\n\ncarol:🔑\n", encoding="utf-8")
    file.chmod(0o644)
    with pytest.raises(ValidationError, match="open to group or others: chmod 600"):
        credentials_from_environment({}, users_file=str(file))
    os.chmod(file, 0o600)
    users, tokens = credentials_from_environment({"TRIOBUS_WEB_USERS_FILE": str(file)})
    assert users == {"bob": "pw:with:colons", "carol": "🔑"} and tokens == {}
    file.write_text("no colon here\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="line 1 of the users file") as caught:
        credentials_from_environment({}, users_file=str(file))
    assert "no colon here" not in str(caught.value)  # it may be a password
    with pytest.raises(ValidationError, match="cannot read the users file"):
        credentials_from_environment({}, users_file=str(tmp_path / "missing"))


async def test_behind_a_proxy_actions_come_from_the_configured_origin(
    triobus_runtime: Runtime, parker: Parker
) -> None:
    """A proxy that rewrites Host: the console sees its own address, the browser sends the
    public origin, which the settings name."""
    parked = await parker.park()
    public = "https://ops.example.com"
    settings = ConsoleSettings(users={USER: PASSWORD}, origins=[public + "/"])
    async with console_client(triobus_runtime, settings, origin=public) as client:
        client.headers["Host"] = "127.0.0.1:8080"
        response = await client.post(f"/tsq/d/{parked}/cancel", data={"reason": "proxied"})
    assert response.status_code == 303
    with pytest.raises(ValidationError, match="an origin is scheme://host"):
        ConsoleSettings(users={USER: PASSWORD}, origins=["ops.example.com"])
    with pytest.raises(ValidationError, match="an origin is scheme://host"):
        ConsoleSettings(users={USER: PASSWORD}, origins=["https://ops.example.com/console"])


async def test_every_response_forbids_framing_and_caching(triobus_runtime: Runtime) -> None:
    async with console_client(triobus_runtime) as client:
        for response in (
            await client.get("/"),
            await client.get("/healthz"),
            await client.get("/nowhere"),
        ):
            assert response.headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["x-content-type-options"] == "nosniff"
    async with console_client(triobus_runtime, auth="") as anonymous:
        refused = await anonymous.get("/")
    assert refused.status_code == 401 and refused.headers["x-frame-options"] == "DENY"


async def test_only_healthz_itself_and_static_files_are_open(triobus_runtime: Runtime) -> None:
    async with console_client(triobus_runtime, auth="") as anonymous:
        for path in ("/healthz/x", "/healthzfoo", "/static", "/statics/x", "/commands/healthz/x"):
            assert (await anonymous.get(path)).status_code == 401, path
        assert (await anonymous.get("/static/console.js")).status_code == 200
