"""The state branch moved back behind the store's back: noticed, refused, recoverable.

Issue 18, item 8: ``git update-ref`` took the branch back, an acknowledged
gate change disappeared and new writes went on top of the old tip. The
store now keeps the last tip a writer set in ``state.git/gitstate-seen-tip``
and refuses to write on a tip that does not contain it.
"""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path

import pytest

from gitstate.cli.main import main
from gitstate.store.branch import Store
from gitstate.store.rewind import MARK_FILE, BranchRewound
from tests.support.helpers import git

REF = "refs/heads/state"


def _set(path: str, value: int):
    def change(draft):
        draft.put(path, {"schema_version": 1, "value": value})

    return change


def _write(store: Store, value: int, path: str = "gates/g/s.yaml") -> str | None:
    return store.transact(_set(path, value), subject=f"set {value}", operation="test.set").commit


def _tip(state_path: Path) -> str:
    return git("rev-parse", REF, cwd=state_path).strip()


def _rewind(state_path: Path, commits: int = 2) -> tuple[str, str]:
    """Move the branch back by hand, as the issue's operator did; return (old, new)."""
    old = _tip(state_path)
    new = git("rev-parse", f"{REF}~{commits}", cwd=state_path).strip()
    git("update-ref", REF, new, old, cwd=state_path)
    return old, new


@pytest.fixture
def store(state_path: Path) -> Store:
    store = Store(state_path)
    for value in range(4):
        _write(store, value)
    return store


def test_a_write_on_a_rewound_branch_is_refused_and_changes_nothing(
    store: Store, state_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = _rewind(state_path)
    with caplog.at_level(logging.ERROR, logger="gitstate.store.rewind"):
        with pytest.raises(BranchRewound) as refused:
            _write(store, 99)
        with pytest.raises(BranchRewound):
            _write(store, 100, path="gates/other.yaml")
    assert (refused.value.expected, refused.value.found) == (old, new)
    assert refused.value.status == 503
    assert "moved back" in str(refused.value) and "operations.md" in str(refused.value)
    assert _tip(state_path) == new
    # Logged once for this rewind, not once per refused write.
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert old[:12] in caplog.records[0].getMessage()


def test_reads_and_writes_that_change_nothing_still_work(store: Store, state_path: Path) -> None:
    _rewind(state_path)
    assert store.get("gates/g/s.yaml") == {"schema_version": 1, "value": 1}
    same = store.transact(_set("gates/g/s.yaml", 1), subject="same", operation="test.set")
    assert same.commit is None


def test_the_store_reports_the_rewind_until_the_branch_is_restored(
    store: Store, state_path: Path
) -> None:
    assert store.rewound() is None
    old, new = _rewind(state_path)
    rewind = store.rewound()
    assert rewind is not None and (rewind.expected, rewind.found) == (old, new)
    # Restored from the reflog: the entry before the rewind names the old tip.
    assert git("rev-parse", f"{REF}@{{1}}", cwd=state_path).strip() == old
    git("update-ref", REF, old, new, cwd=state_path)
    assert store.rewound() is None
    assert _write(store, 5) is not None
    assert store.get("gates/g/s.yaml") == {"schema_version": 1, "value": 5}


def test_a_fresh_store_notices_a_rewind_made_while_nothing_ran(
    store: Store, state_path: Path
) -> None:
    store.close()
    old, new = _rewind(state_path)
    fresh = Store(state_path, create=False)
    assert fresh.rewound() is not None
    with pytest.raises(BranchRewound) as refused:
        _write(fresh, 7)
    assert refused.value.expected == old
    assert _tip(state_path) == new


def _write_in_child(path: str, queue: multiprocessing.Queue) -> None:
    try:
        _write(Store(path, create=False), 8)
        queue.put("written")
    except BranchRewound as ex:
        queue.put(ex.expected)


def test_another_process_notices_too(store: Store, state_path: Path) -> None:
    old, _new = _rewind(state_path)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_write_in_child, args=(str(state_path), queue))
    child.start()
    child.join(60)
    assert queue.get(timeout=5) == old


def test_writers_through_other_store_objects_are_not_a_rewind(state_path: Path) -> None:
    first, second = Store(state_path), Store(state_path, create=False)
    for value in range(6):
        _write(first if value % 2 else second, value)
        _write(second if value % 2 else first, value + 100, path="other.yaml")
        assert first.rewound() is None and second.rewound() is None


def test_a_fast_forward_behind_the_store_is_not_a_rewind(store: Store, state_path: Path) -> None:
    """A push (the state guard lets only fast-forwards through) moves the tip forward."""
    tip = _tip(state_path)
    tree = git("rev-parse", f"{tip}^{{tree}}", cwd=state_path).strip()
    pushed = git("commit-tree", tree, "-p", tip, "-m", "pushed", cwd=state_path).strip()
    git("update-ref", REF, pushed, tip, cwd=state_path)
    assert store.rewound() is None
    commit = _write(store, 42)
    assert git("rev-parse", f"{commit}^", cwd=state_path).strip() == pushed


def test_a_deleted_branch_is_a_rewind(store: Store, state_path: Path) -> None:
    old = _tip(state_path)
    git("update-ref", "-d", REF, cwd=state_path)
    rewind = store.rewound()
    assert rewind is not None and (rewind.expected, rewind.found) == (old, None)
    with pytest.raises(BranchRewound):
        _write(store, 9)


def test_a_mark_naming_no_commit_here_is_a_rewind(store: Store, state_path: Path) -> None:
    """An older copy of the repository restored under a newer mark."""
    (state_path / MARK_FILE).write_text("1234567890" * 4 + "\n")
    with pytest.raises(BranchRewound):
        _write(store, 9)


def test_accepting_the_tip_ends_the_rewind_deliberately(store: Store, state_path: Path) -> None:
    old, new = _rewind(state_path)
    assert store.accept_tip() == (old, new)
    assert store.rewound() is None
    commit = _write(store, 11)
    assert git("rev-parse", f"{commit}^", cwd=state_path).strip() == new


def test_a_repository_without_a_mark_is_taken_as_it_is(state_path: Path) -> None:
    """Repositories from before the check (or a fresh restore) have no mark yet."""
    store = Store(state_path)
    _write(store, 1)
    _write(store, 2)
    (state_path / MARK_FILE).unlink()
    _rewind(state_path, 1)
    assert store.rewound() is None
    _write(store, 3)
    assert (state_path / MARK_FILE).read_text().strip() == _tip(state_path)


def test_the_cli_checks_and_accepts_the_tip(
    store: Store, state_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gitstate.yaml"
    config.write_text(f"datadir: {state_path.parent}\nstate: {{fsync: false}}\n")
    assert main(["state", "check", "--config", str(config)]) == 0
    _old, new = _rewind(state_path)
    assert main(["state", "check", "--config", str(config)]) == 1
    assert "moved back" in capsys.readouterr().err
    assert main(["state", "accept-tip", "--config", str(config)]) == 0
    assert new in capsys.readouterr().out
    assert main(["state", "check", "--config", str(config)]) == 0
    assert _write(store, 12) is not None
