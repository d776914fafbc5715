"""The one map from errors to HTTP answers.

Resources raise, or let service errors through; nothing else in ``web/``
builds an error body. What an error means is declared on its class
(:mod:`gitstate.errors`: ``status``, ``kind``, ``retry_after``,
``challenge``, its public message and details); this module only picks the
body's shape, by the API family the request belongs to:

* gatekeeper's, ``{"status": "error", "reason": ...}`` plus the error's
  public details as keys (``path``, ``commit``), under ``/api/`` and
  everywhere that is not Code Manager's;
* Code Manager's, ``{"kind", "msg", "details"?}``, under
  ``/code-manager/v1/`` and ``/file-sync/v1/``, which ``puppet code``,
  pipeline plugins and file-sync clients parse;
* both at once for token errors (:class:`gitstate.auth.AuthError`), so a
  401 or 403 reads right in either family's client;
* gatekeeper's for every 503 (the state repository is busy or holds a
  record nobody can read), whichever the family, as the OpenAPI document
  says.

Falcon's own errors (unknown route, bad query parameter, ...) are JSON in
gatekeeper's shape. Anything else is a bug: it is logged (method and path,
never the query string, which may hold a token) and answered as a 500 with
a JSON body that tells nothing of it; so is a :class:`GitStateError` that
declares no status of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import falcon
import falcon.asgi
from falcon.asgi import Request, Response

from gitstate.auth import AuthError
from gitstate.deploys.queue import KIND_PREFIX
from gitstate.errors import GitStateError, kind_of, status_of

#: Paths of Code Manager's API family (its errors use its shape).
CODE_MANAGER_PATHS = ("/code-manager/", "/file-sync/")
#: The reason a 500 gives: nothing of what went wrong.
INTERNAL = "500 Internal Server Error"

log = logging.getLogger(__name__)


def is_code_manager(path: str) -> bool:
    """Tell whether ``path`` belongs to Code Manager's API family."""
    return path.startswith(CODE_MANAGER_PATHS)


def error_body(error: GitStateError, *, code_manager: bool) -> dict[str, Any]:
    """Return the JSON body that answers ``error`` in its family's shape.

    Args:
        error: a service error with a client-facing status (not 500).
        code_manager: whether the request belongs to Code Manager's family.
    """
    message = error.public_message()
    gatekeeper: dict[str, Any] = {"status": "error", "reason": message}
    if isinstance(error, AuthError):
        return {**gatekeeper, "kind": kind_of(error), "msg": message}
    details = error.public_details()
    if code_manager and status_of(error) != 503:
        body: dict[str, Any] = {"kind": kind_of(error), "msg": message}
        if details is not None:
            body["details"] = details
        return body
    if isinstance(details, Mapping):
        gatekeeper.update({key: value for key, value in details.items() if key not in gatekeeper})
    return gatekeeper


def _internal_error(req: Request, resp: Response, error: BaseException) -> None:
    # req.path, not req.uri or req.log_error: the query string may hold a token.
    log.error("%s %s failed", req.method, req.path, exc_info=error)
    resp.status = falcon.HTTP_500
    resp.content_type = falcon.MEDIA_JSON
    resp.media = {"status": "error", "reason": INTERNAL}


async def answer_service_error(
    req: Request, resp: Response, ex: GitStateError, params: Any
) -> None:
    """Answer a service error with the status, headers and body its class declares."""
    status = status_of(ex)
    if status == 500:
        _internal_error(req, resp, ex)
        return
    resp.status = falcon.code_to_http_status(status)
    resp.content_type = falcon.MEDIA_JSON
    resp.media = error_body(ex, code_manager=is_code_manager(req.path))
    if ex.retry_after is not None:
        resp.set_header("Retry-After", str(ex.retry_after))
    if ex.challenge is not None:
        resp.set_header("WWW-Authenticate", ex.challenge)


async def answer_unexpected(req: Request, resp: Response, ex: Exception, params: Any) -> None:
    """Answer an exception nobody raised on purpose: log it, say nothing of it."""
    _internal_error(req, resp, ex)


#: Kinds of Falcon's own errors in Code Manager's family, by status.
_HTTP_KINDS = {404: "not-found", 405: "method-not-allowed", 413: "bad-request"}


def serialize_http_error(req: Request, resp: Response, ex: falcon.HTTPError) -> None:
    """Render Falcon's own errors (404, 405, bad JSON, 413, ...) as JSON always.

    In its family's shape: Code Manager's ``{"kind", "msg", "details"}``
    under its paths (a 405 names the methods allowed), gatekeeper's
    elsewhere.
    """
    reason = ex.description or ex.title or "error"
    resp.content_type = falcon.MEDIA_JSON
    if is_code_manager(req.path):
        kind = _HTTP_KINDS.get(ex.status_code, "bad-request" if ex.status_code < 500 else "error")
        body: dict[str, Any] = {"kind": KIND_PREFIX + kind, "msg": reason}
        allowed = (ex.headers or {}).get("Allow")
        if allowed:
            body["details"] = {"allowed": [method.strip() for method in allowed.split(",")]}
        resp.media = body
        return
    resp.media = {"status": "error", "reason": reason}


def register(app: falcon.asgi.App) -> None:
    """Install the error handlers; called once, by :func:`gitstate.web.app.create_app`."""
    # Falcon picks the handler of the most specific class, so its own
    # HTTPError and HTTPStatus handlers still win over the Exception one.
    app.add_error_handler(Exception, answer_unexpected)
    app.add_error_handler(GitStateError, answer_service_error)
    app.set_error_serializer(serialize_http_error)
