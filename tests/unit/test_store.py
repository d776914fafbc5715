"""The state branch store on real repositories: reads, writes, the past."""

from __future__ import annotations

import fcntl
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pygit2
import pytest

from gitstate.base import metrics
from gitstate.store import codec
from gitstate.store.branch import (
    Identity,
    PathError,
    RevisionNotFound,
    Store,
    StoreBusy,
)
from gitstate.store.codec import RecordError
from tests.support.helpers import git, slow_transaction


def _set(path: str, **fields: object):
    def change(draft):
        record = draft.get(path) or {"schema_version": 1}
        record.update(fields)
        draft.put(path, record)
        return record

    return change


def _commit_by_hand(repo_path: Path, files: dict[str, bytes], message: str = "hand edit") -> str:
    """Commit ``files`` on top of the state branch with the git CLI, as an operator would."""
    work = repo_path.parent / "hand-work"
    if not work.exists():
        git("clone", "-q", "--branch", "state", str(repo_path), str(work))
    else:
        git("pull", "-q", "--ff-only", cwd=work)
    for name, data in files.items():
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    git("push", "-q", "origin", "state", cwd=work)
    return git("rev-parse", "HEAD", cwd=work).strip()


def test_new_store_is_empty_bare_repo_on_state_branch(state_path: Path) -> None:
    store = Store(state_path)
    assert store.head() is None
    assert store.get("gates/a/b.yaml") is None
    repo = pygit2.Repository(str(state_path))
    assert repo.is_bare
    assert repo.config["core.logAllRefUpdates"] == "always"
    assert git("symbolic-ref", "HEAD", cwd=state_path).strip() == "refs/heads/state"


def test_write_then_read_back(state_path: Path) -> None:
    store = Store(state_path)
    done = store.transact(
        _set("gates/shop/cart.yaml", state="open", message="all fine"),
        subject="alice opened gate shop/cart",
        operation="gate.update",
        identity=Identity("alice", "req-42"),
    )
    assert done.commit == store.head()
    assert done.attempts == 1
    assert store.get("gates/shop/cart.yaml") == {
        "schema_version": 1,
        "state": "open",
        "message": "all fine",
    }
    # A second process (another Store on the same path) sees the same state.
    other = Store(state_path, create=False)
    assert other.get("gates/shop/cart.yaml")["message"] == "all fine"


def test_commit_message_names_actor_with_trailers_and_reflog(state_path: Path) -> None:
    store = Store(state_path)
    store.transact(
        _set("gates/shop/cart.yaml", state="closed"),
        subject="alice closed gate shop/cart: release freeze",
        operation="gate.close",
        identity=Identity("alice", "req-7"),
    )
    log = git("log", "-1", "--format=%an%n%s%n%(trailers:only,unfold)", "state", cwd=state_path)
    lines = log.strip().splitlines()
    assert lines[0] == "alice"
    assert lines[1] == "alice closed gate shop/cart: release freeze"
    assert "Actor: alice" in lines
    assert "Request-Id: req-7" in lines
    assert "Operation: gate.close" in lines
    reflog = git("reflog", "show", "state", cwd=state_path)
    assert "alice closed gate shop/cart" in reflog


def test_reflog_entries_are_signed_by_the_configured_service(state_path: Path) -> None:
    store = Store(state_path)
    for n in range(2):
        store.transact(_set("a.yaml", n=n), subject=f"set {n}", operation="x")
    config = pygit2.Repository(str(state_path)).config
    expected = f"{config['user.name']} <{config['user.email']}>"
    signers = git("reflog", "show", "--format=%gn <%ge>", "state", cwd=state_path)
    assert signers.splitlines() == [expected, expected]


