"""Log output of every gitstate process: JSON lines carrying the request id.

The web layer binds each request's id with :func:`bind_request` (a
context variable, so threads of one gunicorn worker never mix them up), and
the :class:`RequestContext` filter on every handler stamps it on each line
logged while the request runs, whoever logs it. gunicorn's own lines go
through the same handler via :func:`dict_config`, which is handed to
gunicorn as ``logconfig_dict``.

The ``logging`` config section (declared in :mod:`gitstate.settings`):
``json`` is ``true`` for one JSON object per line (for journald, Loki, ...),
``false`` for plain text, ``auto`` (the default) for JSON unless stderr is a
terminal, so ``gitstate demo`` stays readable while a service under systemd
logs JSON; ``level`` is the lowest level written.
"""

from __future__ import annotations

import contextvars
import logging
import logging.config
import sys
from typing import Any, Protocol

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gitstate_request_id", default=None
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class LogOptions(Protocol):
    """What logging needs of the ``logging`` section (``gitstate.settings.LogSettings``).

    Attributes:
        json: write JSON lines; None means "JSON unless stderr is a terminal".
        level: the lowest level written.
    """

    @property
    def json(self) -> bool | None: ...  # noqa: D102

    @property
    def level(self) -> str: ...  # noqa: D102


def use_json(options: LogOptions) -> bool:
    """Tell whether to write JSON, resolving ``auto`` (None) against stderr."""
    if options.json is not None:
        return options.json
    isatty = getattr(sys.stderr, "isatty", None)
    return not (isatty is not None and isatty())


def bind_request(request_id: str) -> contextvars.Token[str | None]:
    """Make ``request_id`` part of every line logged in this context."""
    return _request_id.set(request_id)


def unbind_request(token: contextvars.Token[str | None]) -> None:
    """Undo :func:`bind_request`."""
    try:
        _request_id.reset(token)
    except ValueError:  # bound in another context (should not happen); just clear it
        _request_id.set(None)


def current_request_id() -> str | None:
    """Return the id of the request being handled, if any."""
    return _request_id.get()


class RequestContext(logging.Filter):
    """Stamp ``request_id`` on every record passing a handler.

    Args:
        placeholder: the value outside a request (JSON leaves the key out;
            text shows ``-``).
    """

    def __init__(self, placeholder: str | None = None) -> None:
        super().__init__()
        self._placeholder = placeholder

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the id; never drops a record."""
        if getattr(record, "request_id", None) is None:
            value = _request_id.get() or self._placeholder
            if value is not None:
                record.request_id = value
        return True


_JSON_FORMAT: dict[str, Any] = {
    "fmt": "%(levelname)s %(name)s %(message)s %(process)d",
    "rename_fields": {"levelname": "level", "name": "logger", "process": "pid"},
    "timestamp": "time",
}


def formatter(*, json: bool) -> logging.Formatter:
    """Return the formatter of gitstate's log lines (JSON or plain text)."""
    if json:
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter(**_JSON_FORMAT)
    return logging.Formatter(TEXT_FORMAT)


def dict_config(settings: LogOptions) -> dict[str, Any]:
    """Return a :func:`logging.config.dictConfig` mapping (gunicorn's ``logconfig_dict``).

    Everything, gunicorn's error log included, goes to stderr through one
    handler. gunicorn's access log is silenced: the web layer writes its own
    access line, with the request id and the acting user.
    """
    if use_json(settings):
        spec: dict[str, Any] = {"()": "pythonjsonlogger.json.JsonFormatter", **_JSON_FORMAT}
        placeholder = None
    else:
        spec = {"format": TEXT_FORMAT}
        placeholder = "-"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request": {"()": RequestContext, "placeholder": placeholder}},
        "formatters": {"gitstate": spec},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "gitstate",
                "filters": ["request"],
            }
        },
        "root": {"level": settings.level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": settings.level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
        },
    }


def configure(settings: LogOptions) -> None:
    """Set up this process's logging from the config's ``logging`` section."""
    logging.config.dictConfig(dict_config(settings))
