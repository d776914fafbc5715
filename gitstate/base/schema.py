"""Declared configuration keys: how each is typed, read, checked and listed.

A section of a configuration file is a frozen dataclass; each of its keys is
a field made by :func:`setting` (a value), :func:`section` (a nested
mapping), :func:`named` (a mapping of name to section, like ``sources``) or
:func:`listed` (a list of sections, like ``file_sync.clients``). The field
carries the key's :class:`Kind` (type and parser), default and a one-line
description, so one declaration serves the loader (:func:`read_section`) and
the reference (:func:`rows`). The sections themselves are declared in
:mod:`gitstate.settings`.

Rules every key follows:

* A missing key, or one given as ``null``, takes its default.
* A bad value raises :class:`SettingError` naming the dotted key
  (``deploy.timeouts.fetch: not a duration: 'soon' ...``).
* Unknown keys are ignored with a warning, so a file written for a newer
  gitstate still loads; a section may refuse them instead (a class
  attribute ``unknown_keys = "error"``).
* A section may check its keys together in a method ``checked(key)``,
  which returns the section (possibly completed) or raises
  :class:`SettingError`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from gitstate.base.times import duration
from gitstate.errors import GitStateError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The key of a field's :class:`Setting` in ``dataclasses.field(metadata=...)``.
SETTING = "gitstate.setting"


class ConfigError(GitStateError, ValueError):
    """The configuration is missing, unreadable or has a bad value.

    Attributes:
        source: the file (or what stands for it, such as ``<config>``).
        detail: what is wrong.
    """

    def __init__(self, source: str, detail: str) -> None:
        self.source = source
        self.detail = detail
        super().__init__(f"{source}: {detail}")


class SettingError(ConfigError):
    """One key has a bad value; the message names the dotted key.

    Attributes:
        key: the dotted key (``deploy.timeouts.fetch``, ``sources.puppet.remote``,
            ``file_sync.clients[0].name``).
        reason: what is wrong with its value.
        source: the file once it is known, else the key.
    """

    def __init__(self, key: str, reason: str, source: str | None = None) -> None:
        self.key = key
        self.reason = reason
        super().__init__(source or key, f"{key}: {reason}" if source else reason)


# -- kinds of values ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kind:
    """How one key's value is read.

    Attributes:
        name: the type as ``docs/configuration.md`` shows it.
        parse: ``(value, dotted key) -> typed value``; raises ValueError
            (or :class:`SettingError` for nested keys).
        children: for nested kinds, the section read for each item.
        item: for nested kinds, what follows the key in a child's key
            (``"."``, ``".<name>."``, ``"[]."``).
    """

    name: str
    parse: Callable[[Any, str], Any]
    children: type | None = None
    item: str = "."


def simple(name: str, parse: Callable[[Any], Any]) -> Kind:
    """A kind whose parser needs only the value."""
    return Kind(name, lambda value, key: parse(value))


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, got {value!r}")
    return value


def count(minimum: int = 0) -> Kind:
    """A whole number at least ``minimum`` (a float is truncated, as it always was)."""

    def parse(value: Any) -> int:
        number = _number(value)
        if number < minimum:
            raise ValueError(f"must be at least {minimum}, got {value!r}")
        return int(number)

    return simple(f"integer ≥ {minimum}", parse)


def fraction() -> Kind:
    """A number above 0 and at most 1."""

    def parse(value: Any) -> float:
        number = float(_number(value))
        if not 0 < number <= 1:
            raise ValueError(f"must be above 0 and at most 1, got {value!r}")
        return number

    return simple("number in (0, 1]", parse)


def seconds(*, positive: bool = False) -> Kind:
    """A duration (:func:`gitstate.base.times.duration`): ``30``, ``"30s"``, ``"10m"``."""

    def parse(value: Any) -> float:
        result = duration(value)
        if result < 0 or (positive and result == 0):
            raise ValueError(f"must be {'above' if positive else 'at least'} 0, got {value!r}")
        return result

    return simple("duration > 0" if positive else "duration", parse)


def minutes() -> Kind:
    """A number of minutes ≥ 0, read as whole seconds."""

    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"must be a number of minutes >= 0, got {value!r}")
        return round(value * 60)

    return simple("minutes", parse)


def text(*, numbers: bool = False) -> Kind:
    """A non-empty string; with ``numbers``, a bare number is read as its text."""

    def parse(value: Any) -> str:
        if numbers and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise ValueError(f"must be a non-empty string, got {value!r}")
        return value

    return simple("string", parse)


def choice(*values: str, upper: bool = False) -> Kind:
    """One of ``values`` (compared upper-cased with ``upper``)."""

    def parse(value: Any) -> str:
        given = str(value).upper() if upper else value
        if given not in values:
            raise ValueError(f"must be one of {', '.join(values)}, got {value!r}")
        return str(given)

    return simple(" \\| ".join(values), parse)


def path() -> Kind:
    """A file system path; ``~`` is expanded."""
    return simple("path", lambda value: Path(text(numbers=True).parse(value, "")).expanduser())


def as_mapping(value: Any) -> Mapping[str, Any]:
    """Return ``value`` if it is a mapping, else raise ValueError."""
    if not isinstance(value, Mapping):
        raise ValueError("must be a mapping")
    return value


def as_list(value: Any) -> list[Any]:
    """Return ``value`` if it is a list, else raise ValueError."""
    if not isinstance(value, list):
        raise ValueError("must be a list")
    return value


BOOL = simple("boolean", _bool)


# -- declaring keys ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setting:
    """What the schema knows of one key.

    Attributes:
        kind: its type and parser.
        doc: one line saying what it does.
        required: the key has no default.
        shown: its default as the reference shows it, when the value's own
            text would mislead (seconds stored for minutes, ``auto`` for None).
        off: for a section, ``false`` is short for ``{enabled: false}``.
    """

    kind: Kind
    doc: str
    required: bool = False
    shown: str | None = None
    off: bool = False


def setting(
    kind: Kind,
    default: Any,
    doc: str,
    *,
    shown: str | None = None,
    secret: bool = False,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """Declare a key with a default (made by ``factory`` when it is mutable).

    A ``secret`` key is left out of ``repr``, so it never reaches a log line.
    """
    default_args: dict[str, Any] = {"default_factory": factory} if factory else {"default": default}
    return dataclasses.field(
        **default_args, repr=not secret, metadata={SETTING: Setting(kind, doc, shown=shown)}
    )


def required(kind: Kind, doc: str) -> Any:
    """Declare a key that must be given."""
    return dataclasses.field(metadata={SETTING: Setting(kind, doc, required=True)})


def section(cls: type, doc: str, *, off: bool = False) -> Any:
    """Declare a nested mapping read as ``cls``."""
    kind = Kind("mapping" + (" or false" if off else ""), _reader(cls), cls)
    return dataclasses.field(default_factory=cls, metadata={SETTING: Setting(kind, doc, off=off)})


def named(cls: type, doc: str) -> Any:
    """Declare a mapping of name → ``cls`` (``sources``)."""

    def parse(value: Any, key: str) -> dict[str, Any]:
        items = as_mapping(value)
        return {str(name): read_section(cls, item, f"{key}.{name}") for name, item in items.items()}

    kind = Kind("mapping of name to mapping", parse, cls, ".<name>.")
    return dataclasses.field(default_factory=dict, metadata={SETTING: Setting(kind, doc)})


def listed(cls: type, doc: str, *, unique: str) -> Any:
    """Declare a list of ``cls`` whose ``unique`` key differs between items."""

    def parse(value: Any, key: str) -> tuple[Any, ...]:
        items = tuple(
            read_section(cls, item, f"{key}[{n}]") for n, item in enumerate(as_list(value))
        )
        if len({getattr(item, unique) for item in items}) != len(items):
            raise SettingError(key, f"{unique}s must be unique")
        return items

    kind = Kind("list of mappings", parse, cls, "[].")
    return dataclasses.field(default=(), metadata={SETTING: Setting(kind, doc)})


def _reader(cls: type) -> Callable[[Any, str], Any]:
    return lambda value, key: read_section(cls, value, key)


def settings_of(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Setting]]:
    """Yield each field of a section that is a key, with its :class:`Setting`."""
    for field in dataclasses.fields(cls):
        spec = field.metadata.get(SETTING)
        if spec is not None:
            yield field, spec


def read_section(cls: type[T], data: Any, key: str = "") -> T:
    """Read one section (``key`` is its dotted name, "" for the top level).

    Raises:
        SettingError: a key has a bad value, or the section is not a mapping.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SettingError(key or "the top level", "must be a mapping")
    values: dict[str, Any] = {}
    for field, spec in settings_of(cls):
        name = f"{key}.{field.name}" if key else field.name
        value = data.get(field.name)
        if value is None:
            if spec.required:
                raise SettingError(name, "is required")
            continue
        if spec.off and value is False:
            value = {"enabled": False}
        try:
            values[field.name] = spec.kind.parse(value, name)
        except SettingError:
            raise
        except (TypeError, ValueError) as ex:
            raise SettingError(name, str(ex)) from None
    known = {field.name for field, _ in settings_of(cls)}
    unknown = sorted(str(name) for name in data if name not in known)
    if unknown and getattr(cls, "unknown_keys", "warn") == "error":
        raise SettingError(key, f"unknown keys {unknown}")
    for name in unknown:
        log.warning("config: unknown key %s ignored", f"{key}.{name}" if key else name)
    result = cls(**values)
    checked = getattr(result, "checked", None)
    return checked(key) if checked is not None else result


# -- the reference -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    """One key as ``docs/configuration.md`` lists it."""

    key: str
    kind: str
    default: str
    doc: str


def rows(cls: type, prefix: str = "") -> Iterator[Row]:
    """Yield every key of a section and its children, in declaration order."""
    for field, spec in settings_of(cls):
        key = prefix + field.name
        kind = spec.kind
        if kind.children is not None and kind.item == ".":
            yield from rows(kind.children, key + kind.item)
            continue
        yield Row(key, kind.name, _shown(field, spec), spec.doc)
        if kind.children is not None:
            yield from rows(kind.children, key + kind.item)


def _shown(field: dataclasses.Field[Any], spec: Setting) -> str:
    if spec.required:
        return "required"
    if spec.shown is not None:
        return spec.shown
    value = field.default
    if value is dataclasses.MISSING:
        return "empty"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if value == () or value == {}:
        return "empty"
    return str(value)