def test_the_store_commits_what_libgit2_would(state_path: Path) -> None:
    store = Store(state_path)
    store.transact(_set("a.yaml", n=1), subject="first", operation="x")
    store.transact(
        _set("b/c.yaml", n=2), subject="second", operation="x", identity=Identity("zoë", "r-1")
    )
    repo = pygit2.Repository(str(state_path))
    tip = repo[repo.lookup_reference("refs/heads/state").target]
    rebuilt = repo.create_commit_string(
        tip.author, tip.committer, tip.message, tip.tree_id, tip.parent_ids
    )
    assert repo.odb.read(tip.id)[1] == rebuilt.encode()
    git("--git-dir", str(state_path), "fsck", "--strict", "--no-dangling")


def test_the_snapshot_a_write_returns_knows_its_commit(state_path: Path) -> None:
    # The store does not read its new commit back; the snapshot it returns
    # must still tell the commit's id, tree and time, and read its records.
    store = Store(state_path)
    store.transact(_set("a/b.yaml", n=1), subject="one", operation="x")
    started = int(time.time())
    done = store.transact(_set("a/c.yaml", n=2), subject="two", operation="x")
    snap = done.snapshot
    tip = pygit2.Repository(str(state_path))[done.commit]
    assert snap.commit == done.commit == store.head()
    assert snap.tree_id == tip.tree_id
    assert snap.time is not None and started <= snap.time.timestamp() <= time.time() + 1
    assert snap.paths() == ["a/b.yaml", "a/c.yaml"]
    assert snap.get("a/c.yaml") == {"schema_version": 1, "n": 2}


def test_change_function_may_set_subject(state_path: Path) -> None:
    store = Store(state_path)

    def change(draft):
        draft.put("a.yaml", {"schema_version": 1, "n": 1})
        draft.subject = "bob created a"

    store.transact(change, subject="default", operation="x")
    assert store.log()[0].subject == "bob created a"


def test_unchanged_state_makes_no_commit(state_path: Path) -> None:
    store = Store(state_path)
    first = store.transact(_set("a.yaml", n=1), subject="set n", operation="x")
    again = store.transact(_set("a.yaml", n=1), subject="set n", operation="x")
    read_only = store.transact(lambda draft: draft.get("a.yaml"), subject="read", operation="x")
    assert again.commit is None
    assert read_only.commit is None
    assert store.head() == first.commit
    assert len(store.log()) == 1


def test_failing_change_writes_nothing(state_path: Path) -> None:
    store = Store(state_path)
    store.transact(_set("a.yaml", n=1), subject="set n", operation="x")
    head = store.head()

    def change(draft):
        draft.put("a.yaml", {"schema_version": 1, "n": 2})
        raise ValueError("refused by validation")

    with pytest.raises(ValueError, match="refused"):
        store.transact(change, subject="bad", operation="x")
    assert store.head() == head
    assert store.get("a.yaml")["n"] == 1


def test_only_changed_trees_are_rewritten(state_path: Path) -> None:
    store = Store(state_path)

    def seed(draft):
        draft.put("gates/a/one.yaml", {"schema_version": 1, "n": 1})
        draft.put("gates/b/two.yaml", {"schema_version": 1, "n": 2})

    before = store.transact(seed, subject="seed", operation="x")
    after = store.transact(_set("gates/a/one.yaml", n=5), subject="bump", operation="x")
    repo = pygit2.Repository(str(state_path))
    old_tree = repo[before.commit].tree
    new_tree = repo[after.commit].tree
    # The untouched directory is the very same tree object.
    assert old_tree["gates/b"].id == new_tree["gates/b"].id
    assert old_tree["gates/a"].id != new_tree["gates/a"].id
    assert repo[after.commit].parents[0].id == repo[before.commit].id


def test_delete_removes_record_and_empty_directories(state_path: Path) -> None:
    store = Store(state_path)
    store.transact(_set("gates/a/one.yaml", n=1), subject="add", operation="x")
    store.transact(_set("keep.yaml", n=1), subject="add", operation="x")
    store.transact(lambda d: d.delete("gates/a/one.yaml"), subject="remove", operation="x")
    assert store.snapshot().paths() == ["keep.yaml"]
    repo = pygit2.Repository(str(state_path))
    assert "gates" not in repo[store.head()].tree


