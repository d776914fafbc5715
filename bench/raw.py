"""The peer for every state-branch benchmark: a raw pygit2 CAS loop.

No gitstate code: each round resolves the ref, reads the counter record's
blob, writes the new blob, rewrites the three trees above it, makes a commit
whose parent is the tip and moves the ref with ``Reference.set_target`` (a
compare-and-swap). It works on the same tree as the gitstate loop (see
:func:`seed_records`), so the ratio between the two is gitstate's own cost.
"""

from __future__ import annotations

import time
from pathlib import Path

import pygit2
from pygit2.enums import FileMode

REF = "refs/heads/state"
#: The record both loops increment; it sits among 999 others (10 x 100).
COUNTER = "records/d00/r000.yaml"
DIRS = 10
PER_DIR = 100


def record_bytes(value: int) -> bytes:
    """Return the canonical YAML of a counter record (what gitstate writes)."""
    return b"schema_version: 1\nvalue: %d\n" % value


def seed_records(path: Path) -> pygit2.Repository:
    """Create a bare repo whose ``state`` branch holds 1,000 records."""
    repo = pygit2.init_repository(str(path), bare=True, initial_head="state")
    records = repo.TreeBuilder()
    blob = repo.create_blob(record_bytes(0))
    for d in range(DIRS):
        sub = repo.TreeBuilder()
        for r in range(PER_DIR):
            sub.insert(f"r{r:03d}.yaml", blob, FileMode.BLOB)
        records.insert(f"d{d:02d}", sub.write(), FileMode.TREE)
    root = repo.TreeBuilder()
    root.insert("records", records.write(), FileMode.TREE)
    sig = pygit2.Signature("seed", "seed@bench", 0, 0)
    commit = repo.create_commit(None, sig, sig, "seed", root.write(), [])
    repo.create_reference_direct(REF, commit, False)
    return repo


def raw_increment(repo: pygit2.Repository, sig: pygit2.Signature) -> int:
    """Increment the counter once with plain pygit2; return the new value."""
    ref = repo.lookup_reference(REF)
    tip = repo[ref.target]
    root = tip.tree
    records = root["records"]
    d00 = repo[records.id]["d00"]
    old = repo[repo[d00.id]["r000.yaml"].id].data
    value = int(old.rsplit(b":", 1)[1]) + 1
    blob = repo.create_blob(record_bytes(value))
    sub = repo.TreeBuilder(repo[d00.id])
    sub.insert("r000.yaml", blob, FileMode.BLOB)
    mid = repo.TreeBuilder(repo[records.id])
    mid.insert("d00", sub.write(), FileMode.TREE)
    top = repo.TreeBuilder(root)
    top.insert("records", mid.write(), FileMode.TREE)
    commit = repo.create_commit(None, sig, sig, f"raw {value}", top.write(), [tip.id])
    ref.set_target(commit, "raw")
    return value


def raw_commits_per_second(path: Path, seconds: float = 3.0, fsync: bool = False) -> float:
    """Run the raw loop on a fresh repository at ``path`` for ``seconds``."""
    return raw_rates(path, seconds, fsync)[0]


def raw_rates(path: Path, seconds: float = 3.0, fsync: bool = False) -> tuple[float, float]:
    """Return (commits per wall-clock second, commits per CPU second) of the raw loop.

    The CPU-time rate hardly moves when other processes share the cores,
    so on a busy machine it is the fairer basis for a ratio.
    """
    pygit2.settings.enable_fsync_gitdir(fsync)
    # The peer is plain pygit2: libgit2's default checks on, whatever else
    # ran in this process before.
    pygit2.settings.enable_strict_object_creation(True)
    repo = seed_records(path)
    sig = pygit2.Signature("raw", "raw@bench", 0, 0)
    count = 0
    started, cpu = time.perf_counter(), time.process_time()
    until = started + seconds
    try:
        while time.perf_counter() < until:
            raw_increment(repo, sig)
            count += 1
        return (
            count / (time.perf_counter() - started),
            count / max(time.process_time() - cpu, 1e-9),
        )
    finally:
        pygit2.settings.enable_fsync_gitdir(False)
        repo.free()
