"""The ASGI application: routes and error handling, built per worker.

gunicorn calls :func:`create_app` in each worker after it forks, so every
worker opens its own repository handles (libgit2 handles must not cross a
fork). Responders are coroutines on uvicorn's event loop: they read the
request there, hand blocking work (git, flock) to a pool of ``threads``
threads (:class:`~gitstate.base.blocking.Blocking`), and wait for events
(a state-branch commit, a storage publish, a check-in) as asyncio tasks, so
a waiting or slow client costs memory, not a thread.
"""

from __future__ import annotations

import os

import falcon.asgi

from gitstate.base.blocking import Blocking
from gitstate.config import Config
from gitstate.services import Services

from . import (
    audit,
    auth,
    deploys,
    environments,
    errors,
    filesync,
    gates,
    legacy,
    metrics,
    openapi,
    requestlog,
    status,
    ui,
    watch,
    webhooks,
    whoami,
)
from .health import HealthResource

#: Environment variable through which ``gitstate serve`` hands workers the config.
CONFIG_ENV = "GITSTATE_CONFIG"


def create_app(config: Config | None = None, services: Services | None = None) -> falcon.asgi.App:
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
    run = Blocking(services.config.threads)
    app = falcon.asgi.App(
        middleware=[
            requestlog.RequestLogMiddleware(),
            metrics.MetricsMiddleware(),
            auth.AuthMiddleware(services, run),
        ]
    )
    app.req_options.strip_url_path_trailing_slash = False
    errors.register(app)
    app.add_route("/internal/health", HealthResource(services))
    status.add_routes(app, services, run)
    gates.add_routes(app, services, run)
    deploys.add_routes(app, services, run)
    environments.add_routes(app, services, run)
    audit.add_routes(app, services, run)
    whoami.add_routes(app, services)
    webhooks.add_routes(app, services, run)
    filesync.add_routes(app, services, run)
    watch.add_routes(app, services, run)
    metrics.add_routes(app, services, run)
    ui.add_routes(app)
    legacy.add_routes(app)
    openapi.add_routes(app)
    return app
