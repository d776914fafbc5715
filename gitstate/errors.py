"""The root of gitstate's exception tree.

Only the base class lives here. Each concrete error is defined next to the
code that raises it and carries the data a caller needs (a path, a ref, a
gate), so that ``gitstate.web`` can turn it into an HTTP answer in one place.
"""

from __future__ import annotations


class GitStateError(Exception):
    """Base class of every error gitstate raises on purpose."""
