"""Log output of every gitstate process: JSON lines carrying the request id.

The web layer binds each request's id with :func:`bind_request` (a
context variable, so threads of one gunicorn worker never mix them up), and
the :class:`RequestContext` filter on every handler stamps it on each line
logged while the request runs, whoever logs it. gunicorn's own lines go
through the same handler via :func:`dict_config`, which is handed to
gunicorn as ``logconfig_dict``.

The ``logging`` config section:

``json``
    ``true`` for one JSON object per line (for journald, Loki, ...),
    ``false`` for plain text, ``auto`` (the default) for JSON unless stderr
    is a terminal, so ``gitstate demo`` stays readable while a service
    under systemd logs JSON.
``level``
    ``DEBUG``, ``INFO`` (default), ``WARNING`` or ``ERROR``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import logging.config
import sys
from collections.abc import Mapping
from typing import Any

from gitstate.errors import GitStateError

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gitstate_request_id", default=None
)
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class LoggingConfigError(GitStateError, ValueError):
    """The ``logging`` config section has a bad value."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"logging: {detail}")


@dataclasses.dataclass(frozen=True)
class LogSettings:
    """The ``logging`` config section.

    Attributes:
        json: write JSON lines; None means "JSON unless stderr is a terminal".
        level: the lowest level written.
    """

    json: bool | None = None
    level: str = "INFO"

    @classmethod
    def from_mapping(cls, data: Any) -> LogSettings:
        """Read the section (missing keys take their defaults).

        Raises:
            LoggingConfigError: a value is not one of those documented.
        """
        data = data or {}
        if not isinstance(data, Mapping):
            raise LoggingConfigError("must be a mapping")
        json = data.get("json", "auto")
        if json not in (True, False, "auto"):
            raise LoggingConfigError(f"json must be true, false or auto, not {json!r}")
        level = str(data.get("level", "INFO")).upper()
        if level not in _LEVELS:
            raise LoggingConfigError(f"level must be one of {', '.join(_LEVELS)}")
        return cls(json=None if json == "auto" else bool(json), level=level)

    def use_json(self) -> bool:
        """Tell whether to write JSON, resolving ``auto`` against stderr."""
        if self.json is not None:
            return self.json
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


def dict_config(settings: LogSettings) -> dict[str, Any]:
    """Return a :func:`logging.config.dictConfig` mapping (gunicorn's ``logconfig_dict``).

    Everything, gunicorn's error log included, goes to stderr through one
    handler. gunicorn's access log is silenced: the web layer writes its own
    access line, with the request id and the acting user.
    """
    if settings.use_json():
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s %(process)d",
            "rename_fields": {"levelname": "level", "name": "logger", "process": "pid"},
            "timestamp": "time",
        }
        placeholder = None
    else:
        formatter = {"format": TEXT_FORMAT}
        placeholder = "-"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request": {"()": RequestContext, "placeholder": placeholder}},
        "formatters": {"gitstate": formatter},
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


def configure(raw: Mapping[str, Any]) -> LogSettings:
    """Set up this process's logging from the config's ``logging`` section."""
    settings = LogSettings.from_mapping(raw.get("logging"))
    logging.config.dictConfig(dict_config(settings))
    return settings
