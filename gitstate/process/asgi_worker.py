"""gunicorn's worker for the ASGI app: uvicorn, with deadlines for slow clients.

Each gunicorn worker process runs one uvicorn server on an asyncio event
loop. A connection costs a protocol object and its buffers until it has a
whole request; a request that waits (a long poll, ``wait: true``) is an
asyncio task; only blocking work takes one of the app's ``threads``
(:mod:`gitstate.web.app`). So slow or waiting clients cost memory, and the
limits below keep that memory bounded:

* a request's headers must arrive within :data:`HEADER_TIMEOUT` seconds of
  its first byte (or of the connection opening), or the connection is
  closed: a client that dribbles one header line every few seconds gets no
  further;
* headers are bounded by h11 (:data:`MAX_HEADER_BYTES`);
* bodies are bounded in size and time by the app
  (:data:`gitstate.web.request.BODY_TIMEOUT`).

On SIGTERM, SIGINT or SIGQUIT the worker sets
:func:`gitstate.base.shutdown.stop` before uvicorn starts its graceful
shutdown, so long polls answer at once instead of holding the shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from gunicorn.arbiter import Arbiter
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from gitstate.base import shutdown

#: Seconds a client has to send a request's headers, from its first byte.
HEADER_TIMEOUT = 10.0
#: Largest request line plus headers, in bytes (h11 refuses more with 400).
MAX_HEADER_BYTES = 16 * 1024
#: gunicorn's ``worker_class`` setting that selects :class:`AsgiWorker`.
WORKER_CLASS = "gitstate.process.asgi_worker.AsgiWorker"

log = logging.getLogger(__name__)


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose headers come too slowly.

    The deadline is armed when a connection opens and whenever bytes of a
    new request arrive on an idle keep-alive connection, and disarmed as
    soon as a request's headers are complete (uvicorn then starts a request
    cycle). The app's body deadline and uvicorn's keep-alive timeout cover
    the other phases.
    """

    _headers_due: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Open the connection; its first request's headers are now due."""
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Feed bytes to h11; arm or disarm the headers' deadline."""
        idle = self.cycle is None or self.cycle.response_complete
        before = self.cycle
        super().data_received(data)
        if self.cycle is not before:
            self._disarm()  # a request's headers are complete
        elif idle:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the deadline with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._headers_due is None:
            self._headers_due = self.loop.call_later(HEADER_TIMEOUT, self._too_slow)

    def _disarm(self) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
            self._headers_due = None

    def _too_slow(self) -> None:
        self._headers_due = None
        if not self.transport.is_closing():
            log.info("closing a connection whose request headers took over %gs", HEADER_TIMEOUT)
            self.transport.close()


class _Server(Server):
    """uvicorn's server, telling long waits to end before it shuts down."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        """Mark the process as stopping, then shut down as uvicorn does."""
        shutdown.stop()
        super().handle_exit(sig, frame)


class AsgiWorker(UvicornWorker):
    """A gunicorn worker serving the ASGI app with uvicorn (see the module's notes)."""

    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 (uvicorn-worker's own class attribute)
        "loop": "asyncio",
        "http": HeaderDeadline,
        "lifespan": "off",
        # The app writes its own access line (gitstate.web.requestlog).
        "access_log": False,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    }

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        server = _Server(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
