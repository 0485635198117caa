"""The console's gate, an ASGI middleware: who is asking, and may this request act.

Every request but `/healthz` and `/static/` must authenticate (HTTP basic auth, or a
bearer token), unless the settings say `no_auth`. The operator's name is put in the
request's state (`request.state.operator`): the audit trail records it. A request that
changes state must be a POST; in read-only mode none is allowed; and unless it came with
a bearer token (which a browser never adds by itself), its `Origin` (or, lacking one,
its `Referer`) must name the console's own host: a page elsewhere cannot make an
operator's browser act (CSRF).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from triobus.actors.console.settings import NO_AUTH_OPERATOR, ConsoleSettings

OPEN_PATHS = ("/healthz", "/static/")
SAFE_METHODS = frozenset({"GET", "HEAD"})
_REALM = 'Basic realm="triobus console", charset="UTF-8"'
_NO_PASSWORD = b"\x00" * 32  # compared when the user is unknown, so both take as long


class ConsoleGate:
    def __init__(self, app: ASGIApp, settings: ConsoleSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"][len(scope.get("root_path", "")) :] or "/"
        if path.startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal, operator, by_token = self._authenticate(headers)
        if refusal is None and scope["method"] not in SAFE_METHODS:
            refusal = self._check_action(scope["method"], headers, by_token)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        scope.setdefault("state", {})["operator"] = operator
        await self.app(scope, receive, send)

    def _authenticate(self, headers: Headers) -> tuple[Response | None, str, bool]:
        """(a refusal or None, the operator, whether a bearer token authenticated)."""
        if self.settings.no_auth:
            return None, NO_AUTH_OPERATOR, False
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.settings.tokens:
            for token, operator in self.settings.tokens.items():
                if hmac.compare_digest(credentials.strip().encode(), token.encode()):
                    return None, operator, True
        elif scheme.lower() == "basic" and self.settings.users:
            user = self._basic_user(credentials.strip())
            if user is not None:
                return None, user, False
        challenge = {"WWW-Authenticate": _REALM} if self.settings.users else {}
        return PlainTextResponse("authentication required", 401, challenge), "", False

    def _basic_user(self, credentials: str) -> str | None:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        name, _, password = decoded.partition(":")
        expected = self.settings.users.get(name)
        matches = hmac.compare_digest(
            password.encode(), _NO_PASSWORD if expected is None else expected.encode()
        )
        return name if matches and expected is not None else None

    def _check_action(self, method: str, headers: Headers, by_token: bool) -> Response | None:
        if method != "POST":
            return PlainTextResponse("only POST changes anything", 405, {"Allow": "GET, POST"})
        if self.settings.read_only:
            return PlainTextResponse("this console is read-only", 403)
        if by_token:
            return None
        origin = headers.get("origin") or headers.get("referer")
        host = headers.get("host", "")
        if origin is None or origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
            return PlainTextResponse(
                "refused: this request did not come from the console's own pages", 403
            )
        return None
