"""``GET /api/deploys/environments``: every environment's deployed version, for the page.

One row per environment with what Code Manager's ``deploys/status`` lacks
for a person: branch and source, when and by whom, each file-sync client's
relation to that version, what is queued or running, the last failure,
and whether the caller may roll it back
(:mod:`gitstate.codemanager.deployed`). Reads need a token as Code
Manager's do (``auth.anonymous_reads.code_manager``).
"""

from __future__ import annotations

import falcon.asgi
from falcon.asgi import Request, Response

from gitstate.base.blocking import Blocking
from gitstate.services import Services

from .auth import principal


class EnvironmentsResource:
    """``GET /api/deploys/environments``."""

    def __init__(self, services: Services, run: Blocking) -> None:
        self._services = services
        self._run = run

    async def on_get(self, req: Request, resp: Response) -> None:
        """Answer ``{"commit", "environments"}`` for the caller's permissions."""
        resp.cache_control = ["no-store"]
        resp.media = await self._run(self._services.code_manager.environments, principal(req))


def add_routes(app: falcon.asgi.App, services: Services, run: Blocking) -> None:
    """Mount the environments overview."""
    app.add_route("/api/deploys/environments", EnvironmentsResource(services, run))
