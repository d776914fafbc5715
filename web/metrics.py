"""``GET /metrics`` for Prometheus, and the middleware that times every request.

The endpoint is a read like any other: open unless
``auth.read_requires_token`` is set, in which case the scraper presents a
token (``?token=`` in the scrape config's ``params``, or the
``X-Authentication`` header).
"""

from __future__ import annotations

import time
from typing import Any

import falcon.asgi
from falcon.asgi import Request, Response

from gitstate import gauges as metrics_gauges
from gitstate.base import metrics
from gitstate.base.blocking import Blocking
from gitstate.services import Services

#: Route label of requests that matched no route (a label per path would be unbounded).
UNROUTED = "unrouted"


class MetricsMiddleware:
    """Count and time every request by method, route template and status."""

    async def process_request(self, req: Request, resp: Response) -> None:
        """Note when the request started."""
        req.context.started = time.perf_counter()

    async def process_response(
        self, req: Request, resp: Response, resource: Any, req_succeeded: bool
    ) -> None:
        """Record the answered request."""
        started = getattr(req.context, "started", None)
        elapsed = time.perf_counter() - started if started is not None else 0.0
        metrics.http_request(req.method, req.uri_template or UNROUTED, resp.status_code, elapsed)


class MetricsResource:
    """Every gitstate process's counters and histograms, plus scrape-time gauges."""

    def __init__(self, services: Services, run: Blocking) -> None:
        self._collectors = metrics_gauges.for_services(services)
        self._run = run

    async def on_get(self, req: Request, resp: Response) -> None:
        """Answer in Prometheus text format (OpenMetrics when asked for)."""
        body, content_type = await self._run(
            metrics.exposition, self._collectors, req.get_header("Accept")
        )
        resp.data = body
        resp.content_type = content_type


def add_routes(app: falcon.asgi.App, services: Services, run: Blocking) -> None:
    """Serve ``/metrics``."""
    app.add_route("/metrics", MetricsResource(services, run))
