"""Gates: gatekeeper's groups, services, environments and tickets on the state branch.

A *gate* is one (group, service, environment) triple. It is closed for the
API when any of these holds, and open otherwise:

* it is closed by hand (the stored ``state`` is ``closed``);
* a live ticket is at the head of its queue (a deploy holds it);
* the time rules of its environment do not cover now, or a holiday lists it
  (see :mod:`gitstate.gates.rules`).

Records on the state branch:

* ``gates/<group>/<service>.yaml``: one per service, with every
  environment's stored state, message, their timestamps, and the queue of
  ticket ids in FIFO order.
* ``tickets/<first two characters>/<id>.yaml``: one per ticket, with its
  expiry, link, status (``current`` once it got ``ok``, else ``queued``) and
  the gates it is queued in. The two-character fan-out keeps directories
  small, so a commit rewrites small trees.
* ``holidays.yaml``: the holidays set through the API.

Test-and-set over several gates reads and writes all of them in one
:meth:`Store.transact`, so it is one commit and either all queues change or
none. Expired tickets are ignored when read and dropped from a queue the
next time a write touches that gate; a read never writes.

A queued client keeps its place by re-sending its ticket. Writing a commit
for every re-send would bury the history under heartbeats, so a queued
ticket's stored expiry carries extra slack and is only rewritten when less
than one queued lifetime of it is left (see docs/gates.md).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from gitstate.config import ConfigError
from gitstate.errors import GitStateError
from gitstate.gates.rules import (
    Holiday,
    HolidayError,
    Schedule,
    parse_config_holidays,
    parse_holiday,
    parse_rules,
    parse_timezone,
)
from gitstate.store.branch import Change, Draft, Identity, Snapshot, Store

#: ``document_version`` of gatekeeper's service documents, kept in answers.
DOCUMENT_VERSION = 2.2
#: Layout version of the records this module writes.
SCHEMA_VERSION = 1
GATES_DIR = "gates"
TICKETS_DIR = "tickets"
HOLIDAYS_PATH = "holidays.yaml"
#: Longest group, service or environment name.
MAX_NAME = 100
OPEN = "open"
CLOSED = "closed"
CURRENT = "current"
QUEUED = "queued"

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_@+=-]*")
_TICKET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_COMMIT = re.compile(r"[0-9a-fA-F]{7,40}")
_INVALID_JSON = "Your json contains invalid information."


class InvalidName(GitStateError, ValueError):
    """A group, service or environment name is not a safe path component.

    Attributes:
        kind: ``group``, ``service`` or ``environment``.
        value: the name given.
        reason: what is wrong with it.
    """

    status = 400
    kind = "puppetlabs.code-manager/bad-request"

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
    kind = "puppetlabs.code-manager/bad-request"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class GateExists(GitStateError, ValueError):
    """A service of that name already exists in the group."""

    status = 400
    kind = "puppetlabs.code-manager/bad-request"

    def __init__(self, group: str, service: str) -> None:
        self.group = group
        self.service = service
        super().__init__("Service with this name already exists")


class GateNotFound(GitStateError, LookupError):
    """No service of that name in that group."""

    status = 404
    kind = "puppetlabs.code-manager/not-found"

    def __init__(self, group: str, service: str) -> None:
        self.group = group
        self.service = service
        super().__init__("Service or Group not found")


class EnvironmentNotFound(GitStateError, LookupError):
    """The service has no such environment."""

    status = 404
    kind = "puppetlabs.code-manager/not-found"

    def __init__(self, environment: str) -> None:
        self.environment = environment
        super().__init__(f"Environment {environment} not found.")


class TicketNotFound(GitStateError, LookupError):
    """The ticket does not exist or has expired."""

    status = 404
    kind = "puppetlabs.code-manager/not-found"

    def __init__(self, ticket_id: str) -> None:
        self.ticket_id = ticket_id
        super().__init__("Ticket does not exist")


class StateMoved(GitStateError):
    """The state branch is not at the commit the client expected (If-Match).

    Attributes:
        expected: the commits the client named.
        actual: the tip the write would have been made on.
    """

    status = 412
    kind = "puppetlabs.code-manager/conflict"
    public_fields = (("commit", "actual"),)

    def __init__(self, expected: tuple[str, ...], actual: str | None) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"the state is at {actual or 'no commit'}, not at {', '.join(expected)}; "
            "read it again and retry"
        )


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


def gate_path(group: str, service: str) -> str:
    """Return the record path of a service's gates."""
    return f"{GATES_DIR}/{group}/{service}.yaml"


def ticket_path(ticket_id: str) -> str:
    """Return the record path of a ticket (fanned out by its first two characters)."""
    return f"{TICKETS_DIR}/{ticket_id[:2]}/{ticket_id}.yaml"


def _minutes(raw: Mapping[str, Any], key: str, default: float) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"gates.{key}", f"must be a number of minutes >= 0, got {value!r}")
    return round(value * 60)


