"""Turn service errors into JSON HTTP answers, in one place.

Every error leaves the server as ``{"status": "error", "reason": ...}`` (the
shape gatekeeper's clients parse) with a 4xx status that says whose fault it
was; nothing a client sends can produce a 500.
"""

from __future__ import annotations

from typing import Any

import falcon

from gitstate.gates.records import EnvironmentNotFound, GateNotFound
from gitstate.gates.service import GateExists, StateMoved
from gitstate.gates.tickets import TicketNotFound
from gitstate.gates.validation import InvalidName, InvalidRequest
from gitstate.store.branch import PathError, RevisionNotFound, StoreBusy
from gitstate.store.codec import RecordError


def _answer(resp: falcon.Response, status: str, reason: str, **extra: Any) -> None:
    resp.status = status
    resp.media = {"status": "error", "reason": reason, **extra}


def code_manager_error(
    resp: falcon.Response, status: str, kind: str, msg: str, details: Any = None
) -> None:
    """Answer in Code Manager's error shape, ``{"kind", "msg", "details"}``."""
    resp.status = status
    body: dict[str, Any] = {"kind": kind, "msg": msg}
    if details is not None:
        body["details"] = details
    resp.media = body


def serialize_http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError) -> None:
    """Render Falcon's own errors (404, bad JSON, 413, ...) as JSON always."""
    reason = ex.description or ex.title or "error"
    resp.content_type = falcon.MEDIA_JSON
    resp.media = {"status": "error", "reason": reason}


def register(app: falcon.App) -> None:
    """Install the handlers that map gitstate errors to HTTP statuses."""

    def bad_path(req: falcon.Request, resp: falcon.Response, ex: PathError, params: Any) -> None:
        _answer(resp, falcon.HTTP_400, str(ex))

    def not_found(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
        _answer(resp, falcon.HTTP_404, str(ex))

    def busy(req: falcon.Request, resp: falcon.Response, ex: StoreBusy, params: Any) -> None:
        _answer(resp, falcon.HTTP_503, str(ex))
        resp.set_header("Retry-After", "1")

    def broken_record(
        req: falcon.Request, resp: falcon.Response, ex: RecordError, params: Any
    ) -> None:
        # The state branch holds a record nobody can read: the request is fine,
        # the data is not. 503 tells clients to retry once an operator fixed it.
        _answer(resp, falcon.HTTP_503, str(ex), path=ex.path)

    def bad_request(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
        _answer(resp, falcon.HTTP_400, str(ex))

    def moved(req: falcon.Request, resp: falcon.Response, ex: StateMoved, params: Any) -> None:
        _answer(resp, falcon.HTTP_412, str(ex), commit=ex.actual)

    app.add_error_handler(PathError, bad_path)
    app.add_error_handler((InvalidName, InvalidRequest, GateExists), bad_request)
    app.add_error_handler((GateNotFound, EnvironmentNotFound, TicketNotFound), not_found)
    app.add_error_handler(StateMoved, moved)
    app.add_error_handler(RevisionNotFound, not_found)
    app.add_error_handler(StoreBusy, busy)
    app.add_error_handler(RecordError, broken_record)
    app.set_error_serializer(serialize_http_error)
