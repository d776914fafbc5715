"""Code Manager's HTTP API under ``/code-manager/v1/``: deploys and status.

The resources read the request and call :class:`CodeManager`, which checks
the caller's permissions. Errors are answered in Code Manager's shape,
``{"kind", "msg", "details"}`` (what ``puppet code`` and pipeline plugins
parse), by :mod:`gitstate.web.errors`.
"""

from __future__ import annotations

import falcon.asgi
from falcon.asgi import Request, Response

from gitstate.base.blocking import Blocking
from gitstate.codemanager.service import CodeManager, DeployRequest
from gitstate.deploys.queue import DeployRequestError
from gitstate.services import Services

from .auth import principal
from .request import actor, read_json, request_id

PREFIX = "/code-manager/v1"


class DeploysResource:
    """``POST /code-manager/v1/deploys``: queue (and optionally wait for) deploys."""

    def __init__(self, services: Services, run: Blocking) -> None:
        self._services = services
        self._run = run

    @property
    def _code_manager(self) -> CodeManager:
        return self._services.code_manager

    async def on_post(self, req: Request, resp: Response) -> None:
        """Queue the environments named, or all; answer with their ids.

        Refused environments (no permission, gate closed) are answered with
        the others, as Code Manager answers per environment. With ``wait``
        the request waits as an asyncio task, holding no thread.
        """
        request = DeployRequest.from_json(await read_json(req))
        resp.media = await self._code_manager.submit_async(
            request,
            principal=principal(req),
            actor=actor(req),
            request_id=request_id(req),
            run=self._run,
        )


class DeployStatusResource:
    """``GET /code-manager/v1/deploys/status[?id=N]``."""

    def __init__(self, services: Services, run: Blocking) -> None:
        self._services = services
        self._run = run

    async def on_get(self, req: Request, resp: Response) -> None:
        """Answer the queue, the storage and the clients' state, or one deploy."""
        code_manager = self._services.code_manager
        raw_id = req.get_param("id")
        if raw_id is None:
            resp.media = await self._run(code_manager.status)
            return
        if not raw_id.isdigit():
            raise DeployRequestError(f"id must be a deploy number, not {raw_id!r}")
        resp.media = await self._run(code_manager.deploy_status, int(raw_id))


def add_routes(app: falcon.asgi.App, services: Services, run: Blocking) -> None:
    """Mount the Code Manager routes."""
    app.add_route(f"{PREFIX}/deploys", DeploysResource(services, run))
    app.add_route(f"{PREFIX}/deploys/status", DeployStatusResource(services, run))
