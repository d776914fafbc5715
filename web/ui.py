"""The web page at ``/``: static HTML, CSS and JavaScript served by gitstate.

The page holds no data of its own; its script reads the JSON API with the
token the user typed (kept in the browser's localStorage) and keeps itself
current through ``/api/watch``. Files come from ``static/`` next to this
module; only names listed there at start-up are served.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import falcon
import falcon.asgi
from falcon.asgi import Request, Response

#: Folder holding the page's files.
STATIC_DIR = Path(__file__).parent / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\.[a-z]+")
#: No script, style or connection may come from anywhere but gitstate itself.
_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)


class _File:
    def __init__(self, path: Path) -> None:
        self.data = path.read_bytes()
        self.content_type = _TYPES[path.suffix]
        self.etag = hashlib.sha256(self.data).hexdigest()[:20]


def _load(folder: Path) -> dict[str, _File]:
    files = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_file() and _NAME.fullmatch(path.name) and path.suffix in _TYPES:
            files[path.name] = _File(path)
    return files


def _send(req: Request, resp: Response, item: _File) -> None:
    resp.etag = item.etag
    resp.cache_control = ["no-cache"]
    if req.if_none_match and any(tag == item.etag for tag in req.if_none_match):
        resp.status = falcon.HTTP_304
        return
    resp.content_type = item.content_type
    resp.set_header("X-Content-Type-Options", "nosniff")
    resp.set_header("Content-Security-Policy", _POLICY)
    resp.set_header("Referrer-Policy", "no-referrer")
    resp.data = item.data


class PageResource:
    """``GET /``: the page (public: it carries no data)."""

    auth_policy = "public"

    def __init__(self, files: dict[str, _File]) -> None:
        self._files = files

    async def on_get(self, req: Request, resp: Response) -> None:
        """Send ``index.html``."""
        page = self._files.get("index.html")
        if page is None:
            raise falcon.HTTPNotFound(description="the web page is not installed")
        _send(req, resp, page)


class StaticResource:
    """``GET /static/<name>``: the page's script, style and images."""

    auth_policy = "public"

    def __init__(self, files: dict[str, _File]) -> None:
        self._files = files

    async def on_get(self, req: Request, resp: Response, name: str) -> None:
        """Send one file of :data:`STATIC_DIR`; 404 for anything else."""
        item = self._files.get(name)
        if item is None:
            raise falcon.HTTPNotFound(description=f"no static file {name!r}")
        _send(req, resp, item)


def add_routes(app: falcon.asgi.App, folder: Path = STATIC_DIR) -> None:
    """Mount the page and its files."""
    files = _load(folder)
    app.add_route("/", PageResource(files))
    app.add_route("/static/{name}", StaticResource(files))
