"""The gate algorithm on records held in a dict: test-and-set, release, why-closed.

The functions of :mod:`gitstate.gates.algorithm` read and write records
through ``get``/``put``/``delete``; :class:`Records` is that input and
nothing more (a copy in, a copy out, as a draft does), so these tests need
no store and no git. ``tests/api/test_gates_parity.py`` checks that the store
path gives the same answers and records.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping
from typing import Any

import pytest

from gitstate.gates.algorithm import release, take, why_closed
from gitstate.gates.records import (
    HOLIDAYS_PATH,
    EnvironmentNotFound,
    GateNotFound,
    fresh_environment,
    gate_path,
)
from gitstate.gates.rules import Schedule, parse_rules
from gitstate.gates.service import GatePolicy
from gitstate.gates.tickets import TicketNotFound, ticket_path
from gitstate.gates.validation import Gate

#: Monday 2026-11-23, 12:00 UTC.
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC).timestamp()
MINUTE = 60
POLICY = GatePolicy()
A, B, C = "aaaa1111", "bbbb2222", "cccc3333"

S_DEV = Gate("g", "s", "develop")
S_LIVE = Gate("g", "s", "live")
T_LIVE = Gate("g", "t", "live")


class Records:
    """The state branch's records as a dict: what the algorithm reads and writes."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    def get(self, path: str) -> dict[str, Any] | None:
        record = self.records.get(path)
        return copy.deepcopy(record) if record is not None else None

    def put(self, path: str, record: Mapping[str, Any]) -> None:
        self.records[path] = copy.deepcopy(dict(record))

    def delete(self, path: str) -> None:
        self.records.pop(path, None)

    def queue(self, gate: Gate) -> list[str]:
        doc = self.records[gate_path(gate.group, gate.service)]
        return doc["environments"][gate.environment]["queue"]

    def ticket(self, ticket_id: str) -> dict[str, Any] | None:
        return self.records.get(ticket_path(ticket_id))


@pytest.fixture
def records() -> Records:
    """Service g/s with develop and live, service g/t with live; all open, no tickets."""
    state = Records()
    for service, envs in (("s", ["develop", "live"]), ("t", ["live"])):
        state.put(
            gate_path("g", service),
            {
                "schema_version": 1,
                "group": "g",
                "name": service,
                "environments": {env: fresh_environment(POLICY.schedule, NOW) for env in envs},
            },
        )
    return state


def tas(
    records: Records,
    gates: list[Gate],
    *,
    new: str | None = None,
    ticket: str | None = None,
    queue: bool = False,
    now: float = NOW,
    policy: GatePolicy = POLICY,
) -> Any:
    """Test-and-set; a new ticket, if one is made, gets the id ``new``."""

    def new_id() -> str:
        assert new is not None, "the test did not expect a new ticket"
        return new

    return take(records, policy, now, gates, ticket_id=ticket, queue=queue, new_id=new_id)


def close(records: Records, gate: Gate) -> None:
    doc = records.get(gate_path(gate.group, gate.service))
    assert doc is not None
    doc["environments"][gate.environment]["state"] = "closed"
    records.put(gate_path(gate.group, gate.service), doc)


# -- test-and-set over several gates ------------------------------------------------------


def test_all_open_grants_one_ticket_queued_on_every_gate(records: Records) -> None:
    taken = tas(records, [S_DEV, S_LIVE, T_LIVE], new=A)

    assert taken.status == "ok"
    assert taken.body == {
        "status": "ok",
        "ticket": {
            "id": A,
            "updated": "2026-11-23 12:00:00+0000",
            "expiration_date": int(NOW) + 720 * MINUTE,
            "link": None,
        },
    }
    for gate in (S_DEV, S_LIVE, T_LIVE):
        assert records.queue(gate) == [A]
    stored = records.ticket(A)
    assert stored is not None
    assert stored["status"] == "current"
    assert stored["gates"] == ["g/s/develop", "g/s/live", "g/t/live"]
    assert taken.action == "takes g/s/develop, g/s/live, g/t/live with new ticket aaaa1111"


