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


def _send(
    app: falcon.App, method: str, path: str, body: bytes, *, query: str = "", declared: bool = True
) -> tuple[list[str], int, bytes]:
    """Call ``app`` with ``body``; return the statuses, the bytes it read, and its answer.

    Undeclared bodies arrive as gunicorn hands over a chunked one: no
    length, a stream that ends itself.
    """
    environ = falcon.testing.create_environ(
        path=path, query_string=query, method=method, body=b"", headers={}
    )
    stream = io.BytesIO(body)
    environ["wsgi.input"] = stream
    if declared:
        environ["CONTENT_LENGTH"] = str(len(body))
    else:
        environ.pop("CONTENT_LENGTH", None)
        environ["wsgi.input_terminated"] = True
    statuses: list[str] = []
    out = b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    return statuses, stream.tell(), out


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
    statuses, consumed, _ = _send(app, method, path, body, query=query, declared=declared)
    assert statuses and statuses[0][:1] == "4", statuses
    assert consumed == len(body)


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
    statuses, consumed, _ = _send(app, method, path, body)
    assert statuses and statuses[0][:1] == "4", statuses
    assert consumed == len(body)


def test_small_chunked_body_is_read(app: falcon.App) -> None:
    body = b'{"environments": ["live"]}'
    statuses, _, out = _send(app, "POST", "/api/gates/grp/svc", body, declared=False)
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
    statuses, consumed, _ = _send(app, method, path, body)
    assert statuses == ["200 OK"]
    assert consumed == len(body)
