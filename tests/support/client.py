"""falcon's test client for the ASGI app, usable from several threads at once.

falcon's synchronous ``simulate_*`` run every request on one module-wide
event loop, which two threads cannot run at the same time; the concurrency
tests call the app from many threads. :class:`Client` gives each thread its
own loop and sends each request through an :class:`~falcon.testing.ASGIConductor`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import falcon.testing

_local = threading.local()


def _runner() -> asyncio.Runner:
    runner = getattr(_local, "runner", None)
    if runner is None or runner.get_loop().is_closed():
        runner = _local.runner = asyncio.Runner()
    return runner


class Client(falcon.testing.TestClient):
    """A :class:`falcon.testing.TestClient` whose calls may come from any thread."""

    def simulate_request(self, *args: Any, **kwargs: Any) -> falcon.testing.Result:
        conductor = falcon.testing.ASGIConductor(self.app, headers=self._default_headers)
        return _runner().run(conductor.simulate_request(*args, **kwargs))
