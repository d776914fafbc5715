"""Words for commit subjects: how a change to the gates describes itself.

Each commit on the state branch says in one line what it did
(``alice takes code/app/live with new ticket 1c2d3e4f``); the history of a
gate shows these lines, so they name gates and tickets briefly.
"""

from __future__ import annotations

from collections.abc import Iterable


def labels(items: list[str], limit: int = 3) -> str:
    """Join ``items`` with commas, naming at most ``limit`` and counting the rest."""
    if len(items) <= limit:
        return ", ".join(items)
    return f"{', '.join(items[:limit])} and {len(items) - limit} more"


def short(text: str, limit: int = 60) -> str:
    """Return ``text`` on one line, cut to ``limit`` characters with ``...``."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def dropped(ids: Iterable[str]) -> str:
    """Say which expired tickets a write dropped (empty when none), to end a subject."""
    unique = sorted(set(ids))
    if not unique:
        return ""
    plural = "s" if len(unique) > 1 else ""
    return f" (drops expired ticket{plural} {labels([i[:8] for i in unique])})"
