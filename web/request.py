"""Reading requests: the actor, the request id, ``If-Match`` and bounded JSON bodies.

Every resource reads its request through these, so every endpoint bounds
bodies the same way, names the actor the same way (the token's user) and
tags its commits with the same request id as the logs.
"""

from __future__ import annotations

import uuid
from typing import Any

import falcon

from gitstate.base import jsonbody
from gitstate.gates.validation import InvalidRequest

from .auth import principal

#: Largest JSON body accepted, in bytes.
MAX_BODY = 64 * 1024
#: Most of an unread body read and thrown away. gunicorn (gthread) drains
#: at most 64 KiB of a body the app left unread and otherwise closes the
#: keep-alive connection without a word, after answering it as kept alive:
#: the client's next request on it then fails with a connection reset.
DRAIN_LIMIT = 16 * 1024 * 1024
#: Header naming the acting user until authentication supplies one.
ACTOR_HEADER = "X-Gitstate-Actor"
ANONYMOUS = "anonymous"
_MAX_ACTOR = 100


class BodyTooLarge(InvalidRequest):
    """The request body is larger than :data:`MAX_BODY`."""

    def __init__(self, size: int | None) -> None:
        self.size = size
        super().__init__(f"Request body larger than {MAX_BODY} bytes")


def actor(req: falcon.Request) -> str:
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


def request_id(req: falcon.Request) -> str:
    """Return the client's ``X-Request-Id`` (bounded) or a fresh one."""
    value = req.get_header("X-Request-Id") or ""
    value = "".join(ch for ch in value if ch.isprintable() and not ch.isspace())[:100]
    return value or uuid.uuid4().hex


def expected(req: falcon.Request) -> list[str] | None:
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


def body_stream(req: falcon.Request) -> Any:
    """Return the stream to read the body from.

    Falcon's ``bounded_stream`` reads nothing when no length is declared, so
    a chunked body (which gunicorn hands over as a stream it ends itself,
    ``wsgi.input_terminated``) is read from the raw stream instead.
    """
    if req.content_length is None and getattr(req, "env", {}).get("wsgi.input_terminated"):
        return req.stream
    return req.bounded_stream


def discard_body(req: falcon.Request, limit: int = DRAIN_LIMIT) -> None:
    """Read and drop what is left of a body (up to ``limit`` bytes).

    So the answer to a refused or oversized request arrives on a connection
    that stays usable. A body declared larger than ``limit`` is left alone
    (the server closes that connection).
    """
    length = req.content_length
    if length is not None and length > limit:
        return
    remaining = limit
    while remaining > 0:
        chunk = body_stream(req).read(min(64 * 1024, remaining))
        if not chunk:
            return
        remaining -= len(chunk)


def read_json(req: falcon.Request) -> Any:
    """Read and parse the body, refusing anything over :data:`MAX_BODY`.

    Raises:
        BodyTooLarge: the body (declared or actual) is too large.
        InvalidRequest: the body is not JSON (``Json was not valid``).
    """
    length = req.content_length
    if length is not None and length > MAX_BODY:
        discard_body(req)
        raise BodyTooLarge(length)
    data = body_stream(req).read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        discard_body(req)
        raise BodyTooLarge(None)
    try:
        return jsonbody.loads(data)
    except jsonbody.JsonSyntaxError as ex:
        raise InvalidRequest("Json was not valid") from ex  # gatekeeper's words
    except jsonbody.JsonRefused as ex:
        raise InvalidRequest(f"Json was not valid: {ex.reason}") from ex


class DrainUnreadBodies:
    """Read what is left of any request's body before its answer goes out.

    Refusals that never read the body (a bad token, an unknown route, a
    wrong method), and the odd request that sends a body nobody reads (a
    GET's), would otherwise leave it unread: gunicorn's gthread worker then
    closes a connection it answered as kept alive (see :data:`DRAIN_LIMIT`),
    and gitstate's sync worker could not close an answered connection at
    once (:mod:`gitstate.process.sync_worker`). A body already read costs one empty
    read.
    """

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        """Drain the rest of the body, if the request has one."""
        if req.content_length or req.env.get("wsgi.input_terminated"):
            discard_body(req)
