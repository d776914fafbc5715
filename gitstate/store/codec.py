"""Deterministic YAML bytes for state records.

Every record on the state branch is one YAML mapping. Two writers that hold
the same data must produce the same bytes, otherwise git would record
changes nobody made and diffs in the audit trail would be noise. So the
encoder fixes everything that YAML leaves free: ``schema_version`` comes
first, all other keys are sorted at every level, collections are written in
block style, long strings are never folded, and strings that YAML would
read back as something else (``'no'``, ``'1.10'``, ``'2026-01-01'``) are
quoted.
"""

from __future__ import annotations

import functools
import json
import math
import re
import threading
from collections.abc import Mapping
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.resolver import VersionedResolver

from gitstate.errors import UNAVAILABLE, GitStateError

#: Key every record carries so that a reader can tell which layout it holds.
SCHEMA_KEY = "schema_version"

_local = threading.local()


class RecordError(GitStateError, ValueError):
    """A record on the state branch cannot be read or written.

    Attributes:
        path: path of the record inside the state tree.
        commit: the state commit the record was read from, if known.
        detail: what is wrong with it.
    """

    # The request is fine, the data is not: 503 tells clients to retry
    # once an operator has fixed the record.
    status = 503
    kind = UNAVAILABLE
    public_fields = (("path", "path"),)

    def __init__(self, path: str, detail: str, commit: str | None = None) -> None:
        self.path = path
        self.detail = detail
        self.commit = commit
        where = f" at state commit {commit[:12]}" if commit else ""
        super().__init__(f"record {path}{where}: {detail}")


def _yaml() -> YAML:
    """Return this thread's YAML instance (ruamel instances are not thread-safe)."""
    yaml = getattr(_local, "yaml", None)
    if yaml is None:
        yaml = YAML(typ="safe")
        _local.yaml = yaml
    return yaml


# PERF: ruamel's emitter costs ~120 us a record, most of a state commit's
# budget, so records are written by the small emitter below. It only ever
# emits plain data in block style, asks ruamel's own resolver whether a
# string may stay unquoted, and is checked against ruamel's loader by
# round-trip tests (tests/unit/test_codec.py). Reading stays with ruamel.
_PLAIN = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./@+=-]*(?: [A-Za-z0-9_./@+=-]+)*")
# Characters left unescaped in a double-quoted string: YAML's printable set,
# less NEL and the Unicode line separators, which YAML 1.1 readers treat as
# line breaks.
_PRINTABLE = re.compile(
    "[^\\x09\\x0a\\x0d\\x20-\\x7e\\xa0-\\u2027\\u202a-\\ud7ff\\ue000-\\ufffd\\U00010000-\\U0010ffff]"
)
_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_KEY = 512  # YAML allows implicit keys of up to 1024 characters
_STR_TAG = "tag:yaml.org,2002:str"
_resolver = VersionedResolver(version=(1, 2))


def _string(text: str, path: str) -> str:
    if len(text) <= _CACHED_LENGTH:
        quoted = _quoted_cached(text)
        if quoted is not None:
            return quoted
    elif _SURROGATE.search(text) is None:
        return _quoted(text)
    raise RecordError(path, "strings must be valid Unicode (found a lone surrogate)")


_CACHED_LENGTH = 64  # keys, names, states and timestamps repeat in every record


@functools.lru_cache(maxsize=8192)
def _quoted_cached(text: str) -> str | None:
    return None if _SURROGATE.search(text) else _quoted(text)


def _quoted(text: str) -> str:
    """Return ``text`` as a YAML scalar: plain when it reads back as itself."""
    if _PLAIN.fullmatch(text) and _resolver.resolve(ScalarNode, text, (True, False)) == _STR_TAG:
        return text
    # A JSON string literal is a valid YAML double-quoted scalar; escape what
    # JSON leaves raw but YAML does not count as printable.
    quoted = json.dumps(text, ensure_ascii=False)
    return _PRINTABLE.sub(lambda match: f"\\u{ord(match.group()):04x}", quoted)


def _scalar(value: Any, path: str) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        return text if ("." in text or "e" in text) else text + ".0"
    if isinstance(value, str):
        return _string(value, path)
    raise RecordError(path, f"cannot store a value of type {type(value).__name__}")


#: Types that are certainly not containers; checked before the (slower) ABC test.
_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})


