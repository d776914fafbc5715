"""Names and request bodies: what the gates service accepts, and why not.

Group, service and environment names become path components and keys of
records on the state branch, so they are checked before anything is read.
A test-and-set body names its gates as ``{group: {service: env(s)}}``; it is
read here into :class:`Gate` items, in the order given.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from gitstate.errors import BAD_REQUEST, GitStateError

#: Longest group, service or environment name.
MAX_NAME = 100
#: How gatekeeper began the reason of every malformed body; clients match on it.
INVALID_JSON = "Your json contains invalid information."

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_@+=-]*")


class InvalidName(GitStateError, ValueError):
    """A group, service or environment name is not a safe path component.

    Attributes:
        kind: ``group``, ``service`` or ``environment``.
        value: the name given.
        reason: what is wrong with it.
    """

    status = 400
    kind = BAD_REQUEST

    def __init__(self, kind: str, value: str, reason: str) -> None:
        self.kind = kind
        self.value = value
        self.reason = reason
        super().__init__(f"{kind.capitalize()} name not valid. {reason}")


class InvalidRequest(GitStateError, ValueError):
    """A request body or parameter does not say something the service can do.

    Attributes:
        detail: what is wrong, in gatekeeper's words where it had some.
    """

    status = 400
    kind = BAD_REQUEST

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


def check_name(kind: str, value: Any) -> str:
    """Return ``value`` if it is a safe single path component, else raise.

    Names become path components of records (``gates/<group>/<service>``)
    and keys of records, so they are plain ASCII words: letters, digits and
    ``_ - @ + =``, not starting with ``-``, at most :data:`MAX_NAME` long.

    Raises:
        InvalidName: the name is unsafe, with the reason.
    """
    if not isinstance(value, str):
        raise InvalidName(kind, repr(value), "Should be a string")
    if not value or "." in value:
        raise InvalidName(kind, value, "Should not empty or contains dots")
    if len(value) > MAX_NAME:
        raise InvalidName(kind, value, f"Should be at most {MAX_NAME} characters long")
    if "/" in value or "\\" in value:
        raise InvalidName(kind, value, "Should not contain slashes")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise InvalidName(kind, value, "Should not contain control characters")
    if not _NAME.fullmatch(value):
        raise InvalidName(
            kind, value, "Should contain only ASCII letters, digits and _ - @ + = (not first -)"
        )
    return value


def environment_list(value: Any) -> list[str]:
    """Read the ``environments`` list of a create or replace, without repeats.

    Raises:
        InvalidRequest: it is not a non-empty list of non-blank strings.
        InvalidName: a name is unsafe.
    """
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"{INVALID_JSON} Invalid environments.")
    names = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise InvalidRequest(f"{INVALID_JSON} Invalid environments.")
        names.append(check_name("environment", item.strip()))
    return list(dict.fromkeys(names))


@dataclasses.dataclass(frozen=True)
class Gate:
    """One gate: a (group, service, environment) triple.

    Attributes:
        group: the group.
        service: the service in the group.
        environment: the environment of the service.
    """

    group: str
    service: str
    environment: str

    @property
    def label(self) -> str:
        """``group/service/environment``: how tickets and commit subjects name the gate."""
        return f"{self.group}/{self.service}/{self.environment}"


def parse_gates(gates: Any) -> list[Gate]:
    """Read a test-and-set's ``gates`` body (``{group: {service: env(s)}}``).

    Each gate appears once, in the order the body first names it.

    Raises:
        InvalidRequest: the body is missing, empty or not of that shape.
        InvalidName: a name is unsafe.
    """
    if not isinstance(gates, Mapping) or not gates:
        raise _no_gates()
    wanted: list[Gate] = []
    for group, services in gates.items():
        check_name("group", group)
        if not isinstance(services, Mapping) or not services:
            raise _no_gates()
        for service, envs in services.items():
            check_name("service", service)
            wanted += [Gate(group, service, env) for env in _environment_names(envs)]
    return list(dict.fromkeys(wanted))


def _environment_names(envs: Any) -> list[str]:
    """Read one service's environments in a test-and-set: a name or a list of names."""
    names = [envs] if isinstance(envs, str) else envs
    if not isinstance(names, list) or not names:
        raise _no_gates()
    checked = []
    for env in names:
        if not isinstance(env, str):
            raise _no_gates()
        checked.append(check_name("environment", env.strip()))
    return checked


def _no_gates() -> InvalidRequest:
    return InvalidRequest(f"{INVALID_JSON} Could not find gates")
