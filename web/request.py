"""Reading requests: the actor, the request id, ``If-Match`` and bounded bodies.

Every resource reads its request through these, so every endpoint bounds
bodies the same way, names the actor the same way (the token's user) and
tags its commits with the same request id as the logs.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from falcon.asgi import Request

from gitstate.base import jsonbody
from gitstate.errors import BAD_REQUEST, GitStateError
from gitstate.gates.validation import InvalidRequest

from .auth import principal

#: Largest JSON body accepted, in bytes.
MAX_BODY = 64 * 1024
#: Seconds a client may take to send a whole body; a slower one is refused
#: (408), so a body sent a byte at a time holds a connection, never a thread.
BODY_TIMEOUT = 30.0
#: Header naming the acting user until authentication supplies one.
ACTOR_HEADER = "X-Gitstate-Actor"
ANONYMOUS = "anonymous"
_MAX_ACTOR = 100


class BodyTooLarge(InvalidRequest):
    """The request body is larger than the endpoint takes (:data:`MAX_BODY` for JSON)."""

    def __init__(self, size: int | None, limit: int = MAX_BODY) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"Request body larger than {limit} bytes")


class BodyTooSlow(GitStateError):
    """The client did not send its body within :data:`BODY_TIMEOUT` seconds."""

    status = 408
    kind = BAD_REQUEST

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(f"Request body not received within {timeout:g} seconds")


def actor(req: Request) -> str:
    """Return who is acting: the token's user.

    With authentication turned off there is no user; the
    ``X-Gitstate-Actor`` header names one for the audit trail, or
    ``anonymous``. This is the one place the actor is decided.
    """
    who = principal(req)
    if who.token_id is not None:
        return who.user
    value = req.get_header(ACTOR_HEADER) or ""
    value = "".join(ch for ch in value if ch.isprintable()).strip()[:_MAX_ACTOR]
    return value or ANONYMOUS


def request_id(req: Request) -> str:
    """Return the request's id.

    The one the request log settled for it; else the client's
    ``X-Request-Id`` (bounded); else a fresh one.
    """
    settled = getattr(req.context, "request_id", None)
    if settled:
        return str(settled)
    value = req.get_header("X-Request-Id") or ""
    value = "".join(ch for ch in value if ch.isprintable() and not ch.isspace())[:100]
    return value or uuid.uuid4().hex


def expected(req: Request) -> list[str] | None:
    """Return the commits named by ``If-Match``; None when any state will do."""
    header = req.get_header("If-Match")
    if header is None:
        return None
    tags = []
    for item in header.split(","):
        tag = item.strip().removeprefix("W/").strip('"')
        if tag == "*":
            return None
        if tag:
            tags.append(tag)
    return tags


async def read_body(req: Request, limit: int) -> bytes:
    """Read the whole body, refusing one over ``limit`` bytes or one sent too slowly.

    Raises:
        BodyTooLarge: the body (declared or actual) is over ``limit``.
        BodyTooSlow: it did not arrive within :data:`BODY_TIMEOUT` seconds.
    """
    length = req.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(length, limit)
    try:
        data = await asyncio.wait_for(req.stream.read(limit + 1), BODY_TIMEOUT)
    except TimeoutError as ex:
        raise BodyTooSlow(BODY_TIMEOUT) from ex
    if len(data) > limit:
        raise BodyTooLarge(None, limit)
    return data


async def read_json(req: Request) -> Any:
    """Read and parse the body, refusing anything over :data:`MAX_BODY`.

    Raises:
        BodyTooLarge: the body (declared or actual) is too large.
        BodyTooSlow: the body arrived too slowly.
        InvalidRequest: the body is not JSON (``Json was not valid``).
    """
    data = await read_body(req, MAX_BODY)
    try:
        return jsonbody.loads(data)
    except jsonbody.JsonSyntaxError as ex:
        raise InvalidRequest("Json was not valid") from ex  # gatekeeper's words
    except jsonbody.JsonRefused as ex:
        raise InvalidRequest(f"Json was not valid: {ex.reason}") from ex