@dataclasses.dataclass(frozen=True)
class GateSettings:
    """The ``gates`` section of the config file.

    Attributes:
        current_lifetime: seconds an ``ok`` ticket lives (0 = never expires).
        queued_lifetime: seconds a queued ticket lives after its last re-send
            (0 = never expires).
        queued_slack: extra seconds stored on a queued ticket's expiry so that
            re-sends need not commit every time (see the module docstring).
        schedule: time rules per environment and the timezone.
        holidays: holidays from the config file.
    """

    current_lifetime: int = 720 * 60
    queued_lifetime: int = 2 * 60
    queued_slack: int = 5 * 60
    schedule: Schedule = dataclasses.field(default_factory=Schedule)
    holidays: tuple[Holiday, ...] = ()

    @classmethod
    def from_config(cls, raw: Any) -> GateSettings:
        """Parse ``config.raw["gates"]`` (None gives the defaults).

        Raises:
            ConfigError: a key has a bad value.
        """
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError("gates", "must be a mapping")
        known = {
            "current_ticket_lifetime",
            "queued_ticket_lifetime",
            "queued_ticket_slack",
            "timezone",
            "rules",
            "holidays",
        }
        unknown = set(raw) - known
        if unknown:
            raise ConfigError("gates", f"unknown keys {sorted(unknown)}")
        return cls(
            current_lifetime=_minutes(raw, "current_ticket_lifetime", 720),
            queued_lifetime=_minutes(raw, "queued_ticket_lifetime", 2),
            queued_slack=_minutes(raw, "queued_ticket_slack", 5),
            schedule=Schedule(parse_timezone(raw.get("timezone")), parse_rules(raw.get("rules"))),
            holidays=parse_config_holidays(raw.get("holidays")),
        )


@dataclasses.dataclass(frozen=True)
class Answer:
    """What a service call returns: the body and the state commit it reflects.

    Attributes:
        body: the JSON-ready answer.
        commit: the state commit the answer was read from or written as
            (the ETag); None before the first commit.
    """

    body: dict[str, Any]
    commit: str | None


class _Reader(Protocol):
    def get(self, path: str) -> dict[str, Any] | None: ...


@dataclasses.dataclass(frozen=True)
class _Wanted:
    group: str
    service: str
    environment: str

    @property
    def label(self) -> str:
        return f"{self.group}/{self.service}/{self.environment}"


def _alive(ticket: Mapping[str, Any] | None, now: float) -> bool:
    if ticket is None:
        return False
    expiry = ticket.get("expiration_date", 0)
    return not expiry or now < expiry


def _public_ticket(ticket: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": ticket["id"],
        "updated": ticket["updated"],
        "expiration_date": ticket["expiration_date"],
        "link": ticket.get("link"),
    }


def _labels(labels: list[str], limit: int = 3) -> str:
    if len(labels) <= limit:
        return ", ".join(labels)
    return f"{', '.join(labels[:limit])} and {len(labels) - limit} more"


