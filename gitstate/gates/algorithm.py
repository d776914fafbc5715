"""The gate algorithm: test-and-set, release and why-closed over a draft.

Plain functions of what they are given: a :class:`~gitstate.gates.records.Writer`
(a draft of the state branch, or a dict in the unit tests), a
:class:`Policy` (lifetimes, rules, configured holidays) and the time. They
read and write records through the writer and return what happened,
including a few words for the commit subject; they open no store, run no
transaction and do no I/O of their own. :class:`~gitstate.gates.service.Gates`
runs them inside :meth:`Store.transact`, and the deploy queue runs
:func:`take` and :func:`release` inside the commit that claims or finishes
a deploy.

A gate is closed for the API when any of these holds, and open otherwise:

* it is closed by hand (the stored ``state`` is ``closed``);
* a holiday lists its environment today, or its environment's time rules
  do not cover now (see :mod:`gitstate.gates.rules`);
* a live ticket other than the caller's is at the head of its queue.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gitstate.gates import subjects
from gitstate.gates.records import (
    CLOSED,
    Reader,
    Writer,
    all_holidays,
    environment_of,
    gate_path,
    read_service,
    timestamp,
)
from gitstate.gates.rules import Holiday, Schedule
from gitstate.gates.tickets import (
    CURRENT,
    QUEUED,
    expiry,
    live_queue,
    live_ticket,
    needs_rewrite,
    new_ticket,
    prune,
    public_ticket,
    read_ticket,
    ticket_path,
)
from gitstate.gates.validation import Gate, check_name

OK = "ok"
DENIED = "denied"


class Policy(Protocol):
    """What the algorithm needs of the settings (:class:`GatePolicy` has it)."""

    @property
    def current_lifetime(self) -> int:
        """Seconds an ``ok`` ticket lives (0 = never expires)."""
        ...

    @property
    def queued_lifetime(self) -> int:
        """Seconds a queued ticket lives after its last re-send (0 = never expires)."""
        ...

    @property
    def queued_slack(self) -> int:
        """Extra seconds stored on a queued ticket's expiry, so re-sends need not write."""
        ...

    @property
    def schedule(self) -> Schedule:
        """Time rules per environment and the timezone."""
        ...

    @property
    def holidays(self) -> tuple[Holiday, ...]:
        """Holidays from the config file."""
        ...


# -- why a gate is closed ---------------------------------------------------------------


def closures(
    schedule: Schedule,
    environment: str,
    env: Mapping[str, Any],
    queue: list[dict[str, Any]],
    now: float,
    holidays: list[Holiday],
    holder: str | None = None,
) -> list[dict[str, str]]:
    """List every reason a gate is closed at ``now``, strongest first; empty when open.

    Each reason is ``{"kind": manual|holiday|rule|ticket, "detail": text}``.
    ``queue`` is the gate's live tickets; one headed by ``holder`` (the
    caller's ticket) does not close the gate to it.
    """
    reasons = []
    if env["state"] == CLOSED:
        reasons.append({"kind": "manual", "detail": "closed manually"})
    holiday = schedule.holiday(environment, now, holidays)
    if holiday is not None:
        reasons.append({"kind": "holiday", "detail": f"holiday: {holiday.reason}"})
    if not schedule.open_by_rules(environment, now):
        reasons.append({"kind": "rule", "detail": "outside the time rules"})
    if queue and queue[0]["id"] != holder:
        reasons.append({"kind": "ticket", "detail": f"held by ticket {queue[0]['id']}"})
    return reasons


def closed_reason(
    schedule: Schedule,
    environment: str,
    env: Mapping[str, Any],
    queue: list[dict[str, Any]],
    now: float,
    holidays: list[Holiday],
    holder: str | None = None,
) -> str | None:
    """Say why a gate is closed (its strongest reason), or None when it is open."""
    reasons = closures(schedule, environment, env, queue, now, holidays, holder)
    return reasons[0]["detail"] if reasons else None


def why_closed(
    reader: Reader,
    policy: Policy,
    now: float,
    gate: Gate,
    *,
    holder: str | None = None,
) -> str | None:
    """Say why one gate is closed to ``holder`` at ``now``, or None if it is open.

    Raises:
        GateNotFound, EnvironmentNotFound, InvalidName.
    """
    check_name("environment", gate.environment)
    doc = read_service(reader, gate.group, gate.service)
    env = environment_of(doc, gate.environment)
    queue = live_queue(reader, env["queue"], now)
    holidays = all_holidays(reader, policy.holidays)
    return closed_reason(policy.schedule, gate.environment, env, queue, now, holidays, holder)


