"""Check the deploy queue's invariants by replaying the state branch's history.

The state branch is the audit trail: every move of a deploy (queued,
deploying, complete, failed, queued again after its worker died) is a commit
that rewrites the deploy's record ``deploys/<bucket>/<id>.yaml``. Replaying
the first-parent history from the root and following each record's status
tells whether the queue kept its promises, whatever the code that wrote it
believed:

* each deploy is *started* (``queued`` → ``deploying``) once per attempt,
  and every start raises its ``attempts`` by one;
* each deploy is *finished* (``deploying`` → ``complete`` | ``failed``, or
  ``queued`` → ``failed`` when it never ran) once, and never moves again;
* no two deploys of one environment are ``deploying`` in the same commit.

Violations are collected, not raised, so one replay of a long soak reports
every one of them. Only the ``deploys/`` subtree is diffed, and a commit
that does not touch it costs one tree-id comparison.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pygit2

from gitstate.store.codec import decode

STATE_REF = "refs/heads/state"
_RECORD = re.compile(r"^deploys/\d+/(\d+)\.yaml$")
_FINAL = ("complete", "failed")


@dataclasses.dataclass
class DeployReplay:
    """What a replay of the deploy records found.

    Attributes:
        commits: commits replayed.
        deploys: deploy ids seen.
        starts: ``(deploy id, attempt)`` → how many commits started it.
        finishes: deploy id → how many commits finished it.
        final: deploy id → its status at the tip.
        violations: one line per broken invariant, naming the commit.
    """

    commits: int = 0
    deploys: int = 0
    starts: Counter[tuple[int, int]] = dataclasses.field(default_factory=Counter)
    finishes: Counter[int] = dataclasses.field(default_factory=Counter)
    final: dict[int, str] = dataclasses.field(default_factory=dict)
    violations: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no invariant was broken."""
        return not self.violations


def _first_parent_chain(repo: pygit2.Repository, tip: pygit2.Oid) -> list[pygit2.Commit]:
    walker = repo.walk(tip, pygit2.enums.SortMode.NONE)
    walker.simplify_first_parent()
    chain = list(walker)
    chain.reverse()
    return chain


def _subtree(repo: pygit2.Repository, commit: pygit2.Commit, name: str) -> pygit2.Tree | None:
    tree = commit.tree
    if name not in tree:
        return None
    entry = tree[name]
    return repo[entry.id] if entry.type_str == "tree" else None


def replay_deploys(repo_path: str | Path, ref: str = STATE_REF) -> DeployReplay:
    """Replay the deploy records of the state branch at ``repo_path``."""
    repo = pygit2.Repository(str(repo_path))
    result = DeployReplay()
    try:
        tip = repo.lookup_reference(ref).target
    except KeyError:
        return result
    status: dict[int, dict[str, Any]] = {}
    deploying: dict[int, str] = {}  # deploy id → environment, for those deploying now
    previous: pygit2.Tree | None = None
    empty = repo[repo.TreeBuilder().write()]
    for commit in _first_parent_chain(repo, tip):
        result.commits += 1
        current = _subtree(repo, commit, "deploys")
        if (current.id if current else None) == (previous.id if previous else None):
            continue
        diff = repo.diff(previous or empty, current or empty)
        where = f"{str(commit.id)[:12]} ({commit.message.splitlines()[0][:80]})"
        for delta in diff.deltas:
            match = _RECORD.match("deploys/" + delta.new_file.path)
            if match is None:
                continue
            deploy_id = int(match.group(1))
            if delta.new_file.id == pygit2.Oid(hex="0" * 40) or delta.status_char() == "D":
                result.violations.append(f"{where}: deploy #{deploy_id}'s record was deleted")
                continue
            record = decode(repo[delta.new_file.id].data, delta.new_file.path, str(commit.id))
            _step(result, status, deploying, deploy_id, record, where)
        previous = current
        envs = Counter(deploying.values())
        for env, count in envs.items():
            if count > 1:
                ids = sorted(i for i, e in deploying.items() if e == env)
                result.violations.append(
                    f"{where}: {count} deploys of {env} deploying at once ({ids})"
                )
    result.deploys = len(status)
    result.final = {deploy_id: item["status"] for deploy_id, item in status.items()}
    return result


def _step(
    result: DeployReplay,
    status: dict[int, dict[str, Any]],
    deploying: dict[int, str],
    deploy_id: int,
    record: dict[str, Any],
    where: str,
) -> None:
    """Follow one deploy record from its previous version to ``record``."""
    before = status.get(deploy_id)
    old = before["status"] if before else None
    new = record.get("status")
    attempts = int(record.get("attempts", 0) or 0)
    env = str(record.get("environment"))
    if old in _FINAL and (new != old or record != before):
        result.violations.append(f"{where}: deploy #{deploy_id} moved after it was {old}: {new}")
    if new == "deploying":
        if old == "deploying":
            if attempts != before.get("attempts"):  # type: ignore[union-attr]
                result.violations.append(
                    f"{where}: deploy #{deploy_id} started again while deploying "
                    f"(attempt {attempts})"
                )
        else:
            previous_attempts = int((before or {}).get("attempts", 0) or 0)
            if attempts != previous_attempts + 1:
                result.violations.append(
                    f"{where}: deploy #{deploy_id} started with attempts {attempts} "
                    f"after {previous_attempts}"
                )
            result.starts[(deploy_id, attempts)] += 1
            if result.starts[(deploy_id, attempts)] > 1:
                result.violations.append(
                    f"{where}: deploy #{deploy_id} attempt {attempts} started twice"
                )
        deploying[deploy_id] = env
    else:
        deploying.pop(deploy_id, None)
    if new in _FINAL and old not in _FINAL:
        result.finishes[deploy_id] += 1
        if old == "queued" and attempts > 0 and new == "complete":
            result.violations.append(f"{where}: deploy #{deploy_id} completed without running")
    if new not in ("queued", "deploying", *_FINAL):
        result.violations.append(f"{where}: deploy #{deploy_id} has status {new!r}")
    status[deploy_id] = record


def unfinished(replay: DeployReplay) -> list[int]:
    """Return the deploys not finished at the tip (queued or deploying)."""
    return sorted(i for i, state in replay.final.items() if state not in _FINAL)