def _short(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class Gates:
    """The gates service: every gatekeeper operation on the state branch.

    Args:
        store: the state branch.
        settings: lifetimes, rules and config holidays.
        clock: returns the current Unix time; tests replace it.
    """

    def __init__(
        self,
        store: Store,
        settings: GateSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings or GateSettings()
        self.clock = clock

    # -- helpers -----------------------------------------------------------------

    def _stamp(self, now: float) -> str:
        return self.settings.schedule.local(now).strftime("%Y-%m-%d %H:%M:%S%z")

    def _holidays(self, reader: _Reader) -> list[Holiday]:
        record = reader.get(HOLIDAYS_PATH) or {}
        stored = []
        for item in record.get("holidays", []):
            try:
                stored.append(parse_holiday(item, "api"))
            except HolidayError:
                continue
        return [*self.settings.holidays, *stored]

    def _doc(self, reader: _Reader, group: str, service: str) -> dict[str, Any]:
        check_name("group", group)
        check_name("service", service)
        doc = reader.get(gate_path(group, service))
        if doc is None:
            raise GateNotFound(group, service)
        return doc

    @staticmethod
    def _ticket(reader: _Reader, ticket_id: str) -> dict[str, Any] | None:
        if not isinstance(ticket_id, str) or not _TICKET_ID.fullmatch(ticket_id):
            return None
        return reader.get(ticket_path(ticket_id))

    def _live_queue(
        self, reader: _Reader, queue: Iterable[str], now: float
    ) -> list[dict[str, Any]]:
        tickets = []
        for ticket_id in queue:
            ticket = self._ticket(reader, ticket_id)
            if _alive(ticket, now):
                assert ticket is not None
                tickets.append(ticket)
        return tickets

    def _closed_reason(
        self,
        environment: str,
        env: Mapping[str, Any],
        queue: list[dict[str, Any]],
        now: float,
        holidays: list[Holiday],
        holder: str | None = None,
    ) -> str | None:
        """Say why the gate is closed for the API, or None when it is open.

        ``holder`` is the caller's ticket: a queue headed by it does not close
        the gate to it.
        """
        reasons = self._closures(environment, env, queue, now, holidays, holder)
        return reasons[0]["detail"] if reasons else None

    def _closures(
        self,
        environment: str,
        env: Mapping[str, Any],
        queue: list[dict[str, Any]],
        now: float,
        holidays: list[Holiday],
        holder: str | None = None,
    ) -> list[dict[str, str]]:
        """List every reason the gate is closed, strongest first.

        Each reason is ``{"kind": manual|holiday|rule|ticket, "detail": text}``.
        """
        reasons = []
        if env["state"] == CLOSED:
            reasons.append({"kind": "manual", "detail": "closed manually"})
        schedule = self.settings.schedule
        holiday = schedule.holiday(environment, now, holidays)
        if holiday is not None:
            reasons.append({"kind": "holiday", "detail": f"holiday: {holiday.reason}"})
        if not schedule.open_by_rules(environment, now):
            reasons.append({"kind": "rule", "detail": "outside the time rules"})
        if queue and queue[0]["id"] != holder:
            reasons.append({"kind": "ticket", "detail": f"held by ticket {queue[0]['id']}"})
        return reasons

    def _env_view(
        self,
        reader: _Reader,
        name: str,
        env: Mapping[str, Any],
        now: float,
        holidays: list[Holiday] | None,
    ) -> dict[str, Any]:
        """Return gatekeeper's environment object; derived state unless ``holidays`` is None."""
        queue = self._live_queue(reader, env["queue"], now)
        state = env["state"]
        if holidays is not None and self._closed_reason(name, env, queue, now, holidays):
            state = CLOSED
        return {
            "queue": [_public_ticket(ticket) for ticket in queue],
            "message_timestamp": env["message_timestamp"],
            "state": state,
            "message": env["message"],
            "state_timestamp": env["state_timestamp"],
        }

    def _doc_view(
        self, reader: _Reader, doc: Mapping[str, Any], now: float, derived: bool
    ) -> dict[str, Any]:
        holidays = self._holidays(reader) if derived else None
        return {
            "document_version": DOCUMENT_VERSION,
            "name": doc["name"],
            "group": doc["group"],
            "environments": {
                name: self._env_view(reader, name, env, now, holidays)
                for name, env in sorted(doc["environments"].items())
            },
        }

    def _snapshot(self, at: str | None) -> tuple[Snapshot, float]:
        """Return the snapshot to read and the time to judge it at."""
        if at is None or at == "":
            return self.store.snapshot(), self.clock()
        when: dt.datetime | None = None
        if not _COMMIT.fullmatch(at):
            try:
                when = dt.datetime.fromisoformat(at)
            except ValueError as ex:
                raise InvalidRequest("at must be a state commit id or an ISO 8601 time") from ex
            if when.tzinfo is None:
                when = when.replace(tzinfo=self.settings.schedule.timezone)
            return self.store.at(when), when.timestamp()
        snap = self.store.at(at)
        moment = snap.time
        return snap, moment.timestamp() if moment is not None else self.clock()

    def _transact(
        self,
        change: Callable[[Draft, float], Any],
        *,
        subject: str,
        operation: str,
        actor: str,
        request_id: str | None,
        expect: Iterable[str] | None,
    ) -> tuple[Any, str | None]:
        expected = tuple(expect) if expect is not None else None

        def guarded(draft: Draft) -> Any:
            if expected is not None:
                actual = draft.base.commit
                if actual is None or not any(
                    actual.startswith(item.lower()) for item in expected if item
                ):
                    raise StateMoved(expected, actual)
            return change(draft, self.clock())

        done = self.store.transact(
            guarded,
            subject=subject,
            operation=operation,
            identity=Identity(actor, request_id),
        )
        return done.value, done.snapshot.commit

    def _prune(self, draft: Draft, doc: dict[str, Any], now: float) -> list[str]:
        """Drop dead tickets from every queue of ``doc``; delete expired records.

        Returns the ids dropped, so the commit can say so.
        """
        dropped: list[str] = []
        for env in doc["environments"].values():
            keep = []
            for ticket_id in env["queue"]:
                ticket = self._ticket(draft, ticket_id)
                if _alive(ticket, now):
                    keep.append(ticket_id)
                    continue
                dropped.append(ticket_id)
                if ticket is not None:
                    draft.delete(ticket_path(ticket_id))
            env["queue"] = keep
        return sorted(set(dropped))

    def _fresh_env(self, now: float) -> dict[str, Any]:
        return {
            "state": OPEN,
            "state_timestamp": self._stamp(now),
            "message": "",
            "message_timestamp": "",
            "queue": [],
        }

    @staticmethod
    def _environments(value: Any) -> list[str]:
        if not isinstance(value, list) or not value:
            raise InvalidRequest(f"{_INVALID_JSON} Invalid environments.")
        names = []
        for item in value:
            if not isinstance(item, str) or not item.strip():
                raise InvalidRequest(f"{_INVALID_JSON} Invalid environments.")
            names.append(check_name("environment", item.strip()))
        return list(dict.fromkeys(names))

    def _set_env(
        self, env: dict[str, Any], change: Mapping[str, Any], now: float, label: str
    ) -> list[str]:
        """Apply ``{state?, message?}`` to a stored environment; describe the changes."""
        if not isinstance(change, Mapping):
            raise InvalidRequest(f"{_INVALID_JSON} Environment {label} needs state or message.")
        said = []
        if "state" in change:
            state = change["state"]
            if state not in (OPEN, CLOSED):
                raise InvalidRequest("state must be open or closed")
            if env["state"] != state:
                env["state"] = state
                env["state_timestamp"] = self._stamp(now)
                said.append(f"{'opens' if state == OPEN else 'closes'} {label}")
        if "message" in change:
            message = change["message"]
            if message is None:
                message = ""
            if not isinstance(message, str):
                raise InvalidRequest("message must be a string")
            if message != env["message"] or message:
                said.append(
                    f"sets the message of {label} to {_short(message)!r}"
                    if message
                    else f"clears the message of {label}"
                )
            env["message"] = message
            env["message_timestamp"] = self._stamp(now) if message else ""
        return said

    @staticmethod
    def wanted(gates: Any) -> list[_Wanted]:
        """Read a test-and-set's ``gates`` body (``{group: {service: env(s)}}``).

        Raises:
            InvalidRequest, InvalidName: it is malformed.
        """
        return Gates._wanted(gates)

    @staticmethod
    def _wanted(gates: Any) -> list[_Wanted]:
        missing = InvalidRequest(f"{_INVALID_JSON} Could not find gates")
        if not isinstance(gates, Mapping) or not gates:
            raise missing
        wanted: list[_Wanted] = []
        for group, services in gates.items():
            check_name("group", group)
            if not isinstance(services, Mapping) or not services:
                raise missing
            for service, envs in services.items():
                check_name("service", service)
                names = [envs] if isinstance(envs, str) else envs
                if not isinstance(names, list) or not names:
                    raise missing
                for env in names:
                    if not isinstance(env, str):
                        raise missing
                    wanted.append(_Wanted(group, service, check_name("environment", env.strip())))
        return list(dict.fromkeys(wanted))

    # -- reads -------------------------------------------------------------------

    def get_service(self, group: str, service: str, at: str | None = None) -> Answer:
        """Return a service's document with every environment's derived state."""
        snap, now = self._snapshot(at)
        doc = self._doc(snap, group, service)
        return Answer(self._doc_view(snap, doc, now, derived=True), snap.commit)

    def list_all(self) -> Answer:
        """Return every service's document with derived states, for the web page.

        The answer is ``{"commit", "services": [...]}``, the documents sorted
        by group and service. Each environment adds
        to gatekeeper's object ``manual_state`` (the stored state the toggle
        flips) and ``closed_by``: every reason it is closed (``manual``,
        ``holiday``, ``rule``, ``ticket``), empty when it is open.
        """
        snap, now = self._snapshot(None)
        holidays = self._holidays(snap)
        services = []
        for _path, doc in snap.records(GATES_DIR):
            view = self._doc_view(snap, doc, now, derived=True)
            for name, env in view["environments"].items():
                stored = doc["environments"][name]
                env["manual_state"] = stored["state"]
                env["closed_by"] = self._closures(name, stored, env["queue"], now, holidays)
            services.append(view)
        services.sort(key=lambda view: (view["group"], view["name"]))
        return Answer({"commit": snap.commit, "services": services}, snap.commit)

    def head(self) -> str | None:
        """Return the state commit now at the branch tip (None before the first)."""
        return self.store.head()

    def get_environment(
        self, group: str, service: str, environment: str, at: str | None = None
    ) -> Answer:
        """Return one environment object with its derived state."""
        check_name("environment", environment)
        snap, now = self._snapshot(at)
        doc = self._doc(snap, group, service)
        env = doc["environments"].get(environment)
        if env is None:
            raise EnvironmentNotFound(environment)
        view = self._env_view(snap, environment, env, now, self._holidays(snap))
        return Answer(view, snap.commit)

    def history(
        self, group: str, service: str, environment: str, limit: int | None = None
    ) -> Answer:
        """List the commits that changed one environment, newest first.

        Each entry says who (actor), when, what (the commit subject and
        operation) and the environment as that commit left it (state,
        message, queue of ticket ids); ``present`` is false for the commit
        that deleted the service or the environment.
        """
        check_name("group", group)
        check_name("service", service)
        check_name("environment", environment)
        snap = self.store.snapshot()
        # Newest first, each version compared with the one before it, so a
        # short page reads only as far back as it needs.
        entries: list[dict[str, Any]] = []
        newer: tuple[Change, dict[str, Any] | None] | None = None
        any_version = False
        for change in self.store.iter_history(gate_path(group, service)):
            any_version = True
            env = (change.record or {}).get("environments", {}).get(environment)
            if newer is not None and newer[1] != env:
                entries.append(_history_entry(*newer))
                if limit is not None and len(entries) >= limit:
                    break
            newer = (change, env)
        else:
            if newer is not None and newer[1] is not None:
                entries.append(_history_entry(*newer))
        if not any_version:
            raise GateNotFound(group, service)
        if not entries:
            raise EnvironmentNotFound(environment)
        if limit is not None:
            entries = entries[:limit]
        return Answer(
            {"group": group, "service": service, "environment": environment, "history": entries},
            snap.commit,
        )

    def holidays(self, at: str | None = None) -> Answer:
        """List holidays from today on (configured timezone), sorted by date."""
        snap, now = self._snapshot(at)
        today = self.settings.schedule.local(now).date()
        items = []
        for holiday in sorted(self._holidays(snap), key=lambda item: item.date):
            if holiday.date < today:
                continue
            record = holiday.to_record()
            digest = hashlib.sha1(
                json.dumps([holiday.source, record], sort_keys=True).encode(), usedforsecurity=False
            ).hexdigest()[:16]
            items.append({"_id": digest, **record, "source": holiday.source})
        return Answer({"holidays": items}, snap.commit)

    # -- writes on services ------------------------------------------------------

    def create(
        self,
        group: str,
        service: str,
        environments: Any,
        *,
        actor: str,
        request_id: str | None = None,
        expect: Iterable[str] | None = None,
    ) -> Answer:
        """Create a service's gates, every environment open with an empty queue.

        Raises:
            InvalidName: a name is unsafe.
            InvalidRequest: the environment list is missing, empty or bad.
            GateExists: the group already has a service of that name.
        """
        check_name("service", service)
        check_name("group", group)
        names = self._environments(environments)
        path = gate_path(group, service)

        def change(draft: Draft, now: float) -> dict[str, Any]:
            if draft.get(path) is not None:
                raise GateExists(group, service)
            doc = {
                "schema_version": SCHEMA_VERSION,
                "group": group,
                "name": service,
                "environments": {name: self._fresh_env(now) for name in names},
            }
            draft.put(path, doc)
            return self._doc_view(draft, doc, now, derived=False)

        body, commit = self._transact(
            change,
            subject=f"{actor} creates gates {group}/{service} ({_labels(names)})",
            operation="gates.create",
            actor=actor,
            request_id=request_id,
            expect=expect,
        )
        return Answer(body, commit)

    def set_environment(
        self,
        group: str,
        service: str,
        environment: str,
        change: Any,
        *,
        actor: str,
        request_id: str | None = None,
        expect: Iterable[str] | None = None,
    ) -> Answer:
        """Open or close one gate by hand and/or set its message.

        Returns the whole document with the stored (manual) states, as
        gatekeeper did.

        Raises:
            GateNotFound, EnvironmentNotFound, InvalidRequest.
        """
        check_name("environment", environment)
        if not isinstance(change, Mapping):
            raise InvalidRequest(f"{_INVALID_JSON} Expected state and/or message.")
        label = f"{group}/{service}/{environment}"

        def apply(draft: Draft, now: float) -> dict[str, Any]:
            doc = self._doc(draft, group, service)
            env = doc["environments"].get(environment)
            if env is None:
                raise EnvironmentNotFound(environment)
            said = self._set_env(env, change, now, label)
            if said:
                dropped = self._prune(draft, doc, now)
                draft.put(gate_path(group, service), doc)
                draft.subject = f"{actor} {' and '.join(said)}" + _dropped(dropped)
            return self._doc_view(draft, doc, now, derived=False)

        body, commit = self._transact(
            apply,
            subject=f"{actor} changes {label}",
            operation="gates.set",
            actor=actor,
            request_id=request_id,
            expect=expect,
        )
        return Answer(body, commit)

    def update(
        self,
        group: str,
        service: str,
        fields: Any,
        *,
        actor: str,
        request_id: str | None = None,
        expect: Iterable[str] | None = None,
    ) -> Answer:
        """Move, rename, replace the environments of, or set several gates.

        ``fields`` may hold ``group`` (move), ``name`` (rename) and
        ``environments``: a list replaces every environment with fresh open
        ones; a mapping ``{env: {state?, message?}}`` sets those
        environments. Tickets queued in a moved service follow it.

        Raises:
            GateNotFound, EnvironmentNotFound, GateExists, InvalidName,
            InvalidRequest.
        """
        check_name("group", group)
        check_name("service", service)
        if not isinstance(fields, Mapping):
            raise InvalidRequest(f"{_INVALID_JSON} Expected group, name or environments.")
        new_group = check_name("group", fields.get("group", group))
        new_name = check_name("service", fields.get("name", service))
        envs = fields.get("environments")
        replace: list[str] | None = None
        settings: Mapping[str, Any] = {}
        if isinstance(envs, list):
            replace = self._environments(envs)
        elif isinstance(envs, Mapping):
            settings = envs
            for name in settings:
                check_name("environment", name)
        elif envs is not None:
            raise InvalidRequest(f"{_INVALID_JSON} Invalid environments.")

        def apply(draft: Draft, now: float) -> dict[str, Any]:
            doc = self._doc(draft, group, service)
            old_path = gate_path(group, service)
            said: list[str] = []
            for name, env_change in settings.items():
                env = doc["environments"].get(name)
                if env is None:
                    raise EnvironmentNotFound(name)
                said += self._set_env(env, env_change, now, name)
            moved = (new_group, new_name) != (group, service)
            # Only a write that happens anyway drops dead tickets.
            dropped = self._prune(draft, doc, now) if said or replace or moved else []
            if replace is not None:
                for name, env in doc["environments"].items():
                    for ticket_id in env["queue"]:
                        self._unlink(draft, ticket_id, [f"{group}/{service}/{name}"])
                doc["environments"] = {name: self._fresh_env(now) for name in replace}
                said.append(f"replaces the environments with {_labels(replace)}")
            if moved:
                new_path = gate_path(new_group, new_name)
                if draft.get(new_path) is not None:
                    raise GateExists(new_group, new_name)
                doc["group"], doc["name"] = new_group, new_name
                self._relink(draft, doc, f"{group}/{service}/", f"{new_group}/{new_name}/")
                draft.delete(old_path)
                said.append(f"moves it to {new_group}/{new_name}")
            if said:
                draft.put(gate_path(new_group, new_name), doc)
                draft.subject = (
                    f"{actor} updates gates {group}/{service}: {'; '.join(said) or 'no change'}"
                    + _dropped(dropped)
                )
            return self._doc_view(draft, doc, now, derived=False)

        body, commit = self._transact(
            apply,
            subject=f"{actor} updates gates {group}/{service}",
            operation="gates.update",
            actor=actor,
            request_id=request_id,
            expect=expect,
        )
        return Answer(body, commit)

    def delete(
        self,
        group: str,
        service: str,
        *,
        actor: str,
        request_id: str | None = None,
        expect: Iterable[str] | None = None,
    ) -> Answer:
        """Delete a service's gates; its tickets stay (gatekeeper did the same).

        Raises:
            GateNotFound: there is no such service.
        """

        def apply(draft: Draft, now: float) -> dict[str, Any]:
            self._doc(draft, group, service)
            draft.delete(gate_path(group, service))
            return {"status": "ok"}

        body, commit = self._transact(
            apply,
            subject=f"{actor} deletes gates {group}/{service}",
            operation="gates.delete",
            actor=actor,
            request_id=request_id,
            expect=expect,
        )
        return Answer(body, commit)

    def _unlink(self, draft: Draft, ticket_id: str, labels: list[str]) -> None:
        ticket = self._ticket(draft, ticket_id)
        if ticket is None:
            return
        keep = [label for label in ticket.get("gates", []) if label not in labels]
        if keep != ticket.get("gates", []):
            ticket["gates"] = keep
            draft.put(ticket_path(ticket_id), ticket)

    def _relink(self, draft: Draft, doc: Mapping[str, Any], old: str, new: str) -> None:
        ids = {ticket_id for env in doc["environments"].values() for ticket_id in env["queue"]}
        for ticket_id in sorted(ids):
            ticket = self._ticket(draft, ticket_id)
            if ticket is None:
                continue
            ticket["gates"] = [
                new + label.removeprefix(old) if label.startswith(old) else label
                for label in ticket.get("gates", [])
            ]
            draft.put(ticket_path(ticket_id), ticket)

    # -- tickets -----------------------------------------------------------------

    def _expiry(self, lifetime: int, slack: int, now: float) -> int:
        return 0 if lifetime == 0 else int(now) + lifetime + slack

    def test_and_set(
        self,
        gates: Any,
        ticket_id: Any = None,
        link: Any = None,
        queue: bool = False,
        *,
        actor: str,
        request_id: str | None = None,
        expect: Iterable[str] | None = None,
    ) -> Answer:
        """Take several gates at once, or queue for them, in one commit.

        The answer is ``{"status": "ok", "ticket": ...}`` when every gate is
        open and free (or headed by the caller's ticket), ``queued`` with the
        ticket when some gate is held by another ticket and ``queue`` is
        true, and ``{"status": "denied"}`` otherwise. A denial writes
        nothing. A new ticket joins the queue of every gate asked for; a
        known ticket joins those it is not in yet only while they are free
        (else it is denied), so no two tickets ever stand in opposite
        orders on two gates (which would deadlock them).

        Raises:
            InvalidRequest: ``gates`` is missing or malformed.
            TicketNotFound: ``ticket_id`` is unknown or expired.
            GateNotFound, EnvironmentNotFound, InvalidName.
        """
        wanted = self._wanted(gates)
        if ticket_id is not None and not isinstance(ticket_id, str):
            raise TicketNotFound(str(ticket_id))
        if link is not None and not isinstance(link, str):
            raise InvalidRequest(f"{_INVALID_JSON} link must be a string.")
        labels = [item.label for item in wanted]

        def apply(draft: Draft, now: float) -> dict[str, Any]:
            return self.take_on(draft, now, wanted, ticket_id, link, queue, actor=actor)

        body, commit = self._transact(
            apply,
            subject=f"{actor} tests and sets {_labels(labels)}",
            operation="gates.test_and_set",
            actor=actor,
            request_id=request_id,
            expect=expect,
        )
        return Answer(body, commit)

    def take_on(
        self,
        draft: Draft,
        now: float,
        wanted: list[_Wanted],
        ticket_id: str | None = None,
        link: str | None = None,
        queue: bool = False,
        *,
        actor: str,
    ) -> dict[str, Any]:
        """Test-and-set ``wanted`` on ``draft`` (the algorithm, without a commit).

        What :meth:`test_and_set` commits; other services call it inside
        their own transaction (a deploy claim takes its gate's ticket in the
        commit that claims the deploy). Sets ``draft.subject`` when it writes.

        Raises:
            TicketNotFound, GateNotFound, EnvironmentNotFound, InvalidName.
        """
        labels = [item.label for item in wanted]
        settings = self.settings
        ticket = None
        if ticket_id is not None:
            ticket = self._ticket(draft, ticket_id)
            if not _alive(ticket, now):
                raise TicketNotFound(ticket_id)
        holder = ticket["id"] if ticket is not None else None
        holidays = self._holidays(draft)
        docs: dict[tuple[str, str], dict[str, Any]] = {}
        status = "ok"
        for item in wanted:
            key = (item.group, item.service)
            if key not in docs:
                docs[key] = self._doc(draft, item.group, item.service)
            env = docs[key]["environments"].get(item.environment)
            if env is None:
                raise EnvironmentNotFound(item.environment)
            live = self._live_queue(draft, env["queue"], now)
            if env["state"] == CLOSED or self._closed_reason(
                item.environment, env, [], now, holidays
            ):
                return {"status": "denied"}
            if live and live[0]["id"] != holder:
                if not queue:
                    return {"status": "denied"}
                if holder is not None and all(t["id"] != holder for t in live):
                    # NOTE(gates): a known ticket may not join the tail of
                    # a busy queue later: two tickets could then stand in
                    # opposite orders on two gates and wait for each other
                    # forever. New tickets join all their gates at once,
                    # which keeps every pair in one order everywhere.
                    return {"status": "denied"}
                status = QUEUED
        # Every gate is open and the caller may hold or wait: write.
        if ticket is None:
            ticket = {
                "schema_version": SCHEMA_VERSION,
                "id": str(uuid.uuid4()),
                "link": link,
                "gates": [],
                "status": QUEUED,
                "updated": "",
                "expiration_date": 0,
            }
            verb = "takes" if status == "ok" else "queues for"
            what = f"{actor} {verb} {_labels(labels)} with new ticket {ticket['id'][:8]}"
        elif status == "ok" and ticket["status"] != CURRENT:
            what = (
                f"{actor} takes {_labels(labels)}: "
                f"ticket {ticket['id'][:8]} reached the head of the queue"
            )
        else:
            what = f"{actor} refreshes {status} ticket {ticket['id'][:8]} on {_labels(labels)}"
        joined = []
        for item in wanted:
            env = docs[(item.group, item.service)]["environments"][item.environment]
            if ticket["id"] not in env["queue"]:
                env["queue"].append(ticket["id"])
                joined.append(item)
            if item.label not in ticket["gates"]:
                ticket["gates"].append(item.label)
        rewrite = bool(joined) or ticket["status"] != (CURRENT if status == "ok" else QUEUED)
        if status == "ok":
            lifetime, slack = settings.current_lifetime, 0
        else:
            lifetime, slack = settings.queued_lifetime, settings.queued_slack
        expiry = ticket["expiration_date"]
        if lifetime == 0:
            rewrite = rewrite or expiry != 0
        elif expiry == 0 or expiry - now < lifetime:
            # NOTE(gates): a re-send only writes when the stored expiry no
            # longer covers one lifetime from now; see docs/gates.md.
            rewrite = True
        if rewrite:
            ticket["status"] = CURRENT if status == "ok" else QUEUED
            ticket["expiration_date"] = self._expiry(lifetime, slack, now)
            ticket["updated"] = self._stamp(now)
            # The ticket goes in first so that pruning sees it alive.
            draft.put(ticket_path(ticket["id"]), ticket)
            dropped: list[str] = []
            touched = {(item.group, item.service) for item in joined}
            for key, doc in docs.items():
                pruned = self._prune(draft, doc, now)
                if pruned or key in touched:
                    dropped += pruned
                    draft.put(gate_path(*key), doc)
            draft.subject = what + _dropped(dropped)
        return {"status": status, "ticket": _public_ticket(ticket)}

    def why_closed(
        self, group: str, service: str, environment: str, *, holder: str | None = None
    ) -> str | None:
        """Say why one gate is closed to ``holder`` right now, or None if it is open.

        Raises:
            GateNotFound, EnvironmentNotFound, InvalidName.
        """
        snap, now = self._snapshot(None)
        return self.why_closed_on(snap, now, group, service, environment, holder=holder)

    def why_closed_on(
        self,
        reader: _Reader,
        now: float,
        group: str,
        service: str,
        environment: str,
        *,
        holder: str | None = None,
    ) -> str | None:
        """Say why one gate is closed in ``reader`` (a snapshot or a draft) at ``now``.

        Raises:
            GateNotFound, EnvironmentNotFound, InvalidName.
        """
        check_name("environment", environment)
        doc = self._doc(reader, group, service)
        env = doc["environments"].get(environment)
        if env is None:
            raise EnvironmentNotFound(environment)
        queue = self._live_queue(reader, env["queue"], now)
        return self._closed_reason(environment, env, queue, now, self._holidays(reader), holder)

    def release(
        self,
        ticket_id: str,
        *,
        actor: str,
        request_id: str | None = None,
        expect: Iterable[str] | None = None,
        may_release: Callable[[set[str]], None] | None = None,
    ) -> Answer:
        """Delete a ticket and take it out of every queue; unknown ids are fine.

        Args:
            ticket_id: the ticket to release.
            actor: who releases it (the commit's author).
            request_id: the request's id (a commit trailer).
            expect: commits the state must still be at (``If-Match``).
            may_release: called with the groups whose gates the ticket holds
                or waits for, in the same commit that releases it, so a
                ticket that joined another group's gate a moment ago cannot
                slip past the check; it raises to refuse (nothing is written).
        """

        def apply(draft: Draft, now: float) -> dict[str, Any]:
            return self.release_on(draft, ticket_id, actor=actor, may_release=may_release)

        body, commit = self._transact(
            apply,
            subject=f"{actor} releases ticket {str(ticket_id)[:8]}",
            operation="gates.release",
            actor=actor,
            request_id=request_id,
            expect=expect,
        )
        return Answer(body, commit)

    def release_on(
        self,
        draft: Draft,
        ticket_id: str,
        *,
        actor: str,
        may_release: Callable[[set[str]], None] | None = None,
    ) -> dict[str, Any]:
        """Release ``ticket_id`` on ``draft`` (what :meth:`release` commits).

        Sets ``draft.subject`` when it writes; an unknown ticket writes nothing.
        """
        ticket = self._ticket(draft, ticket_id)
        if ticket is None:
            return {"status": "ok"}
        labels = list(ticket.get("gates", []))
        if may_release is not None:
            may_release({label.split("/", 1)[0] for label in labels})
        services = dict.fromkeys(label.rsplit("/", 1)[0] for label in labels)
        for key in services:
            group, service = key.split("/", 1)
            path = gate_path(group, service)
            doc = draft.get(path)
            if doc is None:
                continue
            before = [list(env["queue"]) for env in doc["environments"].values()]
            for env in doc["environments"].values():
                env["queue"] = [item for item in env["queue"] if item != ticket_id]
            if before != [env["queue"] for env in doc["environments"].values()]:
                draft.put(path, doc)
        draft.delete(ticket_path(ticket_id))
        draft.subject = f"{actor} releases ticket {ticket_id[:8]} ({_labels(labels)})"
        return {"status": "ok"}

    # -- holidays ----------------------------------------------------------------

    def set_holidays(
        self,
        body: Any,
        *,
        actor: str,
        request_id: str | None = None,
        expect: Iterable[str] | None = None,
    ) -> Answer:
        """Replace every holiday set through the API (config holidays stay).

        Raises:
            InvalidRequest: the list or one of its holidays is malformed.
        """
        items = body.get("holidays") if isinstance(body, Mapping) else None
        if not isinstance(items, list):
            raise InvalidRequest(f"{_INVALID_JSON} Could not find holidays")
        holidays = []
        for number, item in enumerate(items):
            try:
                holiday = parse_holiday(item)
            except HolidayError as ex:
                raise InvalidRequest(f"{_INVALID_JSON} Holiday {number}: {ex.detail}") from ex
            for env in holiday.environments:
                if env != "*":
                    check_name("environment", env)
            holidays.append(holiday)
        holidays.sort(key=lambda item: (item.date, item.reason))
        record = {
            "schema_version": SCHEMA_VERSION,
            "holidays": [holiday.to_record() for holiday in holidays],
        }
        days = _labels([holiday.date.isoformat() for holiday in holidays]) or "none"

        def apply(draft: Draft, now: float) -> dict[str, Any]:
            draft.put(HOLIDAYS_PATH, record)
            return {"status": "ok"}

        answer, commit = self._transact(
            apply,
            subject=f"{actor} replaces the holidays ({days})",
            operation="gates.holidays",
            actor=actor,
            request_id=request_id,
            expect=expect,
        )
        return Answer(answer, commit)


def _dropped(ids: list[str]) -> str:
    ids = sorted(set(ids))
    if not ids:
        return ""
    return f" (drops expired ticket{'s' if len(ids) > 1 else ''} {_labels([i[:8] for i in ids])})"


def _history_entry(change: Change, env: dict[str, Any] | None) -> dict[str, Any]:
    """One entry of an environment's history: the commit and the environment it left."""
    return {
        "commit": change.commit,
        "time": change.time.isoformat(),
        "actor": change.actor,
        "operation": change.operation,
        "subject": change.subject,
        "present": env is not None,
        "state": env["state"] if env else None,
        "message": env["message"] if env else None,
        "queue": list(env["queue"]) if env else [],
    }
