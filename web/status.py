"""``GET /internal/status`` and ``/internal/status.json``: gatekeeper's status page.

The document is built by :meth:`gitstate.services.Services.internal_status`.
``/internal/status`` answers JSON too, unless the client prefers HTML, which
gets the same document in a ``<pre>`` (gatekeeper's HTML variant is broken).
Reads follow ``auth.anonymous_reads.gates`` (see :mod:`gitstate.auth`).
"""

from __future__ import annotations

import html
import json

import falcon.asgi
from falcon.asgi import Request, Response

from gitstate.base.blocking import Blocking
from gitstate.services import Services


class StatusResource:
    """The status document; ``html`` makes browsers get a readable page."""

    def __init__(self, services: Services, run: Blocking, *, html_for_browsers: bool) -> None:
        self._services = services
        self._run = run
        self._html = html_for_browsers

    async def on_get(self, req: Request, resp: Response) -> None:
        """Answer the status document."""
        document = await self._run(self._services.internal_status)
        if self._html and req.client_prefers(["application/json", "text/html"]) == "text/html":
            text = html.escape(json.dumps(document, indent=2))
            resp.content_type = "text/html; charset=utf-8"
            resp.text = f"<!doctype html><title>gitstate status</title><pre>{text}</pre>\n"
            return
        resp.media = document


def add_routes(app: falcon.asgi.App, services: Services, run: Blocking) -> None:
    """Mount gatekeeper's two status routes."""
    app.add_route("/internal/status", StatusResource(services, run, html_for_browsers=True))
    app.add_route("/internal/status.json", StatusResource(services, run, html_for_browsers=False))
