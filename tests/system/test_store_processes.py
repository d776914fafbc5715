"""The store under many processes and under SIGKILL: nothing lost, nothing stuck."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pygit2

from gitstate.store.branch import Identity, Store
from tests.support.helpers import git

COUNTER = "counters/shared.yaml"


def increment(draft):
    record = draft.get(COUNTER) or {"schema_version": 1, "value": 0}
    record["value"] += 1
    draft.put(COUNTER, record)
    return record["value"]


def _writer(path: str, count: int, name: str) -> None:
    store = Store(path, create=False, deadline=60)
    for n in range(count):
        store.transact(
            increment,
            subject=f"{name} increments the counter ({n})",
            operation="counter.increment",
            identity=Identity(name),
        )


def _first_parent_chain(repo: pygit2.Repository, tip: pygit2.Oid) -> list[pygit2.Commit]:
    chain = []
    commit = repo[tip]
    while True:
        chain.append(commit)
        if not commit.parents:
            return chain
        assert len(commit.parents) == 1, "state history must be linear"
        commit = commit.parents[0]


def test_eight_processes_two_hundred_increments_each(state_path: Path) -> None:
    Store(state_path)  # create the repository once, before the writers start
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_writer, args=(str(state_path), 200, f"writer{n}")) for n in range(8)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(300)
        assert proc.exitcode == 0
    store = Store(state_path, create=False)
    assert store.get(COUNTER)["value"] == 1600
    repo = pygit2.Repository(str(state_path))
    chain = _first_parent_chain(repo, repo.references["refs/heads/state"].target)
    assert len(chain) == 1600
    # git itself agrees: 1600 commits, none of them a merge.
    assert git("rev-list", "--count", "state", cwd=state_path).strip() == "1600"
    assert git("rev-list", "--count", "--merges", "state", cwd=state_path).strip() == "0"
    # Each writer's 200 commits are all there.
    actors = [c.author.name for c in chain]
    assert sorted(set(actors)) == [f"writer{n}" for n in range(8)]
    assert all(actors.count(f"writer{n}") == 200 for n in range(8))


# Self-contained (no test module, no pytest to import), so that under load
# the writer is committing well before it is killed.
_LOOPING_WRITER = """
from gitstate.store.branch import Store, Identity
def increment(draft):
    record = draft.get({counter!r}) or {{"schema_version": 1, "value": 0}}
    record["value"] += 1
    draft.put({counter!r}, record)
    return record["value"]
store = Store({path!r}, create=False, deadline=60, stale_lock_after=1)
while True:
    store.transact(
        increment,
        subject="looper increments",
        operation="counter.increment",
        identity=Identity("looper"),
    )
"""


def test_writers_killed_at_random_leave_a_valid_branch(state_path: Path) -> None:
    Store(state_path)
    script = _LOOPING_WRITER.format(counter=COUNTER, path=str(state_path))
    rng = random.Random(20261123)
    watcher = Store(state_path, create=False)
    for _round in range(12):
        before = watcher.head()
        proc = subprocess.Popen([sys.executable, "-c", script])
        # Killed at a random moment once it has committed at least once, however
        # slowly it started on a loaded machine.
        while watcher.head() == before:
            assert proc.poll() is None, "looping writer died on its own"
            time.sleep(0.01)
        time.sleep(rng.random() * 0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # A writer killed anywhere, even between taking the ref lock and renaming
    # it, must leave a branch the next writer can advance.
    store = Store(state_path, create=False, deadline=30, stale_lock_after=1)
    value = store.transact(
        increment, subject="survivor increments", operation="counter.increment"
    ).value
    repo = pygit2.Repository(str(state_path))
    chain = _first_parent_chain(repo, repo.references["refs/heads/state"].target)
    # Every commit on the branch is one increment: none lost, none doubled.
    assert value == len(chain)
    assert value > 12
    subprocess.run(
        ["git", "fsck", "--no-dangling", "--connectivity-only"], cwd=state_path, check=True
    )


_HOLDING_WRITER = """
import sys, time, pathlib
from gitstate.store.branch import Store
store = Store({path!r}, create=False)
def change(draft):
    draft.put("held.yaml", {{"schema_version": 1}})
    pathlib.Path({ready!r}).write_text("holding")
    time.sleep(3600)
store.transact(change, subject="never finishes", operation="x")
"""


def test_writer_killed_while_holding_host_lock_does_not_block_others(
    state_path: Path, tmp_path: Path
) -> None:
    store = Store(state_path, deadline=30)
    store.transact(increment, subject="first", operation="counter.increment")
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDING_WRITER.format(path=str(state_path), ready=str(ready))]
    )
    while not ready.exists():
        assert proc.poll() is None, "holding writer died early"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = store.transact(increment, subject="after the kill", operation="counter.increment")
    assert done.value == 2
    assert store.get("held.yaml") is None


def _rewind_checker(path: str, stop, alarms) -> None:
    store = Store(path, create=False)
    while not stop.is_set():
        if store.rewound() is not None:
            alarms.value += 1


def test_concurrent_writers_never_look_like_a_rewind(state_path: Path) -> None:
    """Writers in several processes advance the mark in turn; checkers outside the lock agree."""
    Store(state_path)
    ctx = multiprocessing.get_context("fork")
    stop, alarms = ctx.Event(), ctx.Value("i", 0)
    checkers = [
        ctx.Process(target=_rewind_checker, args=(str(state_path), stop, alarms)) for _ in range(2)
    ]
    writers = [
        ctx.Process(target=_writer, args=(str(state_path), 100, f"writer{n}")) for n in range(4)
    ]
    for proc in [*checkers, *writers]:
        proc.start()
    for proc in writers:
        proc.join(300)
        assert proc.exitcode == 0  # a BranchRewound would have failed it
    stop.set()
    for proc in checkers:
        proc.join(60)
    assert alarms.value == 0
    tip = git("rev-parse", "refs/heads/state", cwd=state_path).strip()
    assert (state_path / "gitstate-seen-tip").read_text().strip() == tip
