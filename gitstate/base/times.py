"""Times as gitstate reads and writes them.

Durations in configuration and requests are seconds or strings with a unit
(``"30s"``, ``"10m"``); timestamps in records are what Code Manager writes:
ISO-8601 in UTC with milliseconds and a ``Z``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(value: Any) -> float:
    """Parse a duration: a number of seconds or a string like ``"10m"``.

    Raises:
        ValueError: the value is not a duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(unit) and text[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * _UNITS[unit]
    if text.replace(".", "", 1).isdigit():
        return float(text)
    raise ValueError(f"not a duration: {value!r} (use e.g. 30, '30s', '10m', '1h', '1d')")


def now_iso(clock: Callable[[], float] = time.time) -> str:
    """Return the time as Code Manager writes it: ISO-8601, milliseconds, ``Z``."""
    stamp = datetime.fromtimestamp(clock(), UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """Parse a timestamp written by :func:`now_iso`."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
