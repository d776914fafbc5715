"""Bodies are read to the end, refused or ignored, so the connection stays usable.

gunicorn's gthread worker drains at most 64 KiB of a body the app left
unread; past that it closes the keep-alive connection it has just answered
as kept alive, and the client's next request on it fails with a reset. The
soak harness (bench/soak) saw exactly that after a refused 70 KiB body.
A chunked body (no length declared) is read too, small or large.
"""

from __future__ import annotations

import io
from pathlib import Path

import falcon.testing
import pytest

from gitstate.config import Config
from gitstate.web.app import create_app


@pytest.fixture
def app(tmp_path: Path) -> falcon.App:
    config = Config.from_mapping(
        {
            "datadir": str(tmp_path / "data"),
            "state": {"fsync": False},
            "auth": {"enabled": False},
        }
    )
    return create_app(config)


@pytest.mark.parametrize(
    ("method", "path", "query", "size", "declared"),
    [
        ("PUT", "/api/gates", "", 70 * 1024, True),
        ("PUT", "/api/gates", "", 300 * 1024, False),  # chunked: no length declared
        ("POST", "/code-manager/v1/deploys", "", 200 * 1024, True),
        ("POST", "/code-manager/v1/webhook", "type=github", 1024 * 1024 + 100, True),
    ],
)
def test_refused_oversized_body_is_consumed(
    app: falcon.App, method: str, path: str, query: str, size: int, declared: bool
) -> None:
    body = b"{" + b" " * size + b"}"
    environ = falcon.testing.create_environ(
        path=path, query_string=query, method=method, body=b"", headers={}
    )
    stream = io.BytesIO(body)
    environ["wsgi.input"] = stream
    if declared:
        environ["CONTENT_LENGTH"] = str(len(body))
    else:
        # As gunicorn hands over a chunked body: no length, a terminated stream.
        environ.pop("CONTENT_LENGTH", None)
        environ["wsgi.input_terminated"] = True
    statuses: list[str] = []
    b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses and statuses[0][:1] == "4", statuses
    assert stream.tell() == len(body)


@pytest.mark.parametrize(
    ("method", "path", "auth"),
    [
        ("POST", "/code-manager/v1/deploys", True),  # refused for want of a token
        ("POST", "/no/such/route", False),  # 404 before any resource reads
        ("DELETE", "/internal/health", False),  # 405
    ],
)
def test_bodies_of_other_refusals_are_consumed(
    tmp_path: Path, method: str, path: str, auth: bool
) -> None:
    app = create_app(
        Config.from_mapping(
            {
                "datadir": str(tmp_path / "data"),
                "state": {"fsync": False},
                "auth": {"enabled": auth},
            }
        )
    )
    body = b"{" + b" " * (200 * 1024) + b"}"
    environ = falcon.testing.create_environ(path=path, method=method, body=b"", headers={})
    stream = io.BytesIO(body)
    environ["wsgi.input"] = stream
    environ["CONTENT_LENGTH"] = str(len(body))
    statuses: list[str] = []
    b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses and statuses[0][:1] == "4", statuses
    assert stream.tell() == len(body)


def test_small_chunked_body_is_read(app: falcon.App) -> None:
    body = b'{"environments": ["live"]}'
    environ = falcon.testing.create_environ(path="/api/gates/grp/svc", method="POST", body=b"")
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input_terminated"] = True
    environ["wsgi.input"] = io.BytesIO(body)
    statuses: list[str] = []
    out = b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses == ["200 OK"], out


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/internal/health"),  # answered without a look at the body
        ("GET", "/openapi.json"),
    ],
)
def test_bodies_nobody_reads_are_consumed_after_a_success(
    app: falcon.App, method: str, path: str
) -> None:
    """A body a successful answer ignored is read too, so no byte stays on the socket."""
    body = b"z" * (100 * 1024)
    environ = falcon.testing.create_environ(path=path, method=method, body=b"", headers={})
    stream = io.BytesIO(body)
    environ["wsgi.input"] = stream
    environ["CONTENT_LENGTH"] = str(len(body))
    statuses: list[str] = []
    b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses == ["200 OK"]
    assert stream.tell() == len(body)
