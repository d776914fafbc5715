"""Gates: gatekeeper's groups, services, environments and tickets on the state branch.

:class:`Gates` is the service the HTTP layer and the deploy guard call. Each
write runs in one :meth:`Store.transact`, so it is one commit and either all
the records it changes change or none; each read judges one snapshot at one
time. The parts it runs live beside it:

* :mod:`gitstate.gates.validation`: names and request bodies;
* :mod:`gitstate.gates.records`: the records of services and holidays;
* :mod:`gitstate.gates.tickets`: ticket records, queues and expiry;
* :mod:`gitstate.gates.algorithm`: test-and-set, release and why-closed as
  functions over a draft;
* :mod:`gitstate.gates.rules`: time rules and holidays;
* :mod:`gitstate.gates.subjects`: the words of commit subjects.

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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gitstate.errors import BAD_REQUEST, CONFLICT, GitStateError
from gitstate.gates import algorithm, subjects
from gitstate.gates.algorithm import closed_reason, closures
from gitstate.gates.records import (
    CLOSED,
    GATES_DIR,
    HOLIDAYS_PATH,
    OPEN,
    SCHEMA_VERSION,
    EnvironmentNotFound,
    GateNotFound,
    Reader,
    all_holidays,
    fresh_environment,
    gate_path,
    read_service,
    timestamp,
)
from gitstate.gates.rules import (
    Holiday,
    HolidayError,
    Schedule,
    parse_config_holidays,
    parse_holiday,
    parse_rules,
)
from gitstate.gates.tickets import (
    TicketNotFound,
    live_queue,
    prune,
    public_ticket,
    relink,
    unlink,
)
from gitstate.gates.validation import (
    INVALID_JSON,
    MAX_NAME,
    Gate,
    InvalidName,
    InvalidRequest,
    check_name,
    environment_list,
    parse_gates,
)
from gitstate.settings import GateSettings
from gitstate.store.branch import Change, Draft, Identity, Snapshot, Store

# The errors moved beside the code that raises them; they stay importable
# from here for callers that have not moved their imports yet.
__all__ = [
    "MAX_NAME",
    "Answer",
    "EnvironmentNotFound",
    "GateExists",
    "GateNotFound",
    "GateSettings",
    "Gates",
    "InvalidName",
    "InvalidRequest",
    "StateMoved",
    "TicketNotFound",
    "check_name",
]

#: ``document_version`` of gatekeeper's service documents, kept in answers.
DOCUMENT_VERSION = 2.2

_COMMIT = re.compile(r"[0-9a-fA-F]{7,40}")


class GateExists(GitStateError, ValueError):
    """A service of that name already exists in the group."""

    status = 400
    kind = BAD_REQUEST

    def __init__(self, group: str, service: str) -> None:
        self.group = group
        self.service = service
        super().__init__("Service with this name already exists")


class StateMoved(GitStateError):
    """The state branch is not at the commit the client expected (If-Match).

    Attributes:
        expected: the commits the client named.
        actual: the tip the write would have been made on.
    """

    status = 412
    kind = CONFLICT
    public_fields = (("commit", "actual"),)

    def __init__(self, expected: tuple[str, ...], actual: str | None) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"the state is at {actual or 'no commit'}, not at {', '.join(expected)}; "
            "read it again and retry"
        )


@dataclasses.dataclass(frozen=True)
class GatePolicy:
    """The ``gates`` settings as the algorithm reads them (:class:`algorithm.Policy`).

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
    def from_settings(cls, settings: GateSettings) -> GatePolicy:
        """Parse the rules and holidays of the ``gates`` section.

        Raises:
            RuleError, HolidayError: a rule or holiday is malformed (naming
                its key, ``gates.rules.<env>[i]``).
        """
        return cls(
            current_lifetime=settings.current_ticket_lifetime,
            queued_lifetime=settings.queued_ticket_lifetime,
            queued_slack=settings.queued_ticket_slack,
            schedule=Schedule(settings.timezone, parse_rules(settings.rules)),
            holidays=tuple(parse_config_holidays(list(settings.holidays))),
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
        self.policy = GatePolicy.from_settings(self.settings)
        self.clock = clock

    # -- helpers -----------------------------------------------------------------

    def _holidays(self, reader: Reader) -> list[Holiday]:
        return all_holidays(reader, self.policy.holidays)

    def _env_view(
        self,
        reader: Reader,
        name: str,
        env: Mapping[str, Any],
        now: float,
        holidays: list[Holiday] | None,
    ) -> dict[str, Any]:
        """Return gatekeeper's environment object; derived state unless ``holidays`` is None."""
        queue = live_queue(reader, env["queue"], now)
        state = env["state"]
        if holidays is not None and closed_reason(
            self.policy.schedule, name, env, queue, now, holidays
        ):
            state = CLOSED
        return {
            "queue": [public_ticket(ticket) for ticket in queue],
            "message_timestamp": env["message_timestamp"],
            "state": state,
            "message": env["message"],
            "state_timestamp": env["state_timestamp"],
        }

    def _doc_view(
        self, reader: Reader, doc: Mapping[str, Any], now: float, derived: bool
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
                when = when.replace(tzinfo=self.policy.schedule.timezone)
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

    def _set_env(
        self, env: dict[str, Any], change: Mapping[str, Any], now: float, label: str
    ) -> list[str]:
        """Apply ``{state?, message?}`` to a stored environment; describe the changes."""
        if not isinstance(change, Mapping):
            raise InvalidRequest(f"{INVALID_JSON} Environment {label} needs state or message.")
        said = []
        if "state" in change:
            state = change["state"]
            if state not in (OPEN, CLOSED):
                raise InvalidRequest("state must be open or closed")
            if env["state"] != state:
                env["state"] = state
                env["state_timestamp"] = timestamp(self.policy.schedule, now)
                said.append(f"{'opens' if state == OPEN else 'closes'} {label}")
        if "message" in change:
            message = change["message"]
            if message is None:
                message = ""
            if not isinstance(message, str):
                raise InvalidRequest("message must be a string")
            if message != env["message"] or message:
                said.append(
                    f"sets the message of {label} to {subjects.short(message)!r}"
                    if message
                    else f"clears the message of {label}"
                )
            env["message"] = message
            env["message_timestamp"] = timestamp(self.policy.schedule, now) if message else ""
        return said

    @staticmethod
    def wanted(gates: Any) -> list[Gate]:
        """Read a test-and-set's ``gates`` body (``{group: {service: env(s)}}``).

        Raises:
            InvalidRequest, InvalidName: it is malformed.
        """
        return parse_gates(gates)

    # -- reads -------------------------------------------------------------------

    def get_service(self, group: str, service: str, at: str | None = None) -> Answer:
        """Return a service's document with every environment's derived state."""
        snap, now = self._snapshot(at)
        doc = read_service(snap, group, service)
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
                env["closed_by"] = closures(
                    self.policy.schedule, name, stored, env["queue"], now, holidays
                )
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
        doc = read_service(snap, group, service)
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
        today = self.policy.schedule.local(now).date()
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
        names = environment_list(environments)
        path = gate_path(group, service)

        def change(draft: Draft, now: float) -> dict[str, Any]:
            if draft.get(path) is not None:
                raise GateExists(group, service)
            doc = {
                "schema_version": SCHEMA_VERSION,
                "group": group,
                "name": service,
                "environments": {
                    name: fresh_environment(self.policy.schedule, now) for name in names
                },
            }
            draft.put(path, doc)
            return self._doc_view(draft, doc, now, derived=False)

        body, commit = self._transact(
            change,
            subject=f"{actor} creates gates {group}/{service} ({subjects.labels(names)})",
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
            raise InvalidRequest(f"{INVALID_JSON} Expected state and/or message.")
        label = f"{group}/{service}/{environment}"

        def apply(draft: Draft, now: float) -> dict[str, Any]:
            doc = read_service(draft, group, service)
            env = doc["environments"].get(environment)
            if env is None:
                raise EnvironmentNotFound(environment)
            said = self._set_env(env, change, now, label)
            if said:
                dropped = prune(draft, doc, now)
                draft.put(gate_path(group, service), doc)
                draft.subject = f"{actor} {' and '.join(said)}" + subjects.dropped(dropped)
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
            raise InvalidRequest(f"{INVALID_JSON} Expected group, name or environments.")
        new_group = check_name("group", fields.get("group", group))
        new_name = check_name("service", fields.get("name", service))
        envs = fields.get("environments")
        replace: list[str] | None = None
        settings: Mapping[str, Any] = {}
        if isinstance(envs, list):
            replace = environment_list(envs)
        elif isinstance(envs, Mapping):
            settings = envs
            for name in settings:
                check_name("environment", name)
        elif envs is not None:
            raise InvalidRequest(f"{INVALID_JSON} Invalid environments.")

        def apply(draft: Draft, now: float) -> dict[str, Any]:
            doc = read_service(draft, group, service)
            old_path = gate_path(group, service)
            said: list[str] = []
            for name, env_change in settings.items():
                env = doc["environments"].get(name)
                if env is None:
                    raise EnvironmentNotFound(name)
                said += self._set_env(env, env_change, now, name)
            moved = (new_group, new_name) != (group, service)
            # Only a write that happens anyway drops dead tickets.
            dropped = prune(draft, doc, now) if said or replace or moved else []
            if replace is not None:
                for name, env in doc["environments"].items():
                    for ticket_id in env["queue"]:
                        unlink(draft, ticket_id, [f"{group}/{service}/{name}"])
                doc["environments"] = {
                    name: fresh_environment(self.policy.schedule, now) for name in replace
                }
                said.append(f"replaces the environments with {subjects.labels(replace)}")
            if moved:
                new_path = gate_path(new_group, new_name)
                if draft.get(new_path) is not None:
                    raise GateExists(new_group, new_name)
                doc["group"], doc["name"] = new_group, new_name
                relink(draft, doc, f"{group}/{service}/", f"{new_group}/{new_name}/")
                draft.delete(old_path)
                said.append(f"moves it to {new_group}/{new_name}")
            if said:
                draft.put(gate_path(new_group, new_name), doc)
                draft.subject = (
                    f"{actor} updates gates {group}/{service}: {'; '.join(said) or 'no change'}"
                    + subjects.dropped(dropped)
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
            read_service(draft, group, service)
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

    # -- tickets -----------------------------------------------------------------

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
        wanted = parse_gates(gates)
        if ticket_id is not None and not isinstance(ticket_id, str):
            raise TicketNotFound(str(ticket_id))
        if link is not None and not isinstance(link, str):
            raise InvalidRequest(f"{INVALID_JSON} link must be a string.")
        labels = [item.label for item in wanted]

        def apply(draft: Draft, now: float) -> dict[str, Any]:
            return self.take_on(draft, now, wanted, ticket_id, link, queue, actor=actor)

        body, commit = self._transact(
            apply,
            subject=f"{actor} tests and sets {subjects.labels(labels)}",
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
        wanted: list[Gate],
        ticket_id: str | None = None,
        link: str | None = None,
        queue: bool = False,
        *,
        actor: str,
    ) -> dict[str, Any]:
        """Test-and-set ``wanted`` on ``draft`` (:func:`algorithm.take`, without a commit).

        What :meth:`test_and_set` commits; other services call it inside
        their own transaction (a deploy claim takes its gate's ticket in the
        commit that claims the deploy). Sets ``draft.subject`` when it writes.

        Raises:
            TicketNotFound, GateNotFound, EnvironmentNotFound, InvalidName.
        """
        taken = algorithm.take(
            draft, self.policy, now, wanted, ticket_id=ticket_id, link=link, queue=queue
        )
        if taken.action is not None:
            draft.subject = f"{actor} {taken.action}"
        return taken.body

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
        reader: Reader,
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
        gate = Gate(group, service, environment)
        return algorithm.why_closed(reader, self.policy, now, gate, holder=holder)

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
        action = algorithm.release(draft, ticket_id, may_release=may_release)
        if action is not None:
            draft.subject = f"{actor} {action}"
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
            raise InvalidRequest(f"{INVALID_JSON} Could not find holidays")
        holidays = []
        for number, item in enumerate(items):
            try:
                holiday = parse_holiday(item)
            except HolidayError as ex:
                raise InvalidRequest(f"{INVALID_JSON} Holiday {number}: {ex.detail}") from ex
            for env in holiday.environments:
                if env != "*":
                    check_name("environment", env)
            holidays.append(holiday)
        holidays.sort(key=lambda item: (item.date, item.reason))
        record = {
            "schema_version": SCHEMA_VERSION,
            "holidays": [holiday.to_record() for holiday in holidays],
        }
        days = subjects.labels([holiday.date.isoformat() for holiday in holidays]) or "none"

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
