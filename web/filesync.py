"""File sync over HTTP: the git transport, the long poll, check-ins, rollbacks.

Routes (all but rollbacks need the file-sync token, checked by
:meth:`gitstate.filesync.server.FileSyncService.authorize` alone):

* ``GET  /file-sync/v1/git/info/refs?service=git-upload-pack`` and
  ``POST /file-sync/v1/git/git-upload-pack``: git's smart HTTP, read-only;
* ``GET  /file-sync/v1/latest-commit?known=SHA&timeout=S``: the long poll;
* ``POST /file-sync/v1/check-ins``: a client reports its state;
* ``POST /code-manager/v1/rollbacks``: roll an environment back (Code
  Manager's API family, so its errors use Code Manager's shape).
"""

from __future__ import annotations

import falcon

from gitstate.deploys.queue import BAD_REQUEST
from gitstate.engine.sources import correct_name
from gitstate.filesync.checkins import InvalidCheckIn
from gitstate.filesync.rollback import InvalidRollback, RollbackTargetNotFound
from gitstate.filesync.server import (
    FileSyncService,
    RequestTooLarge,
    ServiceRefused,
    Unauthorized,
)
from gitstate.gates.validation import InvalidRequest
from gitstate.services import Services

from .auth import require
from .errors import code_manager_error
from .request import actor, read_json, request_id

PREFIX = "/file-sync/v1"
TOKEN_HEADER = "X-Authentication"
NOT_FOUND = "puppetlabs.code-manager/not-found"


class _Resource:
    #: The file-sync transport checks its own token (``file_sync.token``,
    #: :meth:`FileSyncService.authorize`), not a user's.
    auth_policy = "public"

    def __init__(self, services: Services) -> None:
        self._services = services

    @property
    def file_sync(self) -> FileSyncService:
        return self._services.file_sync

    def _authorized(self, req: falcon.Request, resp: falcon.Response) -> bool:
        token = req.get_header(TOKEN_HEADER) or req.get_param("token")
        try:
            self.file_sync.authorize(token)
        except Unauthorized as ex:
            code_manager_error(
                resp, falcon.HTTP_401, "puppetlabs.rbac/user-unauthenticated", ex.reason
            )
            resp.set_header("WWW-Authenticate", 'Token realm="gitstate file sync"')
            return False
        return True


class InfoRefsResource(_Resource):
    """``GET /file-sync/v1/git/info/refs``: the ref advertisement."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Advertise the storage repository's refs to ``git fetch``."""
        if not self._authorized(req, resp):
            return
        service = req.get_param("service") or ""
        try:
            body = self.file_sync.advertise(service, req.get_header("Git-Protocol"))
        except ServiceRefused as ex:
            code_manager_error(resp, falcon.HTTP_403, "puppetlabs.code-manager/forbidden", str(ex))
            return
        resp.content_type = f"application/x-{service}-advertisement"
        resp.cache_control = ["no-cache"]
        resp.data = body


class UploadPackResource(_Resource):
    """``POST /file-sync/v1/git/git-upload-pack``: send objects to ``git fetch``."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Run upload-pack on the request and stream its answer."""
        if not self._authorized(req, resp):
            return
        try:
            stream = self.file_sync.upload_pack(
                req.bounded_stream,
                gzipped=(req.get_header("Content-Encoding") or "").lower() in ("gzip", "x-gzip"),
                protocol=req.get_header("Git-Protocol"),
            )
        except RequestTooLarge as ex:
            code_manager_error(resp, falcon.HTTP_413, BAD_REQUEST, str(ex))
            return
        resp.content_type = "application/x-git-upload-pack-result"
        resp.cache_control = ["no-cache"]
        resp.stream = stream


class ReceivePackResource(_Resource):
    """``POST /file-sync/v1/git/git-receive-pack``: always refused."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Refuse pushes: storage is written by deploys only."""
        code_manager_error(
            resp,
            falcon.HTTP_403,
            "puppetlabs.code-manager/forbidden",
            str(ServiceRefused("git-receive-pack")),
        )


class LatestCommitResource(_Resource):
    """``GET /file-sync/v1/latest-commit``: the long poll."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer the code-commit once it differs from ``known`` (bounded wait)."""
        if not self._authorized(req, resp):
            return
        try:
            timeout = float(req.get_param("timeout") or self.file_sync.settings.long_poll_timeout)
        except ValueError:
            code_manager_error(
                resp, falcon.HTTP_400, BAD_REQUEST, "timeout must be a number of seconds"
            )
            return
        commit, changed = self.file_sync.latest_commit(req.get_param("known"), timeout)
        resp.media = {"code-commit": commit, "changed": changed}


class CheckInResource(_Resource):
    """``POST /file-sync/v1/check-ins``: a client's report."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Record the check-in; answer it as stored."""
        if not self._authorized(req, resp):
            return
        try:
            resp.media = self.file_sync.check_in(read_json(req))
        except (InvalidCheckIn, InvalidRequest) as ex:
            code_manager_error(resp, falcon.HTTP_400, BAD_REQUEST, str(ex))


class RollbacksResource(_Resource):
    """``POST /code-manager/v1/rollbacks``: republish an earlier version.

    A rollback is a deploy: it needs the user's ``deploy:<env>`` permission
    and is refused while the environment's gate is closed.
    """

    auth_policy = "default"

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Roll the environment back; answer like a waited deploy entry."""
        try:
            body = read_json(req)
        except InvalidRequest as ex:
            code_manager_error(resp, falcon.HTTP_400, BAD_REQUEST, str(ex))
            return
        environment = body.get("environment") if isinstance(body, dict) else None
        if isinstance(environment, str):
            corrected = correct_name(environment)
            require(req, f"deploy:{corrected}", f"roll back {corrected!r}")
            closed = self._services.deploy_guard.blocked(corrected)
            if closed is not None:
                code_manager_error(
                    resp,
                    falcon.HTTP_409,
                    closed.kind,
                    str(closed),
                    {"gate": closed.gate, "reason": closed.reason},
                )
                return
        try:
            resp.media = self.file_sync.rollback(body, actor=actor(req), request_id=request_id(req))
        except (InvalidRollback, InvalidRequest) as ex:
            code_manager_error(resp, falcon.HTTP_400, BAD_REQUEST, str(ex))
        except RollbackTargetNotFound as ex:
            code_manager_error(
                resp,
                falcon.HTTP_404,
                NOT_FOUND,
                str(ex),
                {"environment": ex.environment, "to": ex.to},
            )


def add_routes(app: falcon.App, services: Services) -> None:
    """Mount the file-sync routes and the rollback endpoint."""
    app.add_route(f"{PREFIX}/git/info/refs", InfoRefsResource(services))
    app.add_route(f"{PREFIX}/git/git-upload-pack", UploadPackResource(services))
    app.add_route(f"{PREFIX}/git/git-receive-pack", ReceivePackResource(services))
    app.add_route(f"{PREFIX}/latest-commit", LatestCommitResource(services))
    app.add_route(f"{PREFIX}/check-ins", CheckInResource(services))
    app.add_route("/code-manager/v1/rollbacks", RollbacksResource(services))
