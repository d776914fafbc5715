"""The gates' records on the state branch: where they are and how to read them.

* ``gates/<group>/<service>.yaml``: one per service, with every
  environment's stored state, message, their timestamps, and the queue of
  ticket ids in FIFO order.
* ``holidays.yaml``: the holidays set through the API.

Tickets have their own records (see :mod:`gitstate.gates.tickets`).

The functions here read through a :class:`Reader` and write through a
:class:`Writer`: a snapshot or a draft of the store, or anything else with
those methods (the unit tests use a dict), so the gate algorithm runs without
a store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from gitstate.errors import NOT_FOUND, GitStateError
from gitstate.gates.rules import Holiday, HolidayError, Schedule, parse_holiday
from gitstate.gates.validation import check_name

#: Layout version of the records the gates write.
SCHEMA_VERSION = 1
GATES_DIR = "gates"
HOLIDAYS_PATH = "holidays.yaml"
OPEN = "open"
CLOSED = "closed"


class Reader(Protocol):
    """Reads records by path: a store snapshot, a draft, or a test's dict."""

    def get(self, path: str) -> dict[str, Any] | None:
        """Return a copy of the record at ``path``, or None if there is none."""
        ...


class Writer(Reader, Protocol):
    """Reads and changes records by path: a draft of the store, or a test's dict."""

    def put(self, path: str, record: Mapping[str, Any]) -> None:
        """Write ``record`` at ``path``."""
        ...

    def delete(self, path: str) -> None:
        """Remove the record at ``path`` (a missing one is fine)."""
        ...


class GateNotFound(GitStateError, LookupError):
    """No service of that name in that group."""

    status = 404
    kind = NOT_FOUND

    def __init__(self, group: str, service: str) -> None:
        self.group = group
        self.service = service
        super().__init__("Service or Group not found")


class EnvironmentNotFound(GitStateError, LookupError):
    """The service has no such environment."""

    status = 404
    kind = NOT_FOUND

    def __init__(self, environment: str) -> None:
        self.environment = environment
        super().__init__(f"Environment {environment} not found.")


def gate_path(group: str, service: str) -> str:
    """Return the record path of a service's gates."""
    return f"{GATES_DIR}/{group}/{service}.yaml"


def read_service(reader: Reader, group: str, service: str) -> dict[str, Any]:
    """Return a service's record (a copy the caller may change and write back).

    Raises:
        InvalidName: the group or service name is unsafe.
        GateNotFound: there is no such service.
    """
    check_name("group", group)
    check_name("service", service)
    doc = reader.get(gate_path(group, service))
    if doc is None:
        raise GateNotFound(group, service)
    return doc


def environment_of(doc: Mapping[str, Any], environment: str) -> dict[str, Any]:
    """Return one environment of a service's record.

    Raises:
        EnvironmentNotFound: the service has no such environment.
    """
    env = doc["environments"].get(environment)
    if env is None:
        raise EnvironmentNotFound(environment)
    return env


def all_holidays(reader: Reader, configured: tuple[Holiday, ...]) -> list[Holiday]:
    """Return the config file's holidays and then those set through the API.

    A stored holiday that does not parse (one an older version wrote, say)
    is skipped, so that one bad entry does not break every read of a gate.
    """
    record = reader.get(HOLIDAYS_PATH) or {}
    stored = []
    for item in record.get("holidays", []):
        try:
            stored.append(parse_holiday(item, "api"))
        except HolidayError:
            continue
    return [*configured, *stored]


def timestamp(schedule: Schedule, now: float) -> str:
    """Format ``now`` as gatekeeper's records did, in the configured timezone."""
    return schedule.local(now).strftime("%Y-%m-%d %H:%M:%S%z")


def fresh_environment(schedule: Schedule, now: float) -> dict[str, Any]:
    """Return a new environment's record: open, no message, an empty queue."""
    return {
        "state": OPEN,
        "state_timestamp": timestamp(schedule, now),
        "message": "",
        "message_timestamp": "",
        "queue": [],
    }
