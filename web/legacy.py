"""gatekeeper's page routes (``/gates``, ``/gates/``, ``/index``) lead to the page at ``/``.

Bookmarks and links made for gatekeeper keep working: they are redirected,
with their query string (gatekeeper's ``?tab=<group>``), to where
:mod:`gitstate.web.ui` serves the page.
"""

from __future__ import annotations

import falcon
import falcon.asgi
from falcon.asgi import Request, Response

#: gatekeeper's paths of its HTML dashboard.
PAGE_PATHS = ("/gates", "/gates/", "/index")


class PageRedirect:
    """Redirect to the page (public: it carries no data)."""

    auth_policy = "public"

    async def on_get(self, req: Request, resp: Response) -> None:
        """Answer 301 to ``/``, keeping the query string."""
        query = f"?{req.query_string}" if req.query_string else ""
        raise falcon.HTTPMovedPermanently(f"/{query}")


def add_routes(app: falcon.asgi.App) -> None:
    """Mount gatekeeper's page paths."""
    redirect = PageRedirect()
    for path in PAGE_PATHS:
        app.add_route(path, redirect)
