"""What every console page shares: the runtime, the settings, rendering, links, formats."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import attrs
import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from triobus.actors.console.settings import ConsoleSettings
from triobus.actors.runtime import Runtime
from triobus.persistence import gauges
from triobus.persistence.connection import Connection
from triobus.persistence.gauges import GaugeSnapshot

if TYPE_CHECKING:
    from triobus.actors.metrics import PrometheusMetrics

# What an audit event's details may show of a domain whose payloads are hidden.
NOT_PAYLOAD = frozenset({"operator", "attempt", "error_type", "error_code", "data_changed"})

GAUGES_MAX_AGE = 5.0  # seconds: the overview's counts are at most this old (plus a refresh)


def pretty(value: object) -> str:
    """A payload as indented JSON (escaped by the template like any other value)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def ago(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return seconds((datetime.now(UTC) - moment).total_seconds()) + " ago"


def seconds(value: float | None) -> str:
    """A duration for people: 42 s, 3 min, 5 h, 2 d."""
    if value is None:
        return "-"
    value = max(0.0, value)
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if value >= size:
            return f"{value / size:.0f} {unit}"
    return f"{value:.0f} s"


@attrs.define
class Console:
    """The console's state, shared by every request: the runtime it shows, its settings,
    its templates and, once `/metrics` is asked for, its metrics."""

    runtime: Runtime
    settings: ConsoleSettings
    templates: jinja2.Environment
    _metrics: PrometheusMetrics | None = None

    def metrics(self) -> PrometheusMetrics | None:
        """The metrics of `/metrics`, made at the first request for them (they count the
        runtime's events from then on; until then the events cost nothing); None without
        prometheus-client."""
        if self._metrics is None:
            try:
                from triobus.actors.metrics import PrometheusMetrics
            except ImportError:
                return None
            self._metrics = PrometheusMetrics(self.runtime.events)
        return self._metrics

    def audit_details(self, domain: str, details: Mapping[str, Any] | None) -> object:
        """An audit event's details as the page may show them: whole, or, for a domain
        whose payloads are hidden, only who acted, the attempt and the error's kind."""
        if not details or self.settings.shows_payloads_of(domain):
            return details
        return {k: v for k, v in details.items() if k in NOT_PAYLOAD}

    def close(self) -> None:
        """Stop counting the runtime's events for `/metrics`."""
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    def render(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        status_code: int = 200,
    ) -> HTMLResponse:
        base: str = request.scope.get("root_path", "")

        def link(path: str, **params: object) -> str:
            query = urlencode({k: str(v) for k, v in params.items() if v not in (None, "")})
            return base + path + ("?" + query if query else "")

        html = self.templates.get_template(template).render(
            {
                "base": base,
                "link": link,
                "segment": lambda value: quote(str(value), safe=""),
                "operator": getattr(request.state, "operator", ""),
                "read_only": self.settings.read_only,
                "shows_payloads_of": self.settings.shows_payloads_of,
                "audit_details": self.audit_details,
                "pretty": pretty,
                "ago": ago,
                "seconds": seconds,
                "done": None,
                "live": None,
                "since": None,
                **context,
            }
        )
        return HTMLResponse(html, status_code)

    def redirect(
        self, request: Request, path: str, params: Mapping[str, object]
    ) -> RedirectResponse:
        """To `path` (below the console's mount point) with `params` as its query: after
        an action, its outcome (303: a reload does not repeat it)."""
        query = urlencode({k: str(v) for k, v in params.items() if v not in (None, "")})
        base = request.scope.get("root_path", "")
        return RedirectResponse(base + path + ("?" + query if query else ""), 303)

    async def gauges(self, conn: Connection | None = None) -> GaugeSnapshot | None:
        """The gauges' snapshot, refreshed first if it is older than GAUGES_MAX_AGE and no
        other process is refreshing it (`gauges.current_snapshot`), on `conn` or on a
        connection of the pool."""
        if conn is not None:
            return await gauges.current_snapshot(conn, max_age=GAUGES_MAX_AGE)
        async with self.runtime.pool.connection() as pooled:
            return await gauges.current_snapshot(pooled, max_age=GAUGES_MAX_AGE)
