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

import io
import threading
from collections.abc import Mapping
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from gitstate.errors import GitStateError

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
        yaml.default_flow_style = False
        yaml.width = 1 << 16
        yaml.allow_unicode = True
        # NOTE: we order keys ourselves (schema_version first, then sorted).
        yaml.representer.sort_base_mapping_type_on_output = False
        _local.yaml = yaml
    return yaml


def _ordered(value: Any, top: bool = False) -> Any:
    """Return ``value`` with every mapping's keys in canonical order."""
    if isinstance(value, Mapping):
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
        record: a mapping with an integer ``schema_version``.
        path: where the record will be stored; used in error messages.

    Raises:
        RecordError: the record has no valid ``schema_version`` or holds
            values YAML cannot represent.
    """
    version = record.get(SCHEMA_KEY) if isinstance(record, Mapping) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RecordError(path, f"{SCHEMA_KEY} must be a positive integer, got {version!r}")
    stream = io.BytesIO()
    try:
        _yaml().dump(_ordered(record, top=True), stream)
    except YAMLError as ex:
        raise RecordError(path, f"cannot be written as YAML: {ex}") from ex
    return stream.getvalue()


def decode(data: bytes, path: str = "<record>", commit: str | None = None) -> dict[str, Any]:
    """Parse canonical YAML bytes back into a record.

    Raises:
        RecordError: the bytes are not YAML, not a mapping, or carry no
            valid ``schema_version``; the error names ``path``.
    """
    try:
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