def test_records_are_deterministic_yaml_bytes(state_path: Path) -> None:
    store = Store(state_path)
    record = {
        "zeta": "no",
        "schema_version": 1,
        "alpha": {"b": 2, "a": "1.10"},
        "when": "2026-01-01",
    }
    store.transact(lambda d: d.put("r.yaml", record), subject="add", operation="x")
    data = git("show", "state:r.yaml", cwd=state_path)
    assert data == (
        'schema_version: 1\nalpha:\n  a: "1.10"\n  b: 2\nwhen: "2026-01-01"\nzeta: no\n'
    )
    # Same data in another key order gives the same blob: no phantom change.
    reordered = dict(reversed(list(record.items())))
    again = store.transact(lambda d: d.put("r.yaml", reordered), subject="same", operation="x")
    assert again.commit is None
    assert store.get("r.yaml") == record


def test_record_without_schema_version_is_refused(state_path: Path) -> None:
    store = Store(state_path)
    with pytest.raises(RecordError, match=r"r\.yaml.*schema_version"):
        store.transact(lambda d: d.put("r.yaml", {"n": 1}), subject="x", operation="x")
    assert store.head() is None


@pytest.mark.parametrize(
    "bad",
    [
        "../escape.yaml",
        "a/../../b.yaml",
        "/abs.yaml",
        "a//b.yaml",
        "a/./b.yaml",
        "a/b\x00.yaml",
        "a\\b",
        "",
    ],
)
def test_unsafe_paths_are_refused(state_path: Path, bad: str) -> None:
    store = Store(state_path)
    with pytest.raises(PathError):
        store.transact(lambda d: d.put(bad, {"schema_version": 1}), subject="x", operation="x")
    assert store.head() is None


def test_hand_corrupted_record_error_names_it(state_path: Path) -> None:
    store = Store(state_path)
    store.transact(_set("gates/shop/cart.yaml", state="open"), subject="add", operation="x")
    commit = _commit_by_hand(state_path, {"gates/shop/cart.yaml": b"state: [open\n  bad: {"})
    with pytest.raises(RecordError) as caught:
        store.get("gates/shop/cart.yaml")
    assert caught.value.path == "gates/shop/cart.yaml"
    assert caught.value.commit == commit
    assert "gates/shop/cart.yaml" in str(caught.value)
    assert "not valid YAML" in str(caught.value)


def test_hand_written_record_without_version_error_names_it(state_path: Path) -> None:
    store = Store(state_path)
    store.transact(_set("other.yaml", n=1), subject="add", operation="x")
    _commit_by_hand(state_path, {"gates/x/y.yaml": b"state: open\n"})
    with pytest.raises(RecordError, match=r"gates/x/y\.yaml.*schema_version"):
        store.get("gates/x/y.yaml")
    # The other records stay readable.
    assert store.get("other.yaml")["n"] == 1


def test_state_at_past_commit_is_exact(state_path: Path) -> None:
    store = Store(state_path)
    commits = []
    for n in range(5):
        done = store.transact(
            lambda d, n=n: (
                d.put("c.yaml", {"schema_version": 1, "n": n}),
                d.put(f"log/{n}.yaml", {"schema_version": 1}),
            ),
            subject=f"step {n}",
            operation="x",
        )
        commits.append(done.commit)
    for n, commit in enumerate(commits):
        past = store.at(commit)
        assert past.commit == commit
        assert past.get("c.yaml") == {"schema_version": 1, "n": n}
        assert past.paths("log") == [f"log/{i}.yaml" for i in range(n + 1)]
    assert store.at(commits[2][:10]).get("c.yaml")["n"] == 2


def test_state_at_time(state_path: Path) -> None:
    store = Store(state_path)
    store.transact(_set("c.yaml", n=1), subject="one", operation="x")
    # Commit times have one-second resolution; step over a second boundary.
    time.sleep(1.1)
    middle = datetime.now(UTC)
    time.sleep(1.1)
    store.transact(_set("c.yaml", n=2), subject="two", operation="x")
    assert store.at(middle).get("c.yaml")["n"] == 1
    assert store.at(datetime.now(UTC) + timedelta(seconds=5)).get("c.yaml")["n"] == 2
    assert store.at(middle - timedelta(days=1)).get("c.yaml") is None


