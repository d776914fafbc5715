"""``GET /api/watch``: a long poll that answers when the state branch moves.

The web page keeps one such request open and reloads what it shows when the
answer names a new state commit. A waiting request holds a worker thread, so
each process lets at most ``threads - 1`` requests wait at once: one thread
always stays free for ordinary requests. Requests beyond that answer at once
with ``retry`` set, and the page polls slowly instead.
"""

from __future__ import annotations

import threading

import falcon

from gitstate.services import Services
from gitstate.store.watch import MAX_WAIT, wait_for_change

#: Seconds a client should wait before asking again when no waiting slot was free.
RETRY = 2.0


class WatchResource:
    """``GET /api/watch?since=<commit>[&timeout=<seconds>]``."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._slots = threading.BoundedSemaphore(max(1, services.config.threads - 1))
        self._waiting = services.config.threads > 1

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer ``{"commit", "changed", "retry"}`` once the tip is not ``since``."""
        since = req.get_param("since") or None
        timeout = req.get_param_as_float("timeout", min_value=0.0, default=MAX_WAIT)
        head = self._services.gates.head
        retry = 0.0
        if self._waiting and self._slots.acquire(blocking=False):
            try:
                tip = wait_for_change(head, since, timeout)
            finally:
                self._slots.release()
        else:
            tip = head()
            retry = RETRY if tip == since else 0.0
        resp.cache_control = ["no-store"]
        resp.media = {"commit": tip, "changed": tip != since, "retry": retry}


def add_routes(app: falcon.App, services: Services) -> None:
    """Mount the long poll."""
    app.add_route("/api/watch", WatchResource(services))
