"""Check HTTP traffic against the OpenAPI document with openapi-core.

:class:`Validating` wraps the ASGI app: every request that goes through it
and every answer that comes back is validated against ``/openapi.json`` by
openapi-core, and problems are collected rather than raised, so a test can
replay many calls and report every mismatch at once.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import falcon.asgi
import falcon.testing
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from werkzeug.wrappers import Request, Response

from gitstate.cli.sample import SampleRepos
from gitstate.config import Config
from gitstate.web.openapi import routed
from tests.support.client import Client

FILE_SYNC_TOKEN = "file-sync-secret"


def sample_config(tmp_path: Path, sample: SampleRepos, *, wait: float = 30, **auth: Any) -> Config:
    """Return a config with every part on: local sources, file sync, short waits.

    ``wait`` bounds ``wait: true`` deploys; without a deploy worker they wait it out.
    """
    return Config.from_mapping(
        {
            "datadir": str(tmp_path / "data"),
            "state": {"fsync": False},
            "threads": 2,
            "auth": {"enabled": bool(auth), **auth},
            "sources": {"puppet": {"remote": sample.control_url, "invalid_branches": "correct"}},
            "deploy": {
                "timeouts": {"wait": wait, "sync": 0.2},
                "local_module_sources": [str(sample.modules)],
            },
            "file_sync": {"token": FILE_SYNC_TOKEN, "long_poll_timeout": 0.2},
        }
    )


class Validating:
    """An ASGI app that validates its traffic against its own OpenAPI document.

    Args:
        app: the falcon app (its ``/openapi.json`` is the document used).
    """

    def __init__(self, app: falcon.asgi.App) -> None:
        self.app = app
        self.openapi = OpenAPI.from_dict(routed(app))
        self.problems: list[str] = []
        self.seen: set[tuple[str, str, int]] = set()
        #: Set to False around a call that is meant to break the request's rules.
        self.check_request = True

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # falcon's test client hands over iterators (read once): keep lists.
        server = scope.get("server")
        scope = dict(
            scope,
            headers=[tuple(pair) for pair in scope.get("headers") or []],
            server=tuple(server) if server is not None else None,
        )
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        given = False

        async def replay() -> dict[str, Any]:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())

        captured: dict[str, Any] = {"status": 500, "headers": [], "body": b""}

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = [
                    (key.decode("latin-1"), value.decode("latin-1"))
                    for key, value in message.get("headers", [])
                ]
            elif message["type"] == "http.response.body":
                captured["body"] += message.get("body", b"")
            await send(message)

        await self.app(scope, replay, capture)
        self._check(_environ(scope, body), captured, captured["body"])

    def _check(self, environ: dict[str, Any], captured: dict[str, Any], data: bytes) -> None:
        request = WerkzeugOpenAPIRequest(Request(environ))
        status = int(captured["status"])
        response = WerkzeugOpenAPIResponse(
            Response(data, status=status, headers=captured["headers"])
        )
        label = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']} -> {status}"
        self.seen.add((environ["REQUEST_METHOD"], environ["PATH_INFO"], status))
        if self.check_request:
            try:
                self.openapi.validate_request(request)
            except Exception as ex:
                self.problems.append(f"request {label}: {_explain(ex)}")
        try:
            self.openapi.validate_response(request, response)
        except Exception as ex:
            self.problems.append(f"response {label}: {_explain(ex)} body={data[:300]!r}")


def _environ(scope: dict[str, Any], body: bytes) -> dict[str, Any]:
    """Return the WSGI environ werkzeug reads, for an ASGI request and its body."""
    host, port = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "PATH_INFO": scope["path"],
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
    }
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        if name == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif name != "CONTENT_LENGTH":
            environ[f"HTTP_{name}"] = value
    return environ


def _explain(ex: BaseException) -> str:
    parts = [f"{type(ex).__name__}: {ex}"]
    for inner in getattr(ex, "schema_errors", ()) or ():
        parts.append(f"  {inner.message} at {list(inner.absolute_path)}")
    cause = ex.__cause__
    if cause is not None:
        parts.append(_explain(cause))
    return "\n".join(parts)


def client(app: falcon.asgi.App) -> tuple[falcon.testing.TestClient, Validating]:
    """Return a test client whose every call is validated, and the validator."""
    validating = Validating(app)
    return Client(validating), validating
