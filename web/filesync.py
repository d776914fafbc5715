"""File sync over HTTP: the git transport, the long poll, check-ins, rollbacks.

Routes (all but rollbacks need the file-sync token, checked by
:meth:`gitstate.filesync.server.FileSyncService.authorize` alone):

* ``GET  /file-sync/v1/git/info/refs?service=git-upload-pack`` and
  ``POST /file-sync/v1/git/git-upload-pack``: git's smart HTTP, read-only;
* ``GET  /file-sync/v1/latest-commit?known=SHA&timeout=S``: the long poll;
* ``POST /file-sync/v1/check-ins``: a client reports its state;
* ``POST /code-manager/v1/rollbacks``: roll an environment back (Code
  Manager's API family, so its errors use Code Manager's shape).

Errors, and the file-sync token's refusal, are answered by
:mod:`gitstate.web.errors` in Code Manager's shape.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator

import falcon.asgi
from falcon.asgi import Request, Response

from gitstate.base.blocking import Blocking
from gitstate.filesync.server import (
    MAX_NEGOTIATION,
    FileSyncService,
    RequestTooLarge,
    ServiceRefused,
)
from gitstate.gates.validation import InvalidRequest
from gitstate.services import Services

from .auth import principal
from .request import BodyTooLarge, actor, read_body, read_json, request_id

PREFIX = "/file-sync/v1"
TOKEN_HEADER = "X-Authentication"


class _Resource:
    #: The file-sync transport checks its own token (``file_sync.token``,
    #: :meth:`FileSyncService.authorize`), not a user's.
    auth_policy = "public"

    def __init__(self, services: Services, run: Blocking) -> None:
        self._services = services
        self._run = run

    @property
    def file_sync(self) -> FileSyncService:
        return self._services.file_sync

    def _authorize(self, req: Request) -> None:
        """Raise :class:`Unauthorized` unless the request carries the file-sync token."""
        self.file_sync.authorize(req.get_header(TOKEN_HEADER) or req.get_param("token"))


class InfoRefsResource(_Resource):
    """``GET /file-sync/v1/git/info/refs``: the ref advertisement."""

    async def on_get(self, req: Request, resp: Response) -> None:
        """Advertise the storage repository's refs to ``git fetch``."""
        self._authorize(req)
        service = req.get_param("service") or ""
        body = await self._run(self.file_sync.advertise, service, req.get_header("Git-Protocol"))
        resp.content_type = f"application/x-{service}-advertisement"
        resp.cache_control = ["no-cache"]
        resp.data = body


class UploadPackResource(_Resource):
    """``POST /file-sync/v1/git/git-upload-pack``: send objects to ``git fetch``."""

    async def on_post(self, req: Request, resp: Response) -> None:
        """Run upload-pack on the request and stream its answer."""
        self._authorize(req)
        try:
            body = await read_body(req, MAX_NEGOTIATION)
        except BodyTooLarge as ex:
            raise RequestTooLarge(MAX_NEGOTIATION) from ex
        stream = await self._run(
            self.file_sync.upload_pack,
            io.BytesIO(body),
            gzipped=(req.get_header("Content-Encoding") or "").lower() in ("gzip", "x-gzip"),
            protocol=req.get_header("Git-Protocol"),
        )
        resp.content_type = "application/x-git-upload-pack-result"
        resp.cache_control = ["no-cache"]
        resp.stream = _chunks(stream, self._run)


class ReceivePackResource(_Resource):
    """``POST /file-sync/v1/git/git-receive-pack``: always refused."""

    async def on_post(self, req: Request, resp: Response) -> None:
        """Refuse pushes: storage is written by deploys only."""
        raise ServiceRefused("git-receive-pack")


class LatestCommitResource(_Resource):
    """``GET /file-sync/v1/latest-commit``: the long poll."""

    async def on_get(self, req: Request, resp: Response) -> None:
        """Answer the code-commit once it differs from ``known`` (bounded wait, no thread held)."""
        self._authorize(req)
        try:
            timeout = float(req.get_param("timeout") or self.file_sync.settings.long_poll_timeout)
        except ValueError as ex:
            raise InvalidRequest("timeout must be a number of seconds") from ex
        commit, changed = await self.file_sync.latest_commit_async(
            req.get_param("known"), timeout, self._run
        )
        resp.media = {"code-commit": commit, "changed": changed}


class CheckInResource(_Resource):
    """``POST /file-sync/v1/check-ins``: a client's report."""

    async def on_post(self, req: Request, resp: Response) -> None:
        """Record the check-in; answer it as stored."""
        self._authorize(req)
        resp.media = await self._run(self.file_sync.check_in, await read_json(req))


class RollbacksResource(_Resource):
    """``POST /code-manager/v1/rollbacks``: republish an earlier version.

    A rollback is a deploy: :meth:`CodeManager.rollback` checks the user's
    ``deploy:<env>`` permission and refuses it while the environment's gate
    is closed.
    """

    auth_policy = "default"

    async def on_post(self, req: Request, resp: Response) -> None:
        """Roll the environment back; answer like a waited deploy entry."""
        resp.media = await self._services.code_manager.rollback_async(
            await read_json(req),
            principal=principal(req),
            actor=actor(req),
            request_id=request_id(req),
            run=self._run,
        )


async def _chunks(stream: Iterator[bytes], run: Blocking) -> AsyncIterator[bytes]:
    """Yield a blocking iterator's chunks, each read in the thread pool."""
    try:
        while True:
            chunk = await run(next, stream, None)
            if chunk is None:
                return
            yield chunk
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            await run(close)


def add_routes(app: falcon.asgi.App, services: Services, run: Blocking) -> None:
    """Mount the file-sync routes and the rollback endpoint."""
    app.add_route(f"{PREFIX}/git/info/refs", InfoRefsResource(services, run))
    app.add_route(f"{PREFIX}/git/git-upload-pack", UploadPackResource(services, run))
    app.add_route(f"{PREFIX}/git/git-receive-pack", ReceivePackResource(services, run))
    app.add_route(f"{PREFIX}/latest-commit", LatestCommitResource(services, run))
    app.add_route(f"{PREFIX}/check-ins", CheckInResource(services, run))
    app.add_route("/code-manager/v1/rollbacks", RollbacksResource(services, run))
