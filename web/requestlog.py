"""Request ids and the access log.

Every request gets an id: the client's ``X-Request-Id`` (cleaned and
bounded) or a fresh one. It is echoed in the response's ``X-Request-Id``,
bound to the logging context so every line logged while the request runs
carries it, and kept on the request's context so that the commits the
request makes (their ``Request-Id`` trailer, via
:func:`gitstate.web.request.request_id`) name the same id as the logs. One
access line per request follows the answer: method, path, status,
milliseconds and the acting user.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from falcon.asgi import Request, Response

from gitstate.base import logs

from .request import actor, request_id

HEADER = "X-Request-Id"

access_log = logging.getLogger("gitstate.access")


class RequestLogMiddleware:
    """Give each request an id, log with it, and write the access line."""

    async def process_request(self, req: Request, resp: Response) -> None:
        """Settle the request's id and bind it for logging."""
        value = request_id(req)
        req.context.request_id = value
        req.context.log_binding = logs.bind_request(value)
        req.context.log_started = time.perf_counter()

    async def process_response(
        self, req: Request, resp: Response, resource: Any, req_succeeded: bool
    ) -> None:
        """Echo the id, write the access line, unbind the id."""
        value = getattr(req.context, "request_id", None)
        if value is None:
            return
        resp.set_header(HEADER, value)
        started = getattr(req.context, "log_started", time.perf_counter())
        access_log.info(
            "%s %s %s",
            req.method,
            req.path,
            resp.status_code,
            extra={
                "method": req.method,
                "path": req.path,
                "status": resp.status_code,
                "ms": round((time.perf_counter() - started) * 1000, 1),
                "actor": actor(req),
            },
        )
        logs.unbind_request(req.context.log_binding)