# -- test-and-set -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a test-and-set was denied: the first gate that refused and its reason.

    Attributes:
        gate: ``group/service/environment``.
        reason: ``closed manually``, ``holiday: ...``, ``outside the time
            rules`` or ``held by ticket <id>``.
    """

    gate: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Taken:
    """The outcome of a test-and-set.

    Attributes:
        status: ``ok``, ``queued`` or ``denied``.
        ticket: the ticket as the API shows it; None when denied.
        refusal: which gate denied it and why; None unless denied.
        action: what was written, for the commit subject after the actor
            (``takes a/b/c with new ticket 1c2d3e4f``); None when nothing was.
    """

    status: str
    ticket: dict[str, Any] | None = None
    refusal: Refusal | None = None
    action: str | None = None

    @property
    def body(self) -> dict[str, Any]:
        """The answer in gatekeeper's shape (a denial names no reason, as there)."""
        if self.ticket is None:
            return {"status": self.status}
        return {"status": self.status, "ticket": self.ticket}


def take(
    writer: Writer,
    policy: Policy,
    now: float,
    wanted: list[Gate],
    *,
    ticket_id: str | None = None,
    link: str | None = None,
    queue: bool = False,
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> Taken:
    """Take several gates at once, or queue for them.

    ``ok`` when every gate is open and its queue free or headed by the
    caller's ticket; ``queued`` when some gate is held by another ticket
    and ``queue`` is true; ``denied`` otherwise, and a denial writes
    nothing. A new ticket joins the queue of every gate asked for; a known
    ticket joins those it is not in yet only while they are free (else it is
    denied), so no two tickets ever stand in opposite orders on two gates
    (which would deadlock them).

    Raises:
        TicketNotFound: ``ticket_id`` is unknown or expired.
        GateNotFound, EnvironmentNotFound, InvalidName.
    """
    ticket = live_ticket(writer, ticket_id, now) if ticket_id is not None else None
    holder = ticket["id"] if ticket is not None else None
    holidays = all_holidays(writer, policy.holidays)
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    status = OK
    for item in wanted:
        env = _environment(writer, docs, item)
        live = live_queue(writer, env["queue"], now)
        closed = closed_reason(policy.schedule, item.environment, env, [], now, holidays)
        verdict = _verdict(closed, live, holder, queue)
        if verdict == DENIED:
            return Taken(DENIED, refusal=Refusal(item.label, closed or _held(live)))
        if verdict == QUEUED:
            status = QUEUED
    # Every gate is open and the caller may hold or wait: write.
    if ticket is None:
        ticket = new_ticket(new_id(), link)
    action = _describe(ticket, status, wanted, is_new=holder is None)
    written = _join_and_stamp(writer, policy, now, docs, wanted, ticket, status)
    return Taken(
        status, public_ticket(ticket), action=None if written is None else action + written
    )


def _environment(
    reader: Reader, docs: dict[tuple[str, str], dict[str, Any]], item: Gate
) -> dict[str, Any]:
    """Return the environment ``item`` names, reading its service once per call of :func:`take`."""
    key = (item.group, item.service)
    if key not in docs:
        docs[key] = read_service(reader, item.group, item.service)
    return environment_of(docs[key], item.environment)


def _verdict(
    closed: str | None, live: list[dict[str, Any]], holder: str | None, queue: bool
) -> str:
    """Judge one gate: ``ok``, ``queued`` or ``denied`` for the caller."""
    if closed is not None:
        return DENIED
    if not live or live[0]["id"] == holder:
        return OK
    if not queue:
        return DENIED
    if holder is not None and all(t["id"] != holder for t in live):
        # NOTE(gates): a known ticket may not join the tail of a busy queue
        # later: two tickets could then stand in opposite orders on two
        # gates and wait for each other forever. New tickets join all their
        # gates at once, which keeps every pair in one order everywhere.
        return DENIED
    return QUEUED


def _held(live: list[dict[str, Any]]) -> str:
    return f"held by ticket {live[0]['id']}"


def _describe(ticket: Mapping[str, Any], status: str, wanted: list[Gate], *, is_new: bool) -> str:
    """Say what a test-and-set that writes does (the commit subject, after the actor)."""
    names = subjects.labels([item.label for item in wanted])
    short_id = ticket["id"][:8]
    if is_new:
        verb = "takes" if status == OK else "queues for"
        return f"{verb} {names} with new ticket {short_id}"
    if status == OK and ticket["status"] != CURRENT:
        return f"takes {names}: ticket {short_id} reached the head of the queue"
    return f"refreshes {status} ticket {short_id} on {names}"


def _join_and_stamp(
    writer: Writer,
    policy: Policy,
    now: float,
    docs: dict[tuple[str, str], dict[str, Any]],
    wanted: list[Gate],
    ticket: dict[str, Any],
    status: str,
) -> str | None:
    """Queue ``ticket`` on the gates it is not in yet; restamp it if it needs to.

    Writes the ticket and the services whose queues changed, and returns the
    end of the commit subject (the expired tickets dropped on the way), or
    None when nothing needed writing.
    """
    joined = _join(docs, wanted, ticket)
    if status == OK:
        lifetime, slack, target = policy.current_lifetime, 0, CURRENT
    else:
        lifetime, slack, target = policy.queued_lifetime, policy.queued_slack, QUEUED
    if not joined and not needs_rewrite(ticket, target, lifetime, now):
        return None
    ticket["status"] = target
    ticket["expiration_date"] = expiry(lifetime, slack, now)
    ticket["updated"] = timestamp(policy.schedule, now)
    # The ticket goes in first so that pruning sees it alive.
    writer.put(ticket_path(ticket["id"]), ticket)
    touched = {(item.group, item.service) for item in joined}
    return subjects.dropped(_write_services(writer, docs, touched, now))


def _join(
    docs: dict[tuple[str, str], dict[str, Any]], wanted: list[Gate], ticket: dict[str, Any]
) -> list[Gate]:
    """Append ``ticket`` to the queues of ``wanted`` it is not in; return those it joined."""
    joined = []
    for item in wanted:
        env = docs[(item.group, item.service)]["environments"][item.environment]
        if ticket["id"] not in env["queue"]:
            env["queue"].append(ticket["id"])
            joined.append(item)
        if item.label not in ticket["gates"]:
            ticket["gates"].append(item.label)
    return joined


def _write_services(
    writer: Writer,
    docs: dict[tuple[str, str], dict[str, Any]],
    touched: set[tuple[str, str]],
    now: float,
) -> list[str]:
    """Prune every service read; write those pruned or ``touched``; return the ids dropped."""
    dropped: list[str] = []
    for key, doc in docs.items():
        pruned = prune(writer, doc, now)
        if pruned or key in touched:
            dropped += pruned
            writer.put(gate_path(*key), doc)
    return dropped


# -- release ----------------------------------------------------------------------------


def release(
    writer: Writer,
    ticket_id: str,
    *,
    may_release: Callable[[set[str]], None] | None = None,
) -> str | None:
    """Delete a ticket, dead or alive, and take it out of every queue it stands in.

    ``may_release`` is called with the groups of the ticket's gates before
    anything is written; it raises to refuse. Returns what was written, for
    the commit subject after the actor, or None for an unknown ticket (which
    is fine, as in gatekeeper, and writes nothing).
    """
    ticket = read_ticket(writer, ticket_id)
    if ticket is None:
        return None
    labels = list(ticket.get("gates", []))
    if may_release is not None:
        may_release({label.split("/", 1)[0] for label in labels})
    for key in dict.fromkeys(label.rsplit("/", 1)[0] for label in labels):
        group, service = key.split("/", 1)
        _leave_queues(writer, group, service, ticket_id)
    writer.delete(ticket_path(ticket_id))
    return f"releases ticket {ticket_id[:8]} ({subjects.labels(labels)})"


def _leave_queues(writer: Writer, group: str, service: str, ticket_id: str) -> None:
    """Take ``ticket_id`` out of every queue of one service; write it only if it changed."""
    path = gate_path(group, service)
    doc = writer.get(path)
    if doc is None:
        return
    changed = False
    for env in doc["environments"].values():
        if ticket_id in env["queue"]:
            env["queue"] = [item for item in env["queue"] if item != ticket_id]
            changed = True
    if changed:
        writer.put(path, doc)
