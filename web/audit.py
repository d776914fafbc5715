"""The audit trail over HTTP: ``GET /api/audit`` and ``GET /api/audit/<commit>``.

Both read the state branch's history through
:class:`gitstate.trail.AuditTrail`, in the blocking pool (a walk reads git
objects). Bad parameters are 400, a commit that is not on the state branch
404, both as JSON in gatekeeper's shape like the rest of ``/api/``. Reads
need a token unless ``auth.anonymous_reads.code_manager`` (the trail holds
deploys and who was given which tokens).
"""

from __future__ import annotations

import falcon.asgi
from falcon.asgi import Request, Response

from gitstate.base.blocking import Blocking
from gitstate.services import Services
from gitstate.trail import AuditQuery, check_commit


class AuditResource:
    """``GET /api/audit?gate=&environment=&actor=&since=&until=&limit=&before=``."""

    def __init__(self, services: Services, run: Blocking) -> None:
        self._services = services
        self._run = run

    async def on_get(self, req: Request, resp: Response) -> None:
        """Answer one page of the state branch's history, newest first."""
        query = AuditQuery.from_params(req.params)
        resp.cache_control = ["no-store"]
        resp.media = await self._run(self._services.audit.list, query)


class AuditCommitResource:
    """``GET /api/audit/<commit>``: what one state commit changed."""

    def __init__(self, services: Services, run: Blocking) -> None:
        self._services = services
        self._run = run

    async def on_get(self, req: Request, resp: Response, commit: str) -> None:
        """Answer the commit's entry with each record before and after, and a diff."""
        check_commit(commit)
        resp.media = await self._run(self._services.audit.detail, commit)


def add_routes(app: falcon.asgi.App, services: Services, run: Blocking) -> None:
    """Mount the audit trail."""
    app.add_route("/api/audit", AuditResource(services, run))
    app.add_route("/api/audit/{commit}", AuditCommitResource(services, run))