def _is_mapping(value: Any) -> bool:
    # PERF: isinstance against the Mapping ABC costs a few microseconds per
    # value, and a record has dozens; records are nearly always plain dicts.
    kind = type(value)
    if kind is dict:
        return True
    if kind in _SCALAR_TYPES or kind is list:
        return False
    return isinstance(value, Mapping)


def _is_container(value: Any) -> bool:
    kind = type(value)
    if kind is dict or kind is list:
        return True
    if kind in _SCALAR_TYPES:
        return False
    return isinstance(value, Mapping | list | tuple)


def _block(value: Any, indent: int, out: list[str], path: str) -> None:
    """Append the block-style lines of a non-empty mapping or sequence."""
    pad = " " * indent
    if _is_mapping(value):
        for key, item in value.items():
            if not isinstance(key, str) or len(key) > _MAX_KEY:
                raise RecordError(path, f"keys must be strings of at most {_MAX_KEY} characters")
            head = f"{pad}{_string(key, path)}:"
            if _is_container(item) and item:
                out.append(head)
                _block(item, indent + 2 if _is_mapping(item) else indent, out, path)
            else:
                out.append(f"{head} {_inline(item, path)}")
        return
    for item in value:
        if _is_container(item) and item:
            start = len(out)
            _block(item, indent + 2, out, path)
            out[start] = f"{pad}- {out[start][indent + 2 :]}"
        else:
            out.append(f"{pad}- {_inline(item, path)}")


def _inline(value: Any, path: str) -> str:
    if _is_mapping(value):
        return "{}"
    if isinstance(value, list | tuple):
        return "[]"
    return _scalar(value, path)


def _ordered(value: Any, top: bool = False) -> Any:
    """Return ``value`` with every mapping's keys in canonical order."""
    if _is_mapping(value):
        keys = sorted(value, key=str)
        if top and SCHEMA_KEY in value:
            keys.remove(SCHEMA_KEY)
            keys.insert(0, SCHEMA_KEY)
        return {key: _ordered(value[key]) for key in keys}
    if isinstance(value, list | tuple):
        return [_ordered(item) for item in value]
    return value


def encode(record: Mapping[str, Any], path: str = "<record>") -> bytes:
    """Serialise one record to canonical YAML bytes.

    Args:
        record: a mapping with an integer ``schema_version``; values are
            plain data (mappings with string keys, lists, strings, numbers,
            booleans, None).
        path: where the record will be stored; used in error messages.

    Raises:
        RecordError: the record has no valid ``schema_version`` or holds
            values YAML cannot represent.
    """
    version = record.get(SCHEMA_KEY) if isinstance(record, Mapping) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RecordError(path, f"{SCHEMA_KEY} must be a positive integer, got {version!r}")
    lines: list[str] = []
    _block(_ordered(record, top=True), 0, lines, path)
    return ("\n".join(lines) + "\n").encode("utf-8")


class _NotCanonical(Exception):
    """The text is not in the canonical form :func:`encode` writes."""


_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?[0-9]+\.[0-9]+(?:e[-+]?[0-9]+)?|-?[0-9]+(?:\.[0-9]+)?e[-+]?[0-9]+")
_SPECIAL = {"null": None, "true": True, "false": False, ".inf": math.inf, "-.inf": -math.inf}
_JSON = json.JSONDecoder()


def read_canonical(data: bytes) -> Any:
    """Parse bytes that :func:`encode` wrote, or return None for anything else.

    PERF: ruamel's C loader takes ~150 us for a small record, most of a
    commit's budget when writers read each other's records. The canonical
    form is a small subset of YAML (block style, plain scalars ruamel's
    resolver reads as strings, JSON-quoted strings, ``{}``/``[]``), so it is
    read here; any text outside it (a hand edit, a comment, another quoting
    style) returns None and ruamel reads it. Tests hold the two readers to
    the same answers.
    """
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return None
    if not lines or lines[-1] != "":
        return None
    lines.pop()
    try:
        value, end = _read_block(lines, 0, 0)
    except (_NotCanonical, ValueError):  # ValueError: not a JSON string after all
        return None
    return value if end == len(lines) else None


def _read_block(lines: list[str], pos: int, indent: int) -> tuple[Any, int]:
    """Read the mapping or sequence whose lines start at ``indent`` columns."""
    if pos >= len(lines):
        raise _NotCanonical
    first = lines[pos]
    if first.startswith(" " * indent + "- "):
        return _read_sequence(lines, pos, indent)
    return _read_mapping(lines, pos, indent)