def test_one_closed_gate_denies_all_naming_it_and_writes_nothing(records: Records) -> None:
    close(records, T_LIVE)
    before = copy.deepcopy(records.records)

    taken = tas(records, [S_DEV, T_LIVE, S_LIVE], new=A, queue=True)

    assert taken.body == {"status": "denied"}
    assert taken.refusal is not None
    assert (taken.refusal.gate, taken.refusal.reason) == ("g/t/live", "closed manually")
    assert taken.action is None
    assert records.records == before


def test_time_rules_and_holidays_deny_with_their_reason(records: Records) -> None:
    office = GatePolicy(
        schedule=Schedule(
            dt.UTC, parse_rules({"live": [{"days": "mon-fri", "hours": "08:00-18:00"}]})
        )
    )
    evening = NOW + 7 * 60 * MINUTE  # Monday 19:00

    assert tas(records, [S_LIVE], new=A, now=NOW, policy=office).status == "ok"
    refused = tas(records, [T_LIVE], new=B, now=evening, policy=office).refusal
    assert refused is not None
    assert (refused.gate, refused.reason) == ("g/t/live", "outside the time rules")

    records.put(
        HOLIDAYS_PATH,
        {
            "schema_version": 1,
            "holidays": [{"date": "2026-11-23", "reason": "freeze", "environments": ["develop"]}],
        },
    )
    refused = tas(records, [T_LIVE, S_DEV], new=B).refusal
    assert refused is not None
    assert (refused.gate, refused.reason) == ("g/s/develop", "holiday: freeze")


def test_a_held_gate_denies_others_unless_they_queue(records: Records) -> None:
    tas(records, [S_LIVE], new=A)

    denied = tas(records, [S_DEV, S_LIVE], new=B)
    assert denied.status == "denied"
    assert denied.refusal is not None
    assert denied.refusal.reason == f"held by ticket {A}"
    assert records.queue(S_DEV) == []

    queued = tas(records, [S_DEV, S_LIVE], new=B, queue=True)
    assert queued.status == "queued"
    # A new ticket joins every gate it asked for, the free one too.
    assert records.queue(S_DEV) == [B]
    assert records.queue(S_LIVE) == [A, B]
    assert queued.body["ticket"]["expiration_date"] == int(NOW) + (2 + 5) * MINUTE
    assert queued.action == f"queues for g/s/develop, g/s/live with new ticket {B}"


def test_queued_tickets_are_served_in_fifo_order(records: Records) -> None:
    tas(records, [S_LIVE], new=A)
    tas(records, [S_LIVE], new=B, queue=True)
    tas(records, [S_LIVE], new=C, queue=True)
    assert records.queue(S_LIVE) == [A, B, C]

    release(records, A)
    # C asking first does not let it pass B.
    assert tas(records, [S_LIVE], ticket=C, queue=True).status == "queued"
    promoted = tas(records, [S_LIVE], ticket=B, queue=True)
    assert promoted.status == "ok"
    assert promoted.action == f"takes g/s/live: ticket {B} reached the head of the queue"
    assert (records.ticket(B) or {})["status"] == "current"

    release(records, B)
    assert tas(records, [S_LIVE], ticket=C).status == "ok"
    assert records.queue(S_LIVE) == [C]


def test_the_holder_re_sending_keeps_the_gate_and_its_place(records: Records) -> None:
    first = tas(records, [S_LIVE, T_LIVE], new=A)
    tas(records, [S_LIVE], new=B, queue=True)

    again = tas(records, [S_LIVE, T_LIVE], ticket=A, now=NOW + MINUTE)

    assert again.status == "ok"
    assert again.ticket["id"] == A
    assert again.ticket["expiration_date"] == first.ticket["expiration_date"] + MINUTE
    assert records.queue(S_LIVE) == [A, B]
    assert records.queue(T_LIVE) == [A]
    assert again.action == f"refreshes ok ticket {A} on g/s/live, g/t/live"


def test_a_queued_re_send_writes_only_when_its_slack_runs_out(records: Records) -> None:
    tas(records, [S_LIVE], new=A)
    stored = tas(records, [S_LIVE], new=B, queue=True).ticket["expiration_date"]

    soon = tas(records, [S_LIVE], ticket=B, queue=True, now=NOW + MINUTE)
    assert (soon.status, soon.action) == ("queued", None)
    assert (records.ticket(B) or {})["expiration_date"] == stored

    late = tas(records, [S_LIVE], ticket=B, queue=True, now=NOW + 6 * MINUTE)
    assert late.action is not None
    assert (records.ticket(B) or {})["expiration_date"] == int(NOW) + (6 + 2 + 5) * MINUTE


