"""``POST /code-manager/v1/webhook``: git hosts' push notifications.

The raw body is read here, bounded, because GitHub's signature is an HMAC of
the exact bytes sent; everything else is :mod:`gitstate.codemanager.webhooks`. Answers
and errors use Code Manager's shapes (``{"status":"OK"}``;
``{"kind","msg","details"}``, written by :mod:`gitstate.web.errors`).
"""

from __future__ import annotations

import falcon.asgi
from falcon.asgi import Request, Response

from gitstate.base.blocking import Blocking
from gitstate.codemanager.webhooks import MAX_PAYLOAD, PayloadTooLarge
from gitstate.services import Services

from .auth import principal
from .deploys import PREFIX
from .request import BodyTooLarge, read_body, request_id


class WebhookResource:
    """Queue deploys and remove environments as a git host's push says.

    ``?type=`` names the provider, ``?prefix=`` the environment prefix;
    ``?token=`` is accepted for Code Manager compatibility and checked by
    authentication, never logged.
    """

    #: Token required unless ``auth.webhook_authentication`` is off (see web/auth.py);
    #: then the webhook service wants a token or the type's secret.
    auth_policy = "webhook"

    def __init__(self, services: Services, run: Blocking) -> None:
        self._services = services
        self._run = run

    async def on_post(self, req: Request, resp: Response) -> None:
        """Answer ``{"status":"OK"}`` once the push has been acted on."""
        try:
            body = await read_body(req, MAX_PAYLOAD)
        except BodyTooLarge as ex:
            raise PayloadTooLarge(MAX_PAYLOAD) from ex
        result = await self._run(
            self._services.webhooks.receive,
            req.get_param("type"),
            body,
            {name: str(value) for name, value in req.headers.items()},
            prefix=req.get_param("prefix"),
            content_type=req.content_type,
            request_id=request_id(req),
            principal=principal(req),
        )
        resp.media = result.to_json()


def add_routes(app: falcon.asgi.App, services: Services, run: Blocking) -> None:
    """Mount the webhook route."""
    app.add_route(f"{PREFIX}/webhook", WebhookResource(services, run))
