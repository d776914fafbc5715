"""``GET /api/watch``: a long poll that answers when the state branch moves.

The web page keeps one such request open and reloads what it shows when the
answer names a new state commit. The wait is an asyncio task woken by the
state branch's :class:`~gitstate.store.tipwatch.TipWatch` (inotify): it
holds no thread, so any number of pages may watch at once, and the pages
waiting in one process read the tip once per wake between them
(:meth:`~gitstate.store.tipwatch.TipWatch.wait_until_async`). ``retry`` stays
in the answer for pages written when a busy server turned watchers away; it
is always 0 now.
"""

from __future__ import annotations

from pathlib import Path

import falcon.asgi
from falcon.asgi import Request, Response

from gitstate.base.blocking import Blocking
from gitstate.base.shutdown import stopping
from gitstate.services import Services
from gitstate.store.tipwatch import TipWatch

#: Longest wait a caller may ask for, in seconds.
MAX_WAIT = 25.0


class WatchResource:
    """``GET /api/watch?since=<commit>[&timeout=<seconds>]``."""

    def __init__(self, services: Services, run: Blocking) -> None:
        self._services = services
        self._run = run

    async def on_get(self, req: Request, resp: Response) -> None:
        """Answer ``{"commit", "changed", "retry"}`` once the tip is not ``since``.

        Without ``since`` the answer is at once; with it, when the branch
        moves, after ``timeout`` seconds (at most :data:`MAX_WAIT`), or when
        the server stops.
        """
        since = req.get_param("since") or None
        timeout = req.get_param_as_float("timeout", min_value=0.0, default=MAX_WAIT)
        watch = TipWatch.of(Path(self._services.store.path))
        seen: dict[str, str | None] = {"tip": None}

        async def moved(tip: str | None) -> bool:
            seen["tip"] = tip
            return since is None or tip != since

        await watch.wait_until_async(
            "head",
            self._services.gates.head,
            self._run,
            moved,
            min(timeout, MAX_WAIT),
            stop=stopping,
        )
        tip = seen["tip"]
        resp.cache_control = ["no-store"]
        resp.media = {"commit": tip, "changed": tip != since, "retry": 0.0}


def add_routes(app: falcon.asgi.App, services: Services, run: Blocking) -> None:
    """Mount the long poll."""
    app.add_route("/api/watch", WatchResource(services, run))
