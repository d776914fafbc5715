"""The store path and the bare algorithm give the same answers and the same records.

``tests/unit/test_gate_algorithm.py`` runs the algorithm on records in a
dict. Here one sequence of test-and-sets and releases runs both through the
HTTP API (a draft of the real state branch, committed) and through
:mod:`gitstate.gates.algorithm` on a dict copied from the branch; after each
step the answers and every gate and ticket record must be equal.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gitstate.gates import algorithm
from gitstate.gates.validation import Gate, parse_gates
from tests.support.gates import Clock, GateClient, make_client

MINUTE = 60


class Records:
    """Records in a dict, read and written as a draft does (copies in and out)."""

    def __init__(self, records: Mapping[str, dict[str, Any]]) -> None:
        self.records = copy.deepcopy(dict(records))

    def get(self, path: str) -> dict[str, Any] | None:
        record = self.records.get(path)
        return copy.deepcopy(record) if record is not None else None

    def put(self, path: str, record: Mapping[str, Any]) -> None:
        self.records[path] = copy.deepcopy(dict(record))

    def delete(self, path: str) -> None:
        self.records.pop(path, None)


def branch_records(client: GateClient) -> dict[str, dict[str, Any]]:
    snap = client.services.store.snapshot()
    return {
        path: record for prefix in ("gates", "tickets") for path, record in snap.records(prefix)
    }


class Both:
    """Runs each step on the store (over HTTP) and on the dict, and compares."""

    def __init__(self, client: GateClient) -> None:
        self.client = client
        self.records = Records(branch_records(client))
        self.policy = client.services.gates.policy

    def tas(self, gates: Any, ticket: str | None = None, queue: bool = False) -> dict[str, Any]:
        body = {"ticket": ticket} if ticket else {}
        result = self.client.tas(gates, "?queue=true" if queue else "", **body)
        assert result.status_code == 200, result.text
        answer = result.json
        made = answer.get("ticket", {}).get("id")
        taken = algorithm.take(
            self.records,
            self.policy,
            self.client.clock(),
            parse_gates(gates),
            ticket_id=ticket,
            queue=queue,
            new_id=lambda: made,
        )
        assert taken.body == answer
        self.same_records()
        return answer

    def release(self, ticket: str) -> None:
        result = self.client.simulate_delete(f"/api/tickets/{ticket}")
        assert result.json == {"status": "ok"}
        algorithm.release(self.records, ticket)
        self.same_records()

    def why_closed(self, gate: Gate) -> str | None:
        gates = self.client.services.gates
        reason = gates.why_closed(gate.group, gate.service, gate.environment)
        now = self.client.clock()
        assert algorithm.why_closed(self.records, self.policy, now, gate) == reason
        return reason

    def same_records(self) -> None:
        assert self.records.records == branch_records(self.client)


def test_store_and_algorithm_agree_step_by_step(tmp_path: Path) -> None:
    client = make_client(tmp_path, clock=Clock(1_795_000_000.0))
    client.create("g", "s", ["develop", "live"])
    client.create("g", "t", ["live"])
    both = Both(client)
    live = Gate("g", "s", "live")

    a = both.tas({"g": {"s": "live", "t": "live"}})["ticket"]["id"]
    assert both.why_closed(live) == f"held by ticket {a}"
    assert both.tas({"g": {"s": ["develop", "live"]}})["status"] == "denied"
    b = both.tas({"g": {"s": ["develop", "live"]}}, queue=True)["ticket"]["id"]
    client.clock.advance(MINUTE)
    assert both.tas({"g": {"s": "live"}}, ticket=b, queue=True)["status"] == "queued"
    assert both.tas({"g": {"t": "live"}}, ticket=b, queue=True)["status"] == "denied"
    assert both.tas({"g": {"s": "live"}}, ticket=a)["status"] == "ok"

    client.clock.advance(10 * MINUTE)  # b's queued lifetime and slack are over
    c = both.tas({"g": {"s": "develop"}}, queue=True)
    assert c["status"] == "ok"
    assert both.why_closed(Gate("g", "s", "develop")) == f"held by ticket {c['ticket']['id']}"

    both.release(a)
    assert both.why_closed(live) is None
    both.release(a)
    assert both.tas({"g": {"s": "live", "t": "live"}}, ticket=c["ticket"]["id"])["status"] == "ok"
