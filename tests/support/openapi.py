"""Check HTTP traffic against the OpenAPI document with openapi-core.

:class:`Validating` wraps the WSGI app: every request that goes through it
and every answer that comes back is validated against ``/openapi.json`` by
openapi-core, and problems are collected rather than raised, so a test can
replay many calls and report every mismatch at once.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import falcon.testing
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from werkzeug.wrappers import Request, Response

from gitstate.cli.sample import SampleRepos
from gitstate.config import Config
from gitstate.web.openapi import routed

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
    """A WSGI app that validates its traffic against its own OpenAPI document.

    Args:
        app: the falcon app (its ``/openapi.json`` is the document used).
    """

    def __init__(self, app: falcon.App) -> None:
        self.app = app
        self.openapi = OpenAPI.from_dict(routed(app))
        self.problems: list[str] = []
        self.seen: set[tuple[str, str, int]] = set()
        #: Set to False around a call that is meant to break the request's rules.
        self.check_request = True

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0) or -1)
        environ["wsgi.input"] = io.BytesIO(body)
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, headers
            return start_response(status, headers, exc_info)

        chunks = list(self.app(dict(environ, **{"wsgi.input": io.BytesIO(body)}), capture))
        self._check(dict(environ, **{"wsgi.input": io.BytesIO(body)}), captured, b"".join(chunks))
        return chunks

    def _check(self, environ: dict[str, Any], captured: dict[str, Any], data: bytes) -> None:
        request = WerkzeugOpenAPIRequest(Request(environ))
        status = int(captured["status"].split()[0])
        response = WerkzeugOpenAPIResponse(
            Response(data, status=captured["status"], headers=captured["headers"])
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


def _explain(ex: BaseException) -> str:
    parts = [f"{type(ex).__name__}: {ex}"]
    for inner in getattr(ex, "schema_errors", ()) or ():
        parts.append(f"  {inner.message} at {list(inner.absolute_path)}")
    cause = ex.__cause__
    if cause is not None:
        parts.append(_explain(cause))
    return "\n".join(parts)


def client(app: falcon.App) -> tuple[falcon.testing.TestClient, Validating]:
    """Return a test client whose every call is validated, and the validator."""
    validating = Validating(app)
    return falcon.testing.TestClient(validating), validating
