"""Who is asking: tokens checked once per request, before any resource runs.

The token comes from ``X-Authentication`` or ``?token=`` (as Code Manager
takes it). Writes always need one (when authentication is on); reads as
:func:`gitstate.auth.read_needs_token` says (``auth.anonymous_reads``). A resource may declare
``auth_policy``: ``"public"`` (health) or ``"webhook"`` (token unless
``auth.webhook_authentication`` is off; a token, when presented, is checked
here either way, and the webhook service then admits a request only if a
token or the type's own secret vouches for it). The principal lands in ``req.context.principal``;
the services check permissions against it. Refusals (:class:`gitstate.auth.AuthError`) are
answered by :mod:`gitstate.web.errors`, like every other error.
"""

from __future__ import annotations

from typing import Any

from falcon.asgi import Request, Response

from gitstate.auth import ANONYMOUS, Principal, read_needs_token
from gitstate.base.blocking import Blocking
from gitstate.services import Services

TOKEN_HEADER = "X-Authentication"
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def token_of(req: Request) -> str | None:
    """Return the token a request presents, if any."""
    return req.get_header(TOKEN_HEADER) or req.get_param("token") or None


def principal(req: Request) -> Principal:
    """Return the request's principal (anonymous admin when auth is off)."""
    return getattr(req.context, "principal", ANONYMOUS)


def require(req: Request, permission: str, what: str) -> Principal:
    """Return the principal if it holds ``permission``; raise otherwise.

    Raises:
        PermissionDenied: it does not.
    """
    who = principal(req)
    who.require(permission, what)
    return who


class AuthMiddleware:
    """Authenticate every request routed to a resource."""

    def __init__(self, services: Services, run: Blocking) -> None:
        self._tokens = services.tokens
        self._run = run

    async def process_resource(
        self, req: Request, resp: Response, resource: Any, params: dict[str, Any]
    ) -> None:
        """Set ``req.context.principal`` or refuse the request."""
        policy = getattr(resource, "auth_policy", "default")
        settings = self._tokens.settings
        if policy == "public":
            req.context.principal = (
                ANONYMOUS if not settings.enabled else Principal("anonymous", frozenset())
            )
            return
        if policy == "webhook":
            required = settings.webhook_authentication
        else:
            required = req.method not in _READS or read_needs_token(settings, req.path)
        token = token_of(req)
        if token is None and not required:
            req.context.principal = self._tokens.authenticate(None, required=False)
            return
        # A token is looked up in the state branch: blocking work.
        req.context.principal = await self._run(self._tokens.authenticate, token, required=required)
