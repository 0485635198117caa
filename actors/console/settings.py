"""Who may use the web console and what it shows: credentials, read-only, hidden payloads.

The console is closed by default: `ConsoleSettings` refuses to exist without a user, a
token or an explicit `no_auth=True` (and `triobus web` allows `--no-auth` only on a
loopback address). Passwords and tokens are never logged nor shown; `repr` hides them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import attrs

from triobus.persistence.errors import ValidationError
from triobus.persistence.validation import check_name, check_text

USER_ENV = "TRIOBUS_WEB_USER"
PASSWORD_ENV = "TRIOBUS_WEB_PASSWORD"
USERS_FILE_ENV = "TRIOBUS_WEB_USERS_FILE"
TOKEN_ENV = "TRIOBUS_WEB_TOKEN"
TOKEN_OPERATOR_ENV = "TRIOBUS_WEB_TOKEN_OPERATOR"
DEFAULT_TOKEN_OPERATOR = "api"
NO_AUTH_OPERATOR = "console"


def _users(value: Mapping[str, str]) -> dict[str, str]:
    users = dict(value)
    for name, password in users.items():
        check_text("user name", name, max_length=200, context="the console's users")
        if ":" in name:
            raise ValidationError(f"user name {name!r} must not contain ':' (the console's users)")
        if not isinstance(password, str) or not password:
            raise ValidationError(f"user {name!r} needs a non-empty password")
    return users


def _tokens(value: Mapping[str, str]) -> dict[str, str]:
    tokens = dict(value)
    for token, operator in tokens.items():
        if not isinstance(token, str) or len(token) < 16 or not token.isprintable():
            raise ValidationError("a console token must be at least 16 printable characters")
        check_text("token operator", operator, max_length=200, context="the console's tokens")
    return tokens


def _domains(value: Iterable[str]) -> frozenset[str]:
    return frozenset(check_name("domain", d) for d in value)


def _origins(value: Iterable[str]) -> frozenset[str]:
    origins = set()
    for origin in value:
        parts = urlsplit(origin) if isinstance(origin, str) else None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
        ):
            raise ValidationError(
                f"an origin is scheme://host[:port], such as https://ops.example.com,"
                f" not {origin!r}"
            )
        origins.add(f"{parts.scheme}://{parts.netloc}".lower())
    return frozenset(origins)


@attrs.frozen
class ConsoleSettings:
    """`users` (name → password) log in with HTTP basic auth; `tokens` (token → the
    operator it acts as) with `Authorization: Bearer`. The name is the `operator` of
    every action in the audit trail. `read_only` refuses every action. The payloads of
    `hidden_payload_domains` are never shown: their commands' data, results, error
    messages and details, their audit events' details (but for who acted, the attempt and
    error types and codes) and their replies' data. Actions are accepted from the
    console's own origin (the request's scheme and `Host`) and from `origins`, such as
    `https://ops.example.com` for a console behind a proxy that rewrites `Host`."""

    users: dict[str, str] = attrs.field(factory=dict, converter=_users, repr=False)
    tokens: dict[str, str] = attrs.field(factory=dict, converter=_tokens, repr=False)
    no_auth: bool = False
    read_only: bool = False
    hidden_payload_domains: frozenset[str] = attrs.field(
        default=frozenset(),
        converter=_domains,
    )
    origins: frozenset[str] = attrs.field(default=frozenset(), converter=_origins)
    page_size: int = 50
    live_interval: float = 1.0  # seconds between the live pages' checks for changes

    def __attrs_post_init__(self) -> None:
        if not (self.users or self.tokens or self.no_auth):
            raise ValidationError(
                "the console needs credentials: a user and password"
                f" (${USER_ENV} and ${PASSWORD_ENV}, or a users file), a token"
                f" (${TOKEN_ENV}), or no_auth=True (--no-auth) on a loopback address"
            )
        if self.no_auth and (self.users or self.tokens):
            raise ValidationError(
                "no_auth (--no-auth) contradicts the users and tokens configured: drop one"
            )
        if not 1 <= self.page_size <= 1000:
            raise ValidationError(f"page_size must be 1..1000, not {self.page_size!r}")
        if not 0 < self.live_interval <= 60:
            raise ValidationError(
                f"live_interval must be 0..60 seconds, not {self.live_interval!r}"
            )

    def shows_payloads_of(self, domain: str) -> bool:
        return domain not in self.hidden_payload_domains


def read_users_file(path: str | Path) -> dict[str, str]:
    """Users from a file of `name:password` lines (blank lines and `#` comments skipped).
    The file must not be readable by group or others, as an SSH key must not."""
    file = Path(path)
    try:
        mode = file.stat().st_mode
        text = file.read_text(encoding="utf-8")
    except OSError as ex:
        raise ValidationError(f"cannot read the users file {str(file)!r}: {ex.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValidationError(
            f"the users file {str(file)!r} is open to group or others: chmod 600 it"
        )
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, password = line.partition(":")
        if not colon or not name or not password:
            raise ValidationError(
                f"line {number} of the users file {str(file)!r} is not name:password"
            )
        users[name] = password
    if not users:
        raise ValidationError(f"the users file {str(file)!r} names no user")
    return users


def credentials_from_environment(
    environ: Mapping[str, str] | None = None, *, users_file: str | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """The users and tokens that the environment (or `users_file`) configures."""
    env = os.environ if environ is None else environ
    users: dict[str, str] = {}
    user, password = env.get(USER_ENV), env.get(PASSWORD_ENV)
    if bool(user) != bool(password):
        raise ValidationError(f"set both ${USER_ENV} and ${PASSWORD_ENV}, or neither")
    if user and password:
        users[user] = password
    file = users_file or env.get(USERS_FILE_ENV)
    if file:
        users.update(read_users_file(file))
    tokens: dict[str, str] = {}
    token = env.get(TOKEN_ENV)
    if token:
        tokens[token] = env.get(TOKEN_OPERATOR_ENV) or DEFAULT_TOKEN_OPERATOR
    return users, tokens
