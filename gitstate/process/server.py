"""Run the ASGI app under gunicorn and uvicorn, embedded in the ``gitstate`` command.

No preloading: each worker imports the app and opens its repositories after
the fork, as libgit2 handles must not be shared between processes.

Metrics: the workers record into ``PROMETHEUS_MULTIPROC_DIR``, which must be
set before gunicorn forks them (``gitstate serve`` sets it for all its
children; ``gitstate web`` on its own sets it here), and gunicorn's
``child_exit`` hook tells prometheus-client when a worker is gone.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as GunicornLogger

from gitstate.base import logs, metrics, shutdown
from gitstate.config import Config
from gitstate.process.asgi_worker import WORKER_CLASS

CONFIG_ENV = "GITSTATE_CONFIG"


class GitstateServer(BaseApplication):  # type: ignore[misc]
    """A gunicorn application whose workers each build the app themselves."""

    def __init__(self, config: Config, config_path: str, **overrides: Any) -> None:
        self._gitstate_config = config
        self._config_path = config_path
        self._overrides = overrides
        super().__init__()

    def load_config(self) -> None:
        """Hand gunicorn its settings from the gitstate config."""
        settings = {
            "bind": [self._gitstate_config.listen],
            "workers": max(1, self._gitstate_config.workers),
            # Blocking work runs in each worker's pool of ``threads`` threads
            # (gitstate.web.app); waiting and slow clients hold none.
            "worker_class": WORKER_CLASS,
            "preload_app": False,
            "limit_request_line": 8190,
            "graceful_timeout": 10,
            "timeout": 60,
            "proc_name": "gitstate",
            "child_exit": _child_exit,
            "post_worker_init": _post_worker_init,
            "logger_class": _Logger,
            # gunicorn's own lines in the same format as the app's (JSON by default).
            "logconfig_dict": logs.dict_config(self._gitstate_config.logging),
        }
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn >= 27 opens a control socket in $HOME by default; two
            # servers on one host would fight over it and we do not use it.
            settings["control_socket_disable"] = True
        settings.update(self._overrides)
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """Build the app inside the worker (called after fork)."""
        os.environ[CONFIG_ENV] = self._config_path
        from gitstate.web.app import create_app

        return create_app(Config.load(self._config_path))


class _Logger(GunicornLogger):  # type: ignore[misc]
    """gunicorn's logger without its access line: the web layer writes its own.

    PERF: silencing ``gunicorn.access`` by level is not enough, since
    gunicorn formats every request's atoms before it asks the logger.
    """

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        """Write nothing (see :mod:`gitstate.web.requestlog`)."""


def _post_worker_init(worker: Any) -> None:
    """Gunicorn hook: load the metrics; on SIGTERM/SIGQUIT, end long polls first.

    gunicorn installed its handlers before this hook runs; they are wrapped
    so that they first call :func:`gitstate.base.shutdown.stop`.
    """
    metrics.start()
    for signum in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
        previous = signal.getsignal(signum)
        if callable(previous):
            signal.signal(signum, _stop_then(previous))


def _stop_then(handler: Any) -> Any:
    def handle(signum: int, frame: Any) -> None:
        shutdown.stop()
        handler(signum, frame)

    return handle


def _child_exit(server: Any, worker: Any) -> None:
    """Gunicorn hook: forget the live gauges of a worker that exited."""
    metrics.mark_process_dead(worker.pid)


def serve(config: Config, config_path: str, **overrides: Any) -> None:
    """Run gunicorn in the foreground until it is told to stop."""
    os.environ[CONFIG_ENV] = config_path
    if not metrics.multiprocess():
        # Run on its own, not under ``gitstate serve``: start with a clean slate.
        directory = metrics.configured_directory(
            config.metrics.enabled, config.metrics.dir, config.datadir
        )
        if directory is not None:
            metrics.prepare_directory(directory)
    GitstateServer(config, config_path, **overrides).run()
