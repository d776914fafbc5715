r"""Parse a JSON request body without letting its shape hurt the server.

``json.loads`` recurses once per nesting level, so ``[[[[...]]]]`` a few
thousand deep raises ``RecursionError`` (a 500, not a client error), and a
structure just under the interpreter's limit would recurse again in every
later walk (the YAML encoder, the validators). JSON also lets a string hold
a lone UTF-16 surrogate (``"\ud800"``), which no UTF-8 file, git object or
log line can carry. Both are the client's mistake; this module refuses them
as :class:`JsonRefused`, a ``ValueError``, which every caller already
treats as "not valid JSON".
"""

from __future__ import annotations

import json
from typing import Any

from gitstate.errors import GitStateError

#: Deepest nesting of arrays and objects a body may have. The deepest body
#: any endpoint takes (a webhook's commits and their file lists) is 5.
MAX_DEPTH = 64


class JsonRefused(GitStateError, ValueError):
    """A body is not JSON gitstate will take: unparsable, too deep, or not UTF-8 text.

    Attributes:
        reason: what is wrong with it.
    """

    status = 400

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class JsonSyntaxError(JsonRefused):
    """The text is not JSON at all (as opposed to JSON of a refused shape)."""


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``data`` as JSON; refuse deep nesting and lone surrogates.

    Raises:
        JsonRefused: the text is not JSON, nests deeper than ``max_depth``,
            or holds a string that is not valid Unicode.
    """
    try:
        value = json.loads(data)
    except RecursionError:
        raise JsonRefused(f"nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as ex:
        raise JsonSyntaxError(f"not valid JSON: {ex}") from ex
    _check(value, max_depth)
    return value


def _check(value: Any, max_depth: int) -> None:
    """Walk ``value`` without recursion: depth and text of every string."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _text(item)
        elif isinstance(item, list | dict):
            if depth >= max_depth:
                raise JsonRefused(f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    _text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JsonRefused("a string holds a lone UTF-16 surrogate (U+D800 to U+DFFF)") from None