def test_a_known_ticket_may_not_join_a_busy_queue(records: Records) -> None:
    # A on g/s/live and B on g/t/live each wanting the other's gate would
    # stand in opposite orders and wait for each other forever.
    tas(records, [S_LIVE], new=A)
    tas(records, [T_LIVE], new=B)

    taken = tas(records, [T_LIVE, S_LIVE], ticket=B, queue=True)

    assert taken.status == "denied"
    assert taken.refusal is not None
    assert (taken.refusal.gate, taken.refusal.reason) == ("g/s/live", f"held by ticket {A}")
    assert records.queue(S_LIVE) == [A]


def test_expired_tickets_are_ignored_then_reaped_by_the_next_write(records: Records) -> None:
    tas(records, [S_LIVE], new=A)
    later = NOW + 721 * MINUTE
    before = copy.deepcopy(records.records)

    assert why_closed(records, POLICY, later, S_LIVE) is None
    assert records.records == before  # a read never writes

    with pytest.raises(TicketNotFound):
        tas(records, [S_LIVE], ticket=A, now=later)
    taken = tas(records, [S_LIVE], new=B, now=later)
    assert taken.status == "ok"
    assert records.queue(S_LIVE) == [B]
    assert records.ticket(A) is None
    assert taken.action == f"takes g/s/live with new ticket {B} (drops expired ticket {A})"


# -- release --------------------------------------------------------------------------------


def test_release_leaves_every_queue_and_lets_the_next_one_through(records: Records) -> None:
    tas(records, [S_LIVE, T_LIVE], new=A)
    tas(records, [T_LIVE], new=B, queue=True)

    action = release(records, A)

    assert action == f"releases ticket {A} (g/s/live, g/t/live)"
    assert records.ticket(A) is None
    assert records.queue(S_LIVE) == []
    assert records.queue(T_LIVE) == [B]
    assert tas(records, [T_LIVE], ticket=B).status == "ok"


def test_release_of_an_unknown_ticket_writes_nothing(records: Records) -> None:
    before = copy.deepcopy(records.records)
    assert release(records, "dddd4444") is None
    assert release(records, "../gates/g/s") is None
    assert records.records == before


def test_release_can_be_refused_by_group_before_anything_is_written(records: Records) -> None:
    tas(records, [S_LIVE], new=A)
    before = copy.deepcopy(records.records)
    asked: list[set[str]] = []

    def refuse(groups: set[str]) -> None:
        asked.append(groups)
        raise PermissionError("not yours")

    with pytest.raises(PermissionError):
        release(records, A, may_release=refuse)
    assert asked == [{"g"}]
    assert records.records == before


# -- why-closed ------------------------------------------------------------------------------


def test_why_closed_names_the_strongest_reason(records: Records) -> None:
    office = GatePolicy(
        schedule=Schedule(
            dt.UTC, parse_rules({"live": [{"days": "sat-sun", "hours": "00:00-24:00"}]})
        )
    )
    assert why_closed(records, POLICY, NOW, S_LIVE) is None
    assert why_closed(records, office, NOW, S_LIVE) == "outside the time rules"
    close(records, S_LIVE)
    assert why_closed(records, office, NOW, S_LIVE) == "closed manually"


def test_why_closed_sees_the_holder_but_not_to_the_holder_itself(records: Records) -> None:
    tas(records, [S_DEV], new=A)
    assert why_closed(records, POLICY, NOW, S_DEV) == f"held by ticket {A}"
    assert why_closed(records, POLICY, NOW, S_DEV, holder=A) is None
    assert why_closed(records, POLICY, NOW, S_LIVE) is None


def test_unknown_gates_and_tickets_are_errors_not_denials(records: Records) -> None:
    with pytest.raises(GateNotFound):
        tas(records, [S_DEV, Gate("g", "nope", "live")], new=A)
    with pytest.raises(EnvironmentNotFound):
        tas(records, [Gate("g", "t", "develop")], new=A)
    with pytest.raises(TicketNotFound):
        tas(records, [S_DEV], ticket=A)
    with pytest.raises(EnvironmentNotFound):
        why_closed(records, POLICY, NOW, Gate("g", "t", "develop"))
    assert records.queue(S_DEV) == []