def _read_mapping(lines: list[str], pos: int, indent: int) -> tuple[dict[str, Any], int]:
    mapping: dict[str, Any] = {}
    pad = " " * indent
    while (
        pos < len(lines)
        and lines[pos].startswith(pad)
        and lines[pos][indent : indent + 1] not in (" ", "-")
    ):
        key, rest = _split_key(lines[pos][indent:])
        if key in mapping:
            raise _NotCanonical  # ruamel reports duplicate keys
        if rest is None:  # "key:" then a nested block
            child = lines[pos + 1] if pos + 1 < len(lines) else ""
            if child.startswith(pad + "- "):
                mapping[key], pos = _read_sequence(lines, pos + 1, indent)
            elif child.startswith(pad + "  ") and child[indent + 2 : indent + 3] != " ":
                mapping[key], pos = _read_mapping(lines, pos + 1, indent + 2)
            else:
                raise _NotCanonical
        else:
            mapping[key] = _read_inline(rest)
            pos += 1
    if not mapping:
        raise _NotCanonical
    return mapping, pos


def _read_sequence(lines: list[str], pos: int, indent: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    marker = " " * indent + "- "
    while pos < len(lines) and lines[pos].startswith(marker):
        rest = lines[pos][indent + 2 :]
        if rest.startswith("- ") or _is_key_line(rest):
            # A nested block starts on the item's own line: read it as if
            # its first line were indented like the lines that follow it.
            shifted = [*lines[:pos], " " * (indent + 2) + rest, *lines[pos + 1 :]]
            item, pos = _read_block(shifted, pos, indent + 2)
            items.append(item)
        else:
            items.append(_read_inline(rest))
            pos += 1
    return items, pos


def _is_key_line(text: str) -> bool:
    try:
        return _split_key(text) is not None
    except _NotCanonical:
        return False


def _split_key(text: str) -> tuple[str, str | None]:
    """Split ``key: value`` (value None for ``key:``); raise if not a key line."""
    if text.startswith('"'):
        key, end = _JSON.raw_decode(text)
        if not isinstance(key, str):
            raise _NotCanonical
        rest = text[end:]
    else:
        colon = text.find(":")
        if colon <= 0:
            raise _NotCanonical
        key, rest = text[:colon], text[colon:]
        if _plain_type(key) is not str:
            raise _NotCanonical
    if rest == ":":
        return key, None
    if rest.startswith(": "):
        return key, rest[2:]
    raise _NotCanonical


def _plain_type(text: str) -> type | None:
    return str if _PLAIN.fullmatch(text) and _quoted_cached(text) == text else None


def _read_inline(text: str) -> Any:
    if text == "{}":
        return {}
    if text == "[]":
        return []
    if text in _SPECIAL:
        return _SPECIAL[text]
    if text == ".nan":
        return math.nan
    if text.startswith('"'):
        value, end = _JSON.raw_decode(text)
        if end != len(text) or not isinstance(value, str):
            raise _NotCanonical
        return value
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if _plain_type(text) is str:
        return text
    raise _NotCanonical


def decode(data: bytes, path: str = "<record>", commit: str | None = None) -> dict[str, Any]:
    """Parse canonical YAML bytes back into a record.

    Raises:
        RecordError: the bytes are not YAML, not a mapping, or carry no
            valid ``schema_version``; the error names ``path``.
    """
    try:
        value = read_canonical(data)
        if value is None:
            value = _yaml().load(data)
    except (YAMLError, UnicodeDecodeError, ValueError) as ex:
        detail = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
        raise RecordError(path, f"is not valid YAML ({detail})", commit) from ex
    if not isinstance(value, dict):
        raise RecordError(path, f"is not a YAML mapping (got {type(value).__name__})", commit)
    version = value.get(SCHEMA_KEY)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RecordError(path, f"has no valid {SCHEMA_KEY} (got {version!r})", commit)
    return value


def thaw(value: Any) -> Any:
    """Return a deep copy of plain YAML data (dicts, lists and scalars).

    Much cheaper than :func:`copy.deepcopy` for the shapes records have,
    which matters because every read hands out a private copy of a cached
    record.
    """
    if isinstance(value, dict):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, list):
        return [thaw(item) for item in value]
    return value
