"""Replay the state branch and check the gates' invariants in every commit.

Shared by the linearizability test (``tests/system/test_gates_linearizable.py``)
and the soak harness (``bench/soak``). For each commit of the first-parent
history it checks that:

* no gate has two live ``current`` tickets;
* the holder is the first live ticket in its queue;
* every live ticket is linked from each gate it names;
* two live tickets never stand in opposite orders on two gates.

Violations are collected, not raised, so a long run reports all of them at
once. Records are parsed once per blob and subtrees are read once per tree
id, so replaying tens of thousands of commits stays cheap.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pygit2

from gitstate.store.codec import decode

STATE_REF = "refs/heads/state"


def labels(gates: dict[str, Any]) -> list[str]:
    """Return the ``group/service/env`` labels of a test-and-set's ``gates`` body."""
    out = []
    for group, services in gates.items():
        for service, envs in services.items():
            for env in [envs] if isinstance(envs, str) else envs:
                out.append(f"{group}/{service}/{env}")
    return out


@dataclasses.dataclass
class GateReplay:
    """What the replay found.

    Attributes:
        commits: commits replayed.
        holders: commit id → gate label → the live ticket holding it (or None).
        queues: commit id → gate label → the live tickets queued, in order.
        violations: one line per broken invariant, naming the commit.
    """

    commits: int = 0
    holders: dict[str, dict[str, str | None]] = dataclasses.field(default_factory=dict)
    queues: dict[str, dict[str, tuple[str, ...]]] = dataclasses.field(default_factory=dict)
    violations: list[str] = dataclasses.field(default_factory=list)


class _Records:
    """Read every record under a tree, memoised by tree and blob id."""

    def __init__(self, repo: pygit2.Repository) -> None:
        self.repo = repo
        self._blobs: dict[pygit2.Oid, Any] = {}
        self._trees: dict[pygit2.Oid, dict[str, Any]] = {}

    def under(self, root: pygit2.Tree, prefix: str) -> dict[str, Any]:
        """Return path → record for every file under ``prefix`` of ``root``."""
        if prefix not in root:
            return {}
        return self._tree(root[prefix].id, prefix + "/")

    def _tree(self, oid: pygit2.Oid, where: str) -> dict[str, Any]:
        cached = self._trees.get(oid)
        if cached is None:
            cached = {}
            for entry in self.repo[oid]:
                if entry.type_str == "tree":
                    for path, record in self._tree(entry.id, "").items():
                        cached[f"{entry.name}/{path}"] = record
                else:
                    if entry.id not in self._blobs:
                        self._blobs[entry.id] = decode(self.repo[entry.id].data, entry.name)
                    cached[entry.name] = self._blobs[entry.id]
            self._trees[oid] = cached
        return {where + path: record for path, record in cached.items()}


def replay(state_repo: Path | str, *, keep_queues: bool = True, limit: int = 50) -> GateReplay:
    """Replay every commit of the state branch; see the module docstring.

    Args:
        state_repo: the bare state repository.
        keep_queues: also keep every commit's live queues (memory grows
            with commits times gates).
        limit: stop collecting violations after this many.
    """
    repo = pygit2.Repository(str(state_repo))
    reader = _Records(repo)
    result = GateReplay()

    def fail(message: str) -> None:
        if len(result.violations) < limit:
            result.violations.append(message)

    tip = repo.references[STATE_REF].target
    for commit in repo.walk(tip, pygit2.enums.SortMode.TOPOLOGICAL):
        if len(commit.parents) > 1:
            fail(f"{commit.id}: merge commit; state history must be linear")
        result.commits += 1
        when = commit.commit_time
        tickets = {rec["id"]: rec for rec in reader.under(commit.tree, "tickets").values()}
        services = reader.under(commit.tree, "gates")

        def alive(ticket_id: str, when: int = when, tickets: dict[str, Any] = tickets) -> bool:
            ticket = tickets.get(ticket_id)
            return ticket is not None and (
                not ticket["expiration_date"] or when < ticket["expiration_date"]
            )

        held: dict[str, str | None] = {}
        queued: dict[str, tuple[str, ...]] = {}
        rank: dict[tuple[str, str], str] = {}
        for doc in services.values():
            for env, state in doc["environments"].items():
                label = f"{doc['group']}/{doc['name']}/{env}"
                live = [t for t in state["queue"] if alive(t)]
                current = [t for t in live if tickets[t]["status"] == "current"]
                if len(current) > 1:
                    fail(f"{commit.id}: {label} held by {current}")
                if current and live[0] != current[0]:
                    fail(f"{commit.id}: {label} holder {current[0]} is not first in {live}")
                held[label] = live[0] if live and current else None
                queued[label] = tuple(live)
                for ticket_id in live:
                    if label not in tickets[ticket_id]["gates"]:
                        fail(f"{commit.id}: {label} queues {ticket_id}, which does not name it")
                # FIFO is one order: two live tickets sharing gates stand in
                # the same order in each, so waiters never wait for each other.
                for first_at, first in enumerate(live):
                    for second in live[first_at + 1 :]:
                        if (second, first) in rank:
                            fail(
                                f"{commit.id}: {first} and {second} in opposite orders at "
                                f"{label} and {rank[(second, first)]}"
                            )
                        rank[(first, second)] = label
        for ticket in tickets.values():
            if not alive(ticket["id"]):
                continue
            for label in ticket["gates"]:
                if ticket["id"] not in queued.get(label, ()):
                    fail(f"{commit.id}: ticket {ticket['id']} not linked from {label}")
        result.holders[str(commit.id)] = held
        if keep_queues:
            result.queues[str(commit.id)] = queued
    return result
