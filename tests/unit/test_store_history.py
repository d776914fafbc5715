"""A record's history comes from the index, and is the same as walking the branch.

The index (gitstate.store.history_index) is derived data kept beside the state
branch; these tests hold it to the branch whatever happened to it: commits
nobody indexed, a branch replaced from an older copy, a damaged file, a
repository that never had one, many processes writing at once.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pygit2
import pytest

from gitstate.gates.service import Gates
from gitstate.process.maintenance import MaintenanceSettings, maintain_all
from gitstate.store import history_index
from gitstate.store.branch import Change, Store
from tests.support.helpers import git


def _set(path: str, n: int):
    def change(draft):
        draft.put(path, {"schema_version": 1, "n": n})

    return change


def _walked(store: Store, path: str) -> list[Change]:
    """The history by walking every commit: what the index must agree with."""
    tip = pygit2.Oid(hex=store.head())
    return list(store._history_by_walk(tip, path))


def _fill(store: Store, count: int, paths: list[str]) -> None:
    for n in range(count):
        path = paths[n % len(paths)]
        if n % 7 == 6:
            store.transact(lambda d, p=path: d.delete(p), subject=f"drop {n}", operation="x")
        else:
            store.transact(_set(path, n), subject=f"step {n}", operation="x")


def test_history_is_every_change_newest_first(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.git")
    for n in range(6):
        store.transact(
            _set("a.yaml" if n % 2 == 0 else "b.yaml", n), subject=f"step {n}", operation="x"
        )
    store.transact(lambda d: d.delete("a.yaml"), subject="drop a", operation="x")
    history = store.history("a.yaml")
    assert [c.subject for c in history] == ["drop a", "step 4", "step 2", "step 0"]
    assert [c.record["n"] if c.record else None for c in history] == [None, 4, 2, 0]
    assert store.history("a.yaml", limit=2) == history[:2]
    assert history == _walked(store, "a.yaml")
    assert store.history("never.yaml") == []
    assert (tmp_path / "state.git" / history_index.FILENAME).exists()


def test_commits_nobody_indexed_are_found_by_the_reader(tmp_path: Path) -> None:
    writer = Store(tmp_path / "state.git")
    _fill(writer, 20, ["g/a.yaml", "g/b.yaml"])
    # A writer whose index update never happens (another process held the
    # index, or it died right after its commit).
    writer._index_after_commit = lambda commit: None  # type: ignore[method-assign]
    _fill(writer, 30, ["g/a.yaml", "g/c.yaml"])
    reader = Store(tmp_path / "state.git", create=False)
    for path in ("g/a.yaml", "g/b.yaml", "g/c.yaml"):
        assert reader.history(path) == _walked(reader, path)
    assert len(reader.history("g/c.yaml")) == 15


def test_a_replaced_branch_is_indexed_again(tmp_path: Path) -> None:
    repo = tmp_path / "state.git"
    store = Store(repo)
    _fill(store, 10, ["a.yaml", "b.yaml"])
    old = store.head()
    _fill(store, 10, ["a.yaml"])
    assert len(store.history("a.yaml")) == 15
    # The branch goes back to an older copy (restored from a backup) and
    # moves on from there: the index must not keep the lost commits.
    git("--git-dir", str(repo), "update-ref", store.ref, old)
    store = Store(repo, create=False)
    store.accept_tip()  # writes on a branch that moved back need an operator's word
    store.transact(_set("b.yaml", 99), subject="after restore", operation="x")
    history = store.history("a.yaml")
    assert history == _walked(store, "a.yaml")
    assert len(history) == 5
    assert store.history("b.yaml")[0].subject == "after restore"


def test_a_damaged_index_is_rebuilt(tmp_path: Path) -> None:
    repo = tmp_path / "state.git"
    store = Store(repo)
    _fill(store, 12, ["a.yaml", "b.yaml"])
    store.close()
    (repo / history_index.FILENAME).write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{repo / history_index.FILENAME}{suffix}").unlink(missing_ok=True)
    store = Store(repo, create=False)
    assert store.history("a.yaml") == _walked(store, "a.yaml")
    assert len(store.history("a.yaml")) == 6


def test_an_unusable_index_falls_back_to_the_walk(tmp_path: Path) -> None:
    repo = tmp_path / "state.git"
    store = Store(repo)
    _fill(store, 8, ["a.yaml"])
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{repo / history_index.FILENAME}{suffix}").unlink(missing_ok=True)
    (repo / history_index.FILENAME).mkdir()  # cannot be opened as a database
    store = Store(repo, create=False)
    assert [c.subject for c in store.history("a.yaml")] == [
        "step 7",
        "drop 6",
        "step 5",
        "step 4",
        "step 3",
        "step 2",
        "step 1",
        "step 0",
    ]


def test_maintenance_builds_the_index_of_a_repository_without_one(tmp_path: Path) -> None:
    datadir = tmp_path / "data"
    store = Store(datadir / "state.git")
    _fill(store, 25, ["a.yaml", "b.yaml", "c.yaml"])
    store.close()
    index = datadir / "state.git" / history_index.FILENAME
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    maintain_all(datadir, MaintenanceSettings())
    assert index.exists()
    probe = history_index.HistoryIndex(datadir / "state.git", store.ref)
    assert probe.catch_up(pygit2.Oid(hex=Store(datadir / "state.git").head())) == 25


def _writer(repo: str, name: str, count: int) -> None:
    store = Store(repo, create=False)
    for n in range(count):
        store.transact(_set(f"w/{name}.yaml", n), subject=f"{name} {n}", operation="x")


def test_many_processes_writing_leave_a_complete_history(tmp_path: Path) -> None:
    repo = tmp_path / "state.git"
    Store(repo).transact(_set("w/seed.yaml", 0), subject="seed", operation="x")
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_writer, args=(str(repo), f"p{i}", 40)) for i in range(4)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(120)
        assert process.exitcode == 0
    store = Store(repo, create=False)
    for i in range(4):
        history = store.history(f"w/p{i}.yaml")
        assert [c.record["n"] for c in history] == list(range(39, -1, -1))
        assert history == _walked(store, f"w/p{i}.yaml")


def test_gate_history_pages_match_the_whole_history(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.git")
    gates = Gates(store)
    gates.create("g", "svc", ["live", "test"], actor="t")

    def gate(env: str, n: int) -> None:
        state = "closed" if n % 2 else "open"
        gates.set_environment(
            "g", "svc", env, {"state": state, "message": f"{env[0]}{n}"}, actor="t"
        )

    for n in range(12):
        # Changes to the other environment share the service's record.
        gate("test", n)
        if n % 3 == 0:
            gate("live", n)
    whole = gates.history("g", "svc", "live").body["history"]
    assert [e["message"] for e in whole][:4] == ["l9", "l6", "l3", "l0"]
    for limit in (1, 2, 3, len(whole), len(whole) + 5):
        assert gates.history("g", "svc", "live", limit=limit).body["history"] == whole[:limit]


def test_writers_keep_the_index_current(tmp_path: Path) -> None:
    """Writers keep the index near the tip, so a reader has little to catch up."""
    repo = tmp_path / "state.git"
    store = Store(repo)
    _fill(store, 2 * history_index.INDEX_EVERY, ["a.yaml"])
    probe = history_index.HistoryIndex(repo, store.ref)
    db = probe._connect(0.0)
    (head,) = db.execute("SELECT oid FROM head").fetchone()
    assert pygit2.Oid(raw=bytes(head)) == pygit2.Oid(hex=store.head())


@pytest.mark.parametrize(
    "count", [history_index.PAGE - 1, history_index.PAGE, 2 * history_index.PAGE + 3]
)
def test_history_across_page_boundaries(tmp_path: Path, count: int) -> None:
    store = Store(tmp_path / "state.git")
    for n in range(count):
        store.transact(_set("p.yaml", n), subject=f"step {n}", operation="x")
    assert [c.record["n"] for c in store.history("p.yaml")] == list(range(count - 1, -1, -1))
