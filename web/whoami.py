"""``GET /api/whoami``: who the presented token acts for, and what it may do.

The page asks before it offers controls (a rollback needs
``deploy:<environment>``), so it can leave out a button the server would
refuse. Open to every caller: without a token the answer is the anonymous
principal (every permission when authentication is off, none when it is
on); a token presented is checked like on any other request, so a bad one
is a 401.
"""

from __future__ import annotations

import falcon.asgi
from falcon.asgi import Request, Response

from gitstate.services import Services

from .auth import principal


class WhoAmIResource:
    """``GET /api/whoami``."""

    def __init__(self, services: Services) -> None:
        self._settings = services.config.auth

    async def on_get(self, req: Request, resp: Response) -> None:
        """Answer ``{"user", "permissions", "token_id", "authentication"}``."""
        who = principal(req)
        resp.cache_control = ["no-store"]
        resp.media = {
            "user": who.user,
            "permissions": sorted(who.permissions),
            "token_id": who.token_id,
            "authentication": self._settings.enabled,
        }


def add_routes(app: falcon.asgi.App, services: Services) -> None:
    """Mount the route."""
    app.add_route("/api/whoami", WhoAmIResource(services))
