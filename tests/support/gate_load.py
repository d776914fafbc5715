"""The multi-gate test-and-set load of the gate concurrency tests, and its check.

``tests/system/test_gates_linearizable.py`` (one server) and
``tests/system/test_cluster.py`` (three nodes sharing a git server) drive
the same gates with the same overlapping gate sets, and check every ``ok``
answer against the replayed history (:mod:`tests.support.gate_replay`).
"""

from __future__ import annotations

import requests

from tests.support.gate_replay import GateReplay

#: The services of group ``grp``, each with ``develop`` and ``live``.
SERVICES = ("a", "b", "c")
#: The gate sets clients test-and-set, overlapping so that they contend.
GATE_SETS = [
    {"grp": {"a": ["develop"]}},
    {"grp": {"a": ["develop", "live"]}},
    {"grp": {"b": "live"}},
    {"grp": {"a": "live", "b": ["develop", "live"]}},
    {"grp": {"c": ["develop"], "b": "develop"}},
    {"grp": {"c": ["develop", "live"]}},
]

#: An ``ok`` answer: the ticket, the gates it names and the answer's ETag.
Ok = tuple[str, list[str], str]


def create_gates(base: str) -> None:
    """Create every service of :data:`SERVICES` on the server at ``base``."""
    for service in SERVICES:
        response = requests.post(
            f"{base}/api/gates/grp/{service}",
            json={"environments": ["develop", "live"]},
            timeout=30,
        )
        assert response.status_code == 200, response.text


def unheld(replayed: GateReplay, oks: list[Ok]) -> list[str]:
    """Say which ``ok`` answers the history does not bear out.

    Each answer's ETag names a commit; that commit must be in the replayed
    history (an acknowledged write is never lost) and its ticket must hold
    every gate it asked for there.
    """
    problems = []
    for ticket, gate_labels, etag in oks:
        commit = etag.strip('"')
        if commit not in replayed.holders:
            problems.append(f"ok answer for {ticket} names {commit}, not in the history")
            continue
        for label in gate_labels:
            if replayed.holders[commit][label] != ticket:
                problems.append(f"{ticket} not holding {label} at {commit}")
    return problems
