"""What must hold after the run, checked from git and the live directories.

Each check returns a :class:`Check`: its name, whether it passed, and the
first problems found (bounded, so a broken run still prints a readable
report).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pygit2
import requests

from bench.soak.cluster import HOSTILE_BRANCHES, Cluster
from bench.soak.faults import KINDS, Fault, LockSampler
from bench.soak.hostile import DEPLOY_MARKERS, NO_TRACE
from bench.soak.load import Op
from gitstate.base.times import parse_iso
from gitstate.deploys.audit import DeployReplay, unfinished
from gitstate.deploys.queue import record_path
from gitstate.engine.storage import Storage
from gitstate.store.codec import decode
from tests.support.gate_replay import GateReplay, labels

#: Longest a ref lock file may stay.
LOCK_LIMIT = 10.0
#: Slack around a kill within which an in-flight request may fail.
KILL_SLACK = 0.5
_MAX_PROBLEMS = 20


@dataclasses.dataclass
class Check:
    """The outcome of one check."""

    name: str
    problems: list[str] = dataclasses.field(default_factory=list)
    detail: str = ""
    total_problems: int = 0

    @property
    def passed(self) -> bool:
        """Whether nothing was wrong."""
        return self.total_problems == 0

    def fail(self, problem: str) -> None:
        """Note a problem (only the first few are kept)."""
        self.total_problems += 1
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(problem)


def _blob_record(repo: pygit2.Repository, commit: str, path: str) -> Any:
    tree = repo[commit].peel(pygit2.Commit).tree
    try:
        entry = tree[path]
    except KeyError:
        return None
    return decode(repo[entry.id].data, path)


def _deploy_record(repo: pygit2.Repository, tip: pygit2.Oid, deploy_id: int) -> Any:
    return _blob_record(repo, str(tip), record_path(deploy_id))


def _ancestor(repo: pygit2.Repository, commit: str, ref: str) -> bool:
    try:
        tip = repo.references[ref].target
        oid = pygit2.Oid(hex=commit)
    except (KeyError, ValueError):
        return False
    return tip == oid or repo.descendant_of(tip, oid)


def acknowledged_writes(cluster: Cluster, ops: Iterable[Op], replayed: GateReplay) -> Check:
    """Every write the server acknowledged is in the state history (and storage)."""
    check = Check("every acknowledged write is in the history")
    state = pygit2.Repository(str(cluster.state_repo))
    storage = pygit2.Repository(str(cluster.storage_repo))
    tip = state.references["refs/heads/state"].target
    deploys: list[dict[str, Any]] = []
    for deploy_file in _all_deploys(state, tip):
        deploys.append(deploy_file)
    counted = 0
    for op in ops:
        ack = op.ack
        if not ack:
            continue
        counted += 1
        kind = ack["type"]
        commit = ack.get("commit")
        where = f"{op.kind} by client {op.client} at {op.start:.3f}"
        if kind in ("ticket", "release", "gate") and commit not in replayed.holders:
            check.fail(f"{where}: ETag {commit} is not a commit of the state branch")
            continue
        if kind == "ticket":
            for label in labels(ack["gates"]):
                queue = replayed.queues[commit].get(label, ())
                if ack["status"] == "ok" and replayed.holders[commit].get(label) != ack["ticket"]:
                    check.fail(f"{where}: ticket {ack['ticket']} ok but not holding {label}")
                if ack["ticket"] not in queue:
                    check.fail(f"{where}: ticket {ack['ticket']} not queued at {label}")
        elif kind == "release":
            for label, queue in replayed.queues[commit].items():
                if ack["ticket"] in queue:
                    check.fail(f"{where}: released {ack['ticket']} still queued at {label}")
        elif kind == "gate":
            group, service, env = ack["label"].split("/")
            doc = _blob_record(state, commit, f"gates/{group}/{service}.yaml")
            got = (doc or {}).get("environments", {}).get(env, {})
            if (got.get("state"), got.get("message")) != (ack["state"], ack["message"]):
                check.fail(
                    f"{where}: {ack['label']} at {commit[:12]} is {got.get('state')!r} "
                    f"{got.get('message')!r}, not {ack['state']!r} {ack['message']!r}"
                )
        elif kind in ("deploy", "must-fail"):
            for entry in ack["entries"]:
                if "id" not in entry:
                    continue  # refused in the answer itself (no permission)
                record = _deploy_record(state, tip, int(entry["id"]))
                if record is None:
                    check.fail(f"{where}: deploy #{entry['id']} is not in the state branch")
                    continue
                if kind == "must-fail" and record.get("status") != "failed":
                    check.fail(f"{where}: hostile deploy #{entry['id']} is {record.get('status')}")
                file_sync = entry.get("file-sync") or {}
                if entry.get("status") == "complete":
                    env = record["environment"]
                    if not _ancestor(
                        storage, file_sync["environment-commit"], f"refs/environments/{env}"
                    ):
                        check.fail(f"{where}: #{entry['id']} environment-commit not in storage")
                    if not _ancestor(storage, file_sync["code-commit"], "refs/heads/code"):
                        check.fail(f"{where}: #{entry['id']} code-commit not in storage")
        elif kind == "webhook":
            env = ack["environment"]
            if not any(
                record["environment"] == env
                and _epoch(record["queued_at"]) <= op.end + 1
                and (
                    record.get("finished_at") is None
                    or _epoch(record["finished_at"]) >= op.start - 1
                )
                for record in deploys
            ):
                check.fail(f"{where}: no deploy of {env} was queued for the webhook")
    check.detail = f"{counted} acknowledged writes checked against {replayed.commits} commits"
    return check


def _epoch(stamp: str) -> float:
    return parse_iso(stamp).timestamp()


def _all_deploys(repo: pygit2.Repository, tip: pygit2.Oid) -> list[dict[str, Any]]:
    tree = repo[tip].peel(pygit2.Commit).tree
    if "deploys" not in tree:
        return []
    out = []
    for bucket in repo[tree["deploys"].id]:
        # Numbered buckets hold the records; queued/, running/, failed/ index them.
        if bucket.type_str != "tree" or not bucket.name.isdigit():
            continue
        for entry in repo[bucket.id]:
            out.append(decode(repo[entry.id].data, entry.name))
    return out


def gates_replay(replayed: GateReplay) -> Check:
    """No commit shows two live holders of one gate (and the other invariants)."""
    check = Check("no commit shows two live holders of one gate")
    for violation in replayed.violations:
        check.fail(violation)
    check.detail = f"{replayed.commits} commits replayed"
    return check


def deploys_replay(replayed: DeployReplay) -> Check:
    """Each deploy started once per attempt and finished once; one per environment at a time."""
    check = Check("each deploy started once per attempt, finished once, one per environment")
    for violation in replayed.violations:
        check.fail(violation)
    for deploy_id in unfinished(replayed):
        check.fail(f"deploy #{deploy_id} never finished ({replayed.final[deploy_id]})")
    attempts = sum(replayed.starts.values())
    check.detail = (
        f"{replayed.deploys} deploys, {attempts} starts, {sum(replayed.finishes.values())} "
        f"finishes in {replayed.commits} commits"
    )
    return check


def locks(sampler: LockSampler) -> Check:
    """No ref lock stayed longer than :data:`LOCK_LIMIT`."""
    check = Check(f"no ref lock stuck more than {LOCK_LIMIT:g}s")
    for path, longest in sampler.longest.items():
        if longest > LOCK_LIMIT:
            check.fail(f"{path} stayed {longest:.1f}s")
    check.detail = f"{sampler.samples} samples; longest " + ", ".join(
        f"{Path(path).parent.parent.parent.name}: {longest:.2f}s"
        for path, longest in sampler.longest.items()
    )
    return check


def _live_files(root: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for directory, dirnames, filenames in os.walk(root):
        links = [d for d in dirnames if os.path.islink(os.path.join(directory, d))]
        for name in filenames + links:
            full = os.path.join(directory, name)
            rel = os.path.relpath(full, root)
            if os.path.islink(full):
                out[rel] = b"-> " + os.readlink(full).encode()
            else:
                with open(full, "rb") as stream:
                    out[rel] = stream.read()
    return out


def _env_trees(storage: pygit2.Repository, env: str) -> set[str]:
    try:
        tip = storage.references[f"refs/environments/{env}"].target
    except KeyError:
        return set()
    return {str(commit.tree_id) for commit in storage.walk(tip)}


def live_dirs(cluster: Cluster) -> Check:
    """Every live environment is a complete version of a deployed environment-commit."""
    check = Check("every live environment is a complete deployed version")
    storage = Storage(cluster.storage_repo)
    repo = pygit2.Repository(str(cluster.storage_repo))
    seen = 0
    for name, live in cluster.live.items():
        environments = live / "environments"
        for env in sorted(os.listdir(environments)) if environments.is_dir() else []:
            path = environments / env
            if not path.is_symlink():
                check.fail(f"{name}: {env} is not a symlink to a version")
                continue
            real = os.path.realpath(path)
            tree = os.path.basename(real)
            if Path(real).parent != (live / ".versions" / env).resolve():
                check.fail(f"{name}: {env} points outside its versions: {real}")
                continue
            if tree not in _env_trees(repo, env):
                check.fail(f"{name}: {env} is tree {tree}, never deployed as {env}")
                continue
            if _live_files(real) != storage.files(tree):
                check.fail(f"{name}: {env} differs from its tree {tree[:12]}")
            seen += 1
    check.detail = f"{seen} live environments compared file by file"
    return check


def _client_state(cluster: Cluster, storage: Storage, code: str, name: str) -> str | None:
    """Return what keeps client ``name`` from having ``code``, or None."""
    try:
        checkin = json.loads((cluster.datadir / "clients" / f"{name}.json").read_text())
    except (OSError, ValueError) as ex:
        return f"no check-in ({ex})"
    if checkin.get("code_commit") != code:
        return f"checked in {str(checkin.get('code_commit'))[:12]}, latest is {code[:12]}"
    live = cluster.live[name] / "environments"
    published = storage.published(code)
    on_disk = sorted(os.listdir(live)) if live.is_dir() else []
    if on_disk != sorted(published):
        return f"live environments {on_disk} != published {sorted(published)}"
    for env, item in published.items():
        if os.path.basename(os.path.realpath(live / env)) != item.tree:
            return f"{env} is not at tree {item.tree[:12]}"
    return None


def convergence(cluster: Cluster, timeout: float) -> Check:
    """Every client reaches the latest code-commit within ``timeout`` after the load."""
    check = Check("every client converged to the latest code-commit")
    storage = Storage(cluster.storage_repo)
    started = time.monotonic()
    pending: dict[str, str | None] = {}
    while True:
        code = storage.code_commit()
        assert code is not None
        pending = {name: _client_state(cluster, storage, code, name) for name in cluster.live}
        if not any(pending.values()) or time.monotonic() - started > timeout:
            break
        time.sleep(0.5)
    for name, problem in pending.items():
        if problem:
            check.fail(f"{name}: {problem} after {timeout:g}s")
    check.detail = f"converged in {time.monotonic() - started:.1f}s to {code[:12]}"
    return check


def drain(cluster: Cluster, timeout: float) -> Check:
    """The deploy queue empties once the load stops."""
    check = Check("the deploy queue drained")
    started = time.monotonic()
    left: list[Any] = []
    while time.monotonic() - started < timeout:
        try:
            assert cluster.tokens is not None
            status = requests.get(
                f"{cluster.base}/code-manager/v1/deploys/status",
                headers={"X-Authentication": cluster.tokens.viewer},
                timeout=30,
            )
            sections = status.json()["deploys-status"]
            left = sections["new"] + sections["queued"] + sections["deploying"]
        except (requests.RequestException, ValueError, KeyError) as ex:
            left = [repr(ex)]
        if not left:
            break
        time.sleep(0.5)
    for entry in left:
        check.fail(f"still active after {timeout:g}s: {entry}")
    check.detail = f"drained in {time.monotonic() - started:.1f}s"
    return check


def server_errors(ops: Iterable[Op], gunicorn_kills: list[float]) -> Check:
    """No 5xx or lost answer except for requests in flight when a worker was killed."""
    check = Check("no 5xx or lost answer but during a killed worker's requests")
    excused = 0
    for op in ops:
        if op.kind == "harness-error":
            check.fail(f"harness error in client {op.client}: {op.error}")
            continue
        lost = op.status is None or op.status >= 500
        if op.kind == "push" and op.error and "deploy not queued" in op.error:
            lost = True
        if not lost:
            unexpected = op.error is None and op.status is not None and op.status >= 400
            if unexpected and not op.kind.startswith("hostile:"):
                check.fail(f"{op.kind} by client {op.client}: unexpected {op.status}")
            continue
        if any(op.start <= kill + KILL_SLACK and op.end >= kill for kill in gunicorn_kills):
            excused += 1
            continue
        check.fail(
            f"{op.kind} by client {op.client} at {op.start:.3f} ({op.latency:.2f}s): "
            f"{op.status or op.error}"
        )
    check.detail = f"{excused} failures excused: in flight during a gunicorn worker kill"
    return check


def hostile_inputs(ops: list[Op], probe_names: list[str]) -> Check:
    """Every hostile input got the answer it should have."""
    check = Check("every hostile input was refused")
    ran: dict[str, int] = {}
    for op in ops:
        if not op.kind.startswith("hostile:"):
            continue
        name = op.kind.split(":", 1)[1]
        ran[name] = ran.get(name, 0) + 1
        if op.error and op.status is not None:
            check.fail(f"{name}: {op.error}")
    for name in probe_names:
        if name not in ran:
            check.fail(f"{name}: never ran")
    check.detail = f"{sum(ran.values())} hostile requests of {len(ran)} kinds"
    return check


def traces(cluster: Cluster) -> Check:
    """Hostile inputs left nothing behind: not in git, not on disk, nothing published."""
    check = Check("hostile inputs left no trace")
    state = pygit2.Repository(str(cluster.state_repo))
    tip = state.references["refs/heads/state"].target
    marker = NO_TRACE.encode()
    clean_trees: set[pygit2.Oid] = set()
    clean_blobs: set[pygit2.Oid] = set()

    def dirty(tree_id: pygit2.Oid, where: str) -> str | None:
        if tree_id in clean_trees:
            return None
        for entry in state[tree_id]:
            if NO_TRACE in entry.name:
                return where + entry.name
            if entry.type_str == "tree":
                found = dirty(entry.id, where + entry.name + "/")
                if found:
                    return found
            elif entry.id not in clean_blobs:
                if marker in state[entry.id].data:
                    return where + entry.name
                clean_blobs.add(entry.id)
        clean_trees.add(tree_id)
        return None

    for commit in state.walk(tip):
        if NO_TRACE in commit.message:
            check.fail(f"state commit {commit.id} mentions {NO_TRACE}: {commit.message[:100]}")
        found = dirty(commit.tree_id, "")
        if found:
            check.fail(f"state commit {commit.id} has {found} mentioning {NO_TRACE}")
            break
    storage = pygit2.Repository(str(cluster.storage_repo))
    for ref in storage.references:
        if any(word in ref for word in (NO_TRACE, *DEPLOY_MARKERS, *HOSTILE_BRANCHES)):
            check.fail(f"storage has {ref}")
    words = (NO_TRACE, *DEPLOY_MARKERS, "outside")
    for directory, dirnames, filenames in os.walk(cluster.root):
        for name in dirnames + filenames:
            named = any(word in name for word in words) or name in HOSTILE_BRANCHES
            if named and "fixture" not in directory and "hostile-work" not in directory:
                check.fail(f"on disk: {os.path.join(directory, name)}")
    if cluster.ext_marker.exists():
        check.fail(f"the ext:: URL ran a command: {cluster.ext_marker} exists")
    clients = sorted(os.listdir(cluster.datadir / "clients"))
    if clients != sorted(f"{name}.json" for name in cluster.live):
        check.fail(f"check-in files: {clients}")
    return check


def faults(injected: list[Fault]) -> Check:
    """Every kind of fault was injected and every killed process was replaced."""
    check = Check("every fault injected and recovered from")
    for kind in KINDS:
        if not any(fault.kind == kind and fault.recovered_after is not None for fault in injected):
            check.fail(f"no {kind} fault injected and recovered")
    for fault in injected:
        if fault.recovered_after is None and (fault.pid or "still there" in fault.detail):
            check.fail(f"{fault.kind} at {fault.at:.3f}: {fault.detail}")
    check.detail = f"{len(injected)} faults"
    return check
