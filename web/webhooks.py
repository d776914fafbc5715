"""``POST /code-manager/v1/webhook``: git hosts' push notifications.

The raw body is read here, bounded, because GitHub's signature is an HMAC of
the exact bytes sent; everything else is :mod:`gitstate.codemanager.webhooks`. Answers
and errors use Code Manager's shapes (``{"status":"OK"}``;
``{"kind","msg","details"}``).
"""

from __future__ import annotations

import falcon

from gitstate.codemanager.webhooks import (
    InvalidSignature,
    MalformedPayload,
    UnrecognizedWebhookType,
)
from gitstate.deploys.queue import BAD_REQUEST
from gitstate.services import Services

from .auth import principal
from .deploys import PREFIX
from .request import discard_body, request_id

#: Largest webhook body accepted, in bytes (GitHub caps payloads at 25 MB,
#: but a push of a few branches is a few kilobytes).
MAX_WEBHOOK_BODY = 1024 * 1024


class WebhookResource:
    """Queue deploys and remove environments as a git host's push says.

    ``?type=`` names the provider, ``?prefix=`` the environment prefix;
    ``?token=`` is accepted for Code Manager compatibility and checked by
    authentication, never logged.
    """

    #: Token required unless ``auth.webhook_authentication`` is off (see web/auth.py).
    auth_policy = "webhook"

    def __init__(self, services: Services) -> None:
        self._services = services

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer ``{"status":"OK"}`` once the push has been acted on."""
        length = req.content_length
        body = b""
        if length is None or length <= MAX_WEBHOOK_BODY:
            body = req.bounded_stream.read(MAX_WEBHOOK_BODY + 1)
        if len(body) > MAX_WEBHOOK_BODY or (length or 0) > MAX_WEBHOOK_BODY:
            discard_body(req)
            resp.status = falcon.HTTP_413
            resp.media = {
                "kind": BAD_REQUEST,
                "msg": f"Webhook body larger than {MAX_WEBHOOK_BODY} bytes",
            }
            return
        try:
            result = self._services.webhooks.receive(
                req.get_param("type"),
                body,
                {name: str(value) for name, value in req.headers.items()},
                prefix=req.get_param("prefix"),
                content_type=req.content_type,
                request_id=request_id(req),
                principal=principal(req),
            )
        except (UnrecognizedWebhookType, MalformedPayload) as ex:
            resp.status = falcon.HTTP_400
            resp.media = ex.to_json()
            return
        except InvalidSignature as ex:
            resp.status = falcon.HTTP_401
            resp.media = ex.to_json()
            return
        resp.media = result.to_json()


def add_routes(app: falcon.App, services: Services) -> None:
    """Mount the webhook route."""
    app.add_route(f"{PREFIX}/webhook", WebhookResource(services))
