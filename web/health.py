"""``GET /internal/health``: is this worker alive, able to read state and to write it."""

from __future__ import annotations

from falcon.asgi import Request, Response

from gitstate.base.blocking import Blocking
from gitstate.services import Services


class HealthResource:
    """Liveness probe for load balancers and ``gitstate demo``."""

    auth_policy = "public"

    def __init__(self, services: Services) -> None:
        self._services = services
        # Its own thread: a probe never queues behind the pool that gate
        # writes and deploys keep busy, so it measures the process, not the load.
        self._run = Blocking(1)

    async def on_get(self, req: Request, resp: Response) -> None:
        """Answer 200 with ``{"status": "ok"}`` when the state repo is readable.

        The state commit this worker sees goes in the ``X-Gitstate-State``
        header, so the body stays exactly what gatekeeper's probes expect.
        While the state branch has moved back behind gitstate's back the
        service raises, and the answer is a 503 in gatekeeper's error shape.
        """
        body, commit = await self._run(self._services.health)
        resp.media = body
        resp.set_header("X-Gitstate-State", commit or "none")
