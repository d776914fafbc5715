"""gatekeeper's HTTP API under ``/api/``: gates, tickets and holidays.

Each resource reads the request (bounded JSON body, query flags, the actor,
``If-Match``), calls one method of :class:`gitstate.gates.service.Gates` and writes
its answer with an ``ETag`` naming the state commit the answer reflects.
Service errors are turned into HTTP answers by :mod:`gitstate.web.errors`.
"""

from __future__ import annotations

from typing import Any

import falcon.asgi
from falcon.asgi import Request, Response

from gitstate.base.blocking import Blocking
from gitstate.gates.service import Answer, Gates
from gitstate.services import Services

from .auth import require
from .request import actor, expected, read_json, request_id


def respond(resp: Response, answer: Answer) -> None:
    """Write a service answer and its state commit as the ``ETag``."""
    resp.media = answer.body
    if answer.commit is not None:
        resp.etag = answer.commit


def _may_change(req: Request, group: str) -> None:
    require(req, f"gates:{group}", f"change the gates of group {group!r}")


def _writer(req: Request) -> dict[str, Any]:
    return {"actor": actor(req), "request_id": request_id(req), "expect": expected(req)}


class _Resource:
    def __init__(self, services: Services, run: Blocking) -> None:
        self._services = services
        self._run = run

    @property
    def gates(self) -> Gates:
        return self._services.gates


class GateSetResource(_Resource):
    """``/api/gates``: list every service, or take or queue for several gates at once."""

    async def on_get(self, req: Request, resp: Response) -> None:
        """List every service's document with derived states and closure reasons."""
        respond(resp, await self._run(self.gates.list_all))

    async def on_put(self, req: Request, resp: Response) -> None:
        """Test-and-set; ``?queue=true`` queues instead of being denied."""
        body = await read_json(req)
        if not isinstance(body, dict):
            body = {}
        if isinstance(body.get("gates"), dict):
            for group in body["gates"]:
                _may_change(req, str(group))
        queue = req.get_param_as_bool("queue", default=False)
        respond(
            resp,
            await self._run(
                self.gates.test_and_set,
                body.get("gates"),
                body.get("ticket"),
                body.get("link"),
                bool(queue),
                **_writer(req),
            ),
        )


class ServiceResource(_Resource):
    """``/api/gates/<group>/<service>``: one service's gates."""

    async def on_post(self, req: Request, resp: Response, group: str, service: str) -> None:
        """Create the service's gates from ``{"environments": [...]}``."""
        _may_change(req, group)
        body = await read_json(req)
        envs = body.get("environments") if isinstance(body, dict) else None
        respond(resp, await self._run(self.gates.create, group, service, envs, **_writer(req)))

    async def on_get(self, req: Request, resp: Response, group: str, service: str) -> None:
        """Return the document with derived states (``?at=`` for the past)."""
        respond(resp, await self._run(self.gates.get_service, group, service, req.get_param("at")))

    async def on_put(self, req: Request, resp: Response, group: str, service: str) -> None:
        """Move, rename, replace or set environments."""
        _may_change(req, group)
        body = await read_json(req)
        if isinstance(body, dict) and isinstance(body.get("group"), str):
            _may_change(req, body["group"])
        respond(resp, await self._run(self.gates.update, group, service, body, **_writer(req)))

    async def on_delete(self, req: Request, resp: Response, group: str, service: str) -> None:
        """Delete the service's gates."""
        _may_change(req, group)
        respond(resp, await self._run(self.gates.delete, group, service, **_writer(req)))


class EnvironmentResource(_Resource):
    """``/api/gates/<group>/<service>/<environment>``: one gate."""

    async def on_get(
        self,
        req: Request,
        resp: Response,
        group: str,
        service: str,
        environment: str,
    ) -> None:
        """Return the environment object with its derived state."""
        answer = await self._run(
            self.gates.get_environment, group, service, environment, req.get_param("at")
        )
        respond(resp, answer)

    async def on_put(
        self,
        req: Request,
        resp: Response,
        group: str,
        service: str,
        environment: str,
    ) -> None:
        """Set ``state`` and/or ``message`` by hand."""
        _may_change(req, group)
        answer = await self._run(
            self.gates.set_environment,
            group,
            service,
            environment,
            await read_json(req),
            **_writer(req),
        )
        respond(resp, answer)


class HistoryResource(_Resource):
    """``/api/gates/<group>/<service>/<environment>/history``: who changed it."""

    async def on_get(
        self,
        req: Request,
        resp: Response,
        group: str,
        service: str,
        environment: str,
    ) -> None:
        """List the environment's changes, newest first (``?limit=``)."""
        limit = req.get_param_as_int("limit", min_value=1)
        respond(resp, await self._run(self.gates.history, group, service, environment, limit))


class TicketResource(_Resource):
    """``DELETE /api/tickets/<id>``: release a ticket."""

    async def on_delete(self, req: Request, resp: Response, ticket_id: str) -> None:
        """Release the ticket; unknown tickets are fine.

        The caller needs ``gates:<group>`` for every group the ticket holds
        or waits in, checked on the state the release is committed on.
        """

        def may_release(groups: set[str]) -> None:
            for group in sorted(groups):
                _may_change(req, group)

        respond(
            resp,
            await self._run(self.gates.release, ticket_id, may_release=may_release, **_writer(req)),
        )


class HolidaysResource(_Resource):
    """``/api/holidays/``: the holidays set through the API."""

    async def on_get(self, req: Request, resp: Response) -> None:
        """List holidays from today on."""
        respond(resp, await self._run(self.gates.holidays, req.get_param("at")))

    async def on_post(self, req: Request, resp: Response) -> None:
        """Replace every API holiday."""
        require(req, "gates:*", "set holidays (they apply to every group)")
        respond(
            resp, await self._run(self.gates.set_holidays, await read_json(req), **_writer(req))
        )


def add_routes(app: falcon.asgi.App, services: Services, run: Blocking) -> None:
    """Mount gatekeeper's API on ``app``."""
    app.add_route("/api/gates", GateSetResource(services, run))
    app.add_route("/api/gates/{group}/{service}", ServiceResource(services, run))
    app.add_route("/api/gates/{group}/{service}/{environment}", EnvironmentResource(services, run))
    app.add_route(
        "/api/gates/{group}/{service}/{environment}/history", HistoryResource(services, run)
    )
    app.add_route("/api/tickets/{ticket_id}", TicketResource(services, run))
    holidays = HolidaysResource(services, run)
    app.add_route("/api/holidays/", holidays)
    app.add_route("/api/holidays", holidays)
