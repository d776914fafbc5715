"""The WSGI application: routes and error handling, built per worker.

gunicorn calls :func:`create_app` in each worker after it forks, so every
worker opens its own repository handles (libgit2 handles must not cross a
fork).
"""

from __future__ import annotations

import os

import falcon

from gitstate.config import Config
from gitstate.services import Services

from . import (
    auth,
    deploys,
    errors,
    filesync,
    gates,
    legacy,
    metrics,
    openapi,
    request,
    requestlog,
    status,
    ui,
    watch,
    webhooks,
)
from .health import HealthResource

#: Environment variable through which ``gitstate serve`` hands workers the config.
CONFIG_ENV = "GITSTATE_CONFIG"


def create_app(config: Config | None = None, services: Services | None = None) -> falcon.App:
    """Build the Falcon application.

    Args:
        config: the service configuration; read from the file named by
            ``$GITSTATE_CONFIG`` when omitted (the gunicorn entry point).
        services: an existing service layer (tests share one with the app).
    """
    if services is None:
        if config is None:
            path = os.environ.get(CONFIG_ENV)
            if not path:
                raise RuntimeError(f"set {CONFIG_ENV} to the config file")
            config = Config.load(path)
        services = Services(config)
    app = falcon.App(
        middleware=[
            request.DrainUnreadBodies(),
            requestlog.RequestLogMiddleware(),
            metrics.MetricsMiddleware(),
            auth.AuthMiddleware(services),
        ]
    )
    app.req_options.strip_url_path_trailing_slash = False
    errors.register(app)
    app.add_route("/internal/health", HealthResource(services))
    status.add_routes(app, services)
    gates.add_routes(app, services)
    deploys.add_routes(app, services)
    webhooks.add_routes(app, services)
    filesync.add_routes(app, services)
    watch.add_routes(app, services)
    metrics.add_routes(app, services)
    ui.add_routes(app)
    legacy.add_routes(app)
    openapi.add_routes(app)
    return app