def test_unknown_revision_is_reported(state_path: Path) -> None:
    store = Store(state_path)
    store.transact(_set("c.yaml", n=1), subject="one", operation="x")
    with pytest.raises(RevisionNotFound):
        store.at("0" * 40)
    with pytest.raises(RevisionNotFound):
        store.at("not-a-revision")


def test_history_of_one_record(state_path: Path) -> None:
    store = Store(state_path)
    store.transact(
        _set("gates/a.yaml", state="open"),
        subject="alice opened a",
        operation="gate.open",
        identity=Identity("alice"),
    )
    store.transact(
        _set("gates/b.yaml", state="open"),
        subject="bob opened b",
        operation="gate.open",
        identity=Identity("bob"),
    )
    store.transact(
        _set("gates/a.yaml", state="closed"),
        subject="carol closed a",
        operation="gate.close",
        identity=Identity("carol"),
    )
    store.transact(
        lambda d: d.delete("gates/a.yaml"),
        subject="dave removed a",
        operation="gate.delete",
        identity=Identity("dave"),
    )
    history = store.history("gates/a.yaml")
    assert [(c.actor, c.operation) for c in history] == [
        ("dave", "gate.delete"),
        ("carol", "gate.close"),
        ("alice", "gate.open"),
    ]
    assert history[0].record is None
    assert history[1].record["state"] == "closed"
    assert history[2].subject == "alice opened a"
    assert [c.actor for c in store.history("gates/a.yaml", limit=1)] == ["dave"]


