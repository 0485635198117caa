"""The console's gate, an ASGI middleware: who is asking, and may this request act.

Every request but `/healthz` and `/static/...` must authenticate (HTTP basic auth, or a
bearer token), unless the settings say `no_auth`; then the `Host` must be a loopback
name, so a page elsewhere cannot reach the console by pointing its own name at 127.0.0.1
(DNS rebinding). The operator's name is put in the request's state
(`request.state.operator`): the audit trail records it. A request that changes state
must be a POST; in read-only mode none is allowed; and unless it came with a bearer token
(which a browser never adds by itself), its `Origin` (or, lacking one, its `Referer`)
must be the console's own (its `Host`, or one of the settings' `origins`, for a console
behind a proxy that rewrites `Host`): a page elsewhere cannot make an operator's browser
act (CSRF). Every response forbids framing (clickjacking) and caching of the pages.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from triobus.actors.console.serve_address import is_loopback
from triobus.actors.console.settings import NO_AUTH_OPERATOR, ConsoleSettings

OPEN_PATHS = ("/healthz",)
OPEN_PREFIXES = ("/static/",)
SAFE_METHODS = frozenset({"GET", "HEAD"})
_REALM = 'Basic realm="triobus console", charset="UTF-8"'
_NO_PASSWORD = b"\x00" * 32  # compared when the user is unknown, so both take as long
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def route_path(scope: Scope) -> str:
    """The path below the app's mount point, as Starlette's router sees it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


class ConsoleGate:
    def __init__(self, app: ASGIApp, settings: ConsoleSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                headers.setdefault("Cache-Control", "no-store")
            await send(message)

        path = route_path(scope)
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send_secured)
            return
        headers = Headers(scope=scope)
        refusal, operator, by_token = self._authenticate(headers)
        if refusal is None and scope["method"] not in SAFE_METHODS:
            refusal = self._check_action(scope["method"], scope["scheme"], headers, by_token)
        if refusal is not None:
            await refusal(scope, receive, send_secured)
            return
        scope.setdefault("state", {})["operator"] = operator
        await self.app(scope, receive, send_secured)

    def _authenticate(self, headers: Headers) -> tuple[Response | None, str, bool]:
        """(a refusal or None, the operator, whether a bearer token authenticated)."""
        if self.settings.no_auth:
            host = urlsplit("//" + headers.get("host", "")).hostname or ""
            if not is_loopback(host):
                return PlainTextResponse("refused: not a loopback host", 403), "", False
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

    def _check_action(
        self, method: str, scheme: str, headers: Headers, by_token: bool
    ) -> Response | None:
        if method != "POST":
            return PlainTextResponse("only POST changes anything", 405, {"Allow": "GET, POST"})
        if self.settings.read_only:
            return PlainTextResponse("this console is read-only", 403)
        if by_token:
            return None
        source = headers.get("origin") or headers.get("referer") or ""
        parts = urlsplit(source)
        origin = f"{parts.scheme}://{parts.netloc}".lower()
        own = f"{scheme}://{headers.get('host', '')}".lower()
        if not parts.netloc or (origin != own and origin not in self.settings.origins):
            return PlainTextResponse(
                "refused: this request did not come from the console's own pages", 403
            )
        return None