def test_snapshot_follows_foreign_commits_by_diff(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = Store(state_path)
    writer = Store(state_path, create=False)

    def seed(draft):
        for n in range(50):
            draft.put(f"r/{n}.yaml", {"schema_version": 1, "n": n})

    writer.transact(seed, subject="seed", operation="x")
    assert len(reader.snapshot().paths("r")) == 50
    for n in range(50):
        reader.get(f"r/{n}.yaml")

    decoded: list[str] = []
    real_decode = codec.decode
    monkeypatch.setattr(
        codec,
        "decode",
        lambda data, path, commit=None: decoded.append(path) or real_decode(data, path, commit),
    )
    writer.transact(_set("r/7.yaml", n=700), subject="bump", operation="x")
    writer.transact(lambda d: d.delete("r/8.yaml"), subject="drop", operation="x")
    snap = reader.snapshot()
    assert snap.commit == writer.head()
    assert len(snap.paths("r")) == 49
    assert [snap.get(f"r/{n}.yaml")["n"] for n in (6, 7, 9)] == [6, 700, 9]
    # Only the changed record was parsed again.
    assert decoded == ["r/7.yaml"]


def test_returned_records_are_private_copies(state_path: Path) -> None:
    store = Store(state_path)
    store.transact(_set("a.yaml", items=[1, 2]), subject="add", operation="x")
    first = store.get("a.yaml")
    first["items"].append(3)
    assert store.get("a.yaml")["items"] == [1, 2]


def test_stale_ref_lock_left_by_dead_writer_is_recovered(state_path: Path) -> None:
    store = Store(state_path, stale_lock_after=0.5, deadline=10)
    store.transact(_set("a.yaml", n=1), subject="one", operation="x")
    lock = state_path / "refs" / "heads" / "state.lock"
    lock.write_text("")  # what a writer killed between lock and rename leaves
    done = store.transact(_set("a.yaml", n=2), subject="two", operation="x")
    assert done.commit == store.head()
    assert store.get("a.yaml")["n"] == 2
    assert not lock.exists()


def test_fresh_foreign_lock_is_not_broken_and_deadline_reports(state_path: Path) -> None:
    store = Store(state_path, stale_lock_after=60, deadline=0.3)
    store.transact(_set("a.yaml", n=1), subject="one", operation="x")
    head = store.head()
    lock = state_path / "refs" / "heads" / "state.lock"
    lock.write_text("")
    with pytest.raises(StoreBusy) as caught:
        store.transact(_set("a.yaml", n=2), subject="two", operation="x")
    assert caught.value.ref == "refs/heads/state"
    assert "locked" in str(caught.value)
    assert lock.exists()
    lock.unlink()
    assert store.head() == head


def test_metrics_are_recorded_after_the_host_lock_is_released(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every writer on the host waits while one holds the lock, so nothing
    # that can wait (the first sample imports prometheus-client) is done
    # under it: another process must be able to take the lock by then.
    store = Store(state_path)
    seen: list[bool] = []

    def probe(operation: str) -> None:
        fd = os.open(state_path / "gitstate-writer.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append(True)
        except BlockingIOError:
            seen.append(False)
        finally:
            os.close(fd)

    monkeypatch.setattr(metrics, "state_committed", probe)
    store.transact(_set("a.yaml", n=1), subject="one", operation="x")
    store.transact(_set("a.yaml", n=2), subject="two", operation="x")
    assert seen == [True, True]
    assert store.get("a.yaml")["n"] == 2


def test_conflict_reapplies_change_on_new_tip(state_path: Path) -> None:
    store = Store(state_path)
    store.transact(_set("n.yaml", n=0), subject="init", operation="x")
    runs = []

    def increment(draft):
        runs.append(1)
        record = draft.get("n.yaml")
        if len(runs) == 1:
            # A foreign writer (git push, not our host lock) moves the ref while
            # we compute: our compare-and-swap must fail and the change re-run.
            _commit_by_hand(state_path, {"n.yaml": b"schema_version: 1\nn: 10\n"}, "foreign")
        record["n"] += 1
        draft.put("n.yaml", record)

    done = store.transact(increment, subject="inc", operation="x")
    assert done.attempts == 2
    assert store.get("n.yaml")["n"] == 11
    assert [c.subject for c in store.log()] == ["inc", "foreign", "init"]


def test_listing_after_long_runs_of_own_and_foreign_writes(state_path: Path) -> None:
    store = Store(state_path)
    foreign = Store(state_path, create=False)
    expected: set[str] = set()
    for n in range(600):
        writer = foreign if n % 7 == 0 else store
        path = f"r/{n % 97}/{n}.yaml"
        if n % 5 == 4:
            victim = sorted(expected)[0]
            writer.transact(lambda d, v=victim: d.delete(v), subject="drop", operation="x")
            expected.discard(victim)
        else:
            writer.transact(
                lambda d, p=path: d.put(p, {"schema_version": 1}), subject="add", operation="x"
            )
            expected.add(path)
        if n in (10, 300, 599):
            assert store.snapshot().paths() == sorted(expected)
    assert store.snapshot().paths("r/3") == sorted(p for p in expected if p.startswith("r/3/"))
    assert Store(state_path, create=False).snapshot().paths() == sorted(expected)


def test_failed_object_write_is_retried(state_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(state_path, deadline=5)
    real = store._write_blobs
    failures = [OSError(2, "No such file or directory", "objects/ab/tmp_object")]

    def flaky(changes):
        if failures:
            raise failures.pop()
        return real(changes)

    monkeypatch.setattr(store, "_write_blobs", flaky)
    done = store.transact(_set("a.yaml", n=1), subject="one", operation="x")
    assert done.attempts == 2
    assert store.get("a.yaml") == {"schema_version": 1, "n": 1}


def test_persistent_write_failure_reports_the_cause(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(state_path, deadline=0.2)

    def broken(changes):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_write_blobs", broken)
    with pytest.raises(StoreBusy, match=r"objects could not be written.*No space left"):
        store.transact(_set("a.yaml", n=1), subject="one", operation="x")
    assert store.head() is None


def test_deadline_covers_waiting_for_other_threads(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(state_path, deadline=10)
    # Changes run under the writer lock here, as they do when preparing them
    # first does not pay (see tests/unit/test_store_prepared.py for the other path).
    monkeypatch.setattr(store._optimism, "worth_trying", lambda: False)
    with (
        slow_transaction(store),
        pytest.raises(StoreBusy, match="other writers in this process"),
    ):
        store.transact(_set("a.yaml", n=1), subject="quick", operation="x", deadline=0.2)
    assert store.get("slow.yaml") is not None
    assert store.get("a.yaml") is None


def _strict_checks_on(tmp_path: Path) -> bool:
    """Tell whether libgit2 still refuses a tree entry naming a missing object."""
    repo = pygit2.init_repository(str(tmp_path / "probe.git"), bare=True)
    try:
        repo.TreeBuilder().insert("x", pygit2.Oid(hex="1" * 40), pygit2.enums.FileMode.BLOB)
    except pygit2.GitError:
        return True
    finally:
        repo.free()
    return False


def test_object_checks_stay_on_while_the_store_writes(
    state_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libgit2's check that named objects exist is a process-wide setting;
    # the store must not turn it off, even for a moment, because another
    # thread (file sync copying objects between repositories) may be
    # writing at the same time.
    store = Store(state_path)
    seen: list[bool] = []
    write_tree = store._write_tree

    def probing(base, blobs):
        seen.append(_strict_checks_on(tmp_path))
        tree = write_tree(base, blobs)
        seen.append(_strict_checks_on(tmp_path))
        return tree

    monkeypatch.setattr(store, "_write_tree", probing)
    store.transact(_set("a/b.yaml", n=1), subject="one", operation="x")
    store.transact(_set("a/b.yaml", n=2), subject="two", operation="x")
    assert seen == [True] * 4
    assert _strict_checks_on(tmp_path)


def test_every_object_a_commit_names_is_stored(state_path: Path) -> None:
    # git fsck proves that no tree or commit the store wrote names an
    # object it did not write, before and after git gc packs the history.
    # The store opened after the gc has nothing cached, so its first writes
    # must read packed trees and the packed parent commit.
    store = Store(state_path)
    for step in range(6):
        store.transact(_set(f"d{step % 3}/r{step}.yaml", n=step), subject="put", operation="x")
    store.transact(lambda draft: draft.delete("d0/r0.yaml"), subject="drop", operation="x")
    store.close()
    git("--git-dir", str(state_path), "gc", "-q")
    assert not list((state_path / "objects").glob("??/*"))  # all packed
    store = Store(state_path)
    # A blind write (nothing read first) into a packed directory.
    store.transact(
        lambda draft: draft.put("d1/blind.yaml", {"schema_version": 1}),
        subject="blind",
        operation="x",
    )
    for step in range(6, 9):
        store.transact(_set(f"d{step % 3}/r{step}.yaml", n=step), subject="put", operation="x")
    store.transact(lambda draft: draft.delete("d1/r1.yaml"), subject="drop", operation="x")
    git("--git-dir", str(state_path), "fsck", "--strict", "--no-dangling")
    assert sorted(store.snapshot().paths()) == [
        "d0/r3.yaml",
        "d0/r6.yaml",
        "d1/blind.yaml",
        "d1/r4.yaml",
        "d1/r7.yaml",
        "d2/r2.yaml",
        "d2/r5.yaml",
        "d2/r8.yaml",
    ]


def test_processes_creating_the_state_repository_at_once_all_succeed(tmp_path) -> None:
    # gunicorn starts its workers together; on a first start each creates
    # the repository. None may fail, and the result is configured.
    import multiprocessing

    from gitstate.store.branch import init_repository

    path = tmp_path / "data" / "state.git"
    context = multiprocessing.get_context("fork")
    start = context.Barrier(8)

    def create() -> None:
        start.wait()
        init_repository(path)

    processes = [context.Process(target=create) for _ in range(8)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0] * 8
    config = pygit2.Repository(str(path)).config
    assert config["receive.denyDeletes"] == "true"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.git"]
