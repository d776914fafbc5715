"""Several stores sharing one state branch through a git server (issue 22).

The git server here is a bare repository reached by path: ``git push`` to
it runs the same receive-pack, with the same compare-and-swap on the ref,
as ``git daemon`` or ``http-backend`` (the system test uses ``git daemon``).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from gitstate.store import pushqueue
from gitstate.store import turns as turns_module
from gitstate.store.branch import DEFAULT_REF, Store
from gitstate.store.rewind import BranchRewound
from gitstate.store.turns import WAITING, Turns, waiting_refspec
from gitstate.store.upstream import SharedRef, SharedUnreachable, redact
from tests.support.helpers import git

COUNTER = "counters/c.yaml"


def _bump(draft) -> int:
    record = draft.get(COUNTER) or {"schema_version": 1, "n": 0}
    value = record["n"] + 1
    draft.put(COUNTER, {"schema_version": 1, "n": value})
    return value


def _node(tmp_path: Path, name: str, remote: Path) -> Store:
    local = tmp_path / name / "state.git"
    return Store(local, upstream=SharedRef(local, str(remote), DEFAULT_REF, timeout=10))


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    path = tmp_path / "server" / "state.git"
    path.parent.mkdir()
    git("init", "-q", "--bare", "-b", "state", str(path), cwd=tmp_path)
    return path


def _shared_log(remote: Path) -> list[str]:
    return git("log", "--format=%H", DEFAULT_REF, cwd=remote).split()


def test_no_acknowledged_write_is_lost_among_three_nodes(tmp_path: Path, remote: Path) -> None:
    """Threads on three nodes increment one counter: every increment is in the shared history."""
    nodes = [_node(tmp_path, f"n{i}", remote) for i in range(3)]
    acknowledged: list[tuple[str, int]] = []
    lock = threading.Lock()

    def run(store: Store) -> None:
        for _ in range(6):
            done = store.transact(_bump, subject="bump", operation="test.bump")
            with lock:
                acknowledged.append((done.commit, done.value))

    threads = [threading.Thread(target=run, args=(node,)) for node in nodes for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    history = _shared_log(remote)
    assert len(acknowledged) == 36
    # Each acknowledged write is its own commit on the git server, and each
    # saw the count the one before it left: no increment was lost.
    assert {commit for commit, _ in acknowledged} <= set(history)
    assert len({commit for commit, _ in acknowledged}) == 36
    assert sorted(value for _, value in acknowledged) == list(range(1, 37))
    assert nodes[1].refresh() == history[0]
    assert nodes[1].get(COUNTER)["n"] == 36


def test_each_commit_names_its_node(tmp_path: Path, remote: Path) -> None:
    """The same change on the same tip on two nodes makes two commits, not one."""
    a, b = _node(tmp_path, "a", remote), _node(tmp_path, "b", remote)
    a.transact(_bump, subject="bump", operation="test.bump")
    b.refresh()
    first = a.transact(_bump, subject="bump", operation="test.bump")
    second = b.transact(_bump, subject="bump", operation="test.bump")
    assert first.commit != second.commit
    assert second.value == 3
    nodes = {
        git("log", "-1", "--format=%(trailers:key=Node,valueonly)", commit, cwd=remote).strip()
        for commit in (first.commit, second.commit)
    }
    assert nodes == {a.upstream.node, b.upstream.node}


def test_a_write_runs_on_the_shared_tip_not_on_the_local_copy(tmp_path: Path, remote: Path) -> None:
    """A node that has not fetched yet still writes on top of another node's commit."""
    a, b = _node(tmp_path, "a", remote), _node(tmp_path, "b", remote)
    b.transact(_bump, subject="bump", operation="test.bump")  # b's copy now exists
    for _ in range(3):
        a.transact(_bump, subject="bump", operation="test.bump")
    assert b.head() != a.head()  # b has not heard of a's commits
    done = b.transact(_bump, subject="bump", operation="test.bump")
    assert done.value == 5
    assert b.head() == _shared_log(remote)[0] == done.commit


def test_an_unreachable_git_server_refuses_writes_and_keeps_reads(
    tmp_path: Path, remote: Path
) -> None:
    """Writes answer 503 with nothing committed; reads go on; health data says why."""
    store = _node(tmp_path, "a", remote)
    store.transact(_bump, subject="bump", operation="test.bump")
    before = store.head()
    hidden = remote.with_name("away.git")
    remote.rename(hidden)
    try:
        with pytest.raises(SharedUnreachable) as refused:
            store.transact(_bump, subject="bump", operation="test.bump")
        assert refused.value.status == 503
        assert store.head() == before
        assert store.get(COUNTER)["n"] == 1
        seen = store.upstream.reachability()
        assert seen is not None and not seen.reachable
    finally:
        hidden.rename(remote)
    done = store.transact(_bump, subject="bump", operation="test.bump")
    assert done.value == 2
    assert store.upstream.reachability().reachable


def test_a_git_server_moved_back_is_refused(tmp_path: Path, remote: Path) -> None:
    """The shared branch reset behind the cluster's back: no write goes on top of it."""
    store = _node(tmp_path, "a", remote)
    for _ in range(3):
        store.transact(_bump, subject="bump", operation="test.bump")
    oldest = _shared_log(remote)[-1]
    git("update-ref", DEFAULT_REF, oldest, cwd=remote)
    with pytest.raises(BranchRewound):
        store.transact(_bump, subject="bump", operation="test.bump")
    assert _shared_log(remote) == [oldest]


def test_a_fresh_node_starts_from_the_shared_history(tmp_path: Path, remote: Path) -> None:
    a = _node(tmp_path, "a", remote)
    for _ in range(2):
        a.transact(_bump, subject="bump", operation="test.bump")
    fresh = _node(tmp_path, "fresh", remote)
    assert fresh.head() is None
    assert fresh.refresh() == a.head()
    assert fresh.get(COUNTER)["n"] == 2
    shutil.rmtree(tmp_path / "a")


def test_passwords_in_urls_stay_out_of_what_is_shown() -> None:
    assert redact("https://deploy:s3cret@git.example.com/state.git") == (
        "https://deploy@git.example.com/state.git"
    )
    assert redact("/srv/git/state.git") == "/srv/git/state.git"


class _CountingRef(SharedRef):
    """A SharedRef that counts its pushes (the git server is still real)."""

    pushes = 0

    def push(self, commit: str, expected: str | None) -> bool:
        type(self).pushes += 1
        return super().push(commit, expected)


def test_changes_queued_in_one_process_go_out_in_one_push_each_its_own_commit(
    tmp_path: Path, remote: Path
) -> None:
    local = tmp_path / "n" / "state.git"
    store = Store(local, upstream=_CountingRef(local, str(remote), DEFAULT_REF, timeout=10))
    start = threading.Barrier(8)
    subjects: list[str] = []

    def run(number: int) -> None:
        start.wait()
        for round_ in range(5):
            subject = f"bump {number}.{round_}"
            store.transact(_bump, subject=subject, operation="test.bump")
            subjects.append(subject)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    history = _shared_log(remote)
    assert len(history) == 40
    assert store.get(COUNTER)["n"] == 40
    shared_subjects = git("log", "--format=%s", DEFAULT_REF, cwd=remote).split("\n")
    assert sorted(s for s in shared_subjects if s) == sorted(subjects)
    assert _CountingRef.pushes < 40


def test_a_failing_change_in_a_batch_leaves_the_others_committed(
    tmp_path: Path, remote: Path
) -> None:
    store = _node(tmp_path, "n", remote)
    start = threading.Barrier(6)
    outcomes: list[object] = []

    def refuse(draft) -> None:
        raise LookupError("no such gate")

    def run(number: int) -> None:
        start.wait()
        change = refuse if number % 2 else _bump
        try:
            outcomes.append(store.transact(change, subject="x", operation="test.mixed").value)
        except LookupError as ex:
            outcomes.append(ex)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(isinstance(item, LookupError) for item in outcomes) == 3
    assert sorted(item for item in outcomes if isinstance(item, int)) == [1, 2, 3]
    assert len(_shared_log(remote)) == 3


def _wait_for(condition, what: str, limit: float = 60.0) -> None:
    """Poll ``condition`` until true (a background push is under way); fail after ``limit`` s."""
    until = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < until, f"never happened: {what}"
        time.sleep(0.02)


def test_a_batch_refused_again_and_again_asks_the_other_nodes_to_give_way(
    tmp_path: Path, remote: Path
) -> None:
    """After two refused pushes a node raises its hand on the git server; the others see it.

    The git server's pre-receive hook refuses the first two pushes of the
    state branch, as a node that keeps winning the race would make them
    fail, and logs every ref update it is asked for.
    """
    updates = tmp_path / "updates.log"
    refusals = tmp_path / "refusals"
    hook = remote / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\n"
        "state=no\n"
        "while read old new ref; do\n"
        f'  echo "$old $new $ref" >> {updates}\n'
        '  [ "$ref" = refs/heads/state ] && state=yes\n'
        "done\n"
        f"if [ $state = yes ] && [ $(wc -c < {refusals}) -lt 2 ]; then\n"
        f"  printf x >> {refusals}; exit 1\n"
        "fi\n"
    )
    hook.chmod(0o755)
    refusals.write_text("")
    loser = _node(tmp_path, "loser", remote)
    local = tmp_path / "other" / "state.git"
    other = Store(
        local,
        upstream=SharedRef(local, str(remote), DEFAULT_REF, also=(waiting_refspec(),)),
    )
    other.transact(_bump, subject="first", operation="test.bump")  # refused twice too
    refusals.write_text("")

    loser.transact(_bump, subject="bump", operation="test.bump")

    hand = f"{WAITING}{Turns(loser.upstream).mine}"
    raised = lambda: any(  # noqa: E731
        line.endswith(" " + hand) and line.split()[1].strip("0") != ""
        for line in updates.read_text().splitlines()
    )
    lowered = lambda: any(  # noqa: E731
        line.endswith(" " + hand) and line.split()[1].strip("0") == ""
        for line in updates.read_text().splitlines()
    )
    _wait_for(raised, "the loser's hand raised on the git server")
    other.refresh()
    with other._mutex:
        assert Turns(other.upstream).others_waiting(other._repo) or lowered()
    _wait_for(lowered, "the loser's hand lowered once its write landed")
    assert loser.get(COUNTER)["n"] == 2
    other.refresh()
    with other._mutex:
        assert not Turns(other.upstream).others_waiting(other._repo)


def test_a_hand_raised_long_ago_no_longer_counts(
    tmp_path: Path, remote: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that died with its hand up does not slow the others down for ever."""
    a = _node(tmp_path, "a", remote)
    a.transact(_bump, subject="first", operation="test.bump")
    git("update-ref", f"{WAITING}dead-node", a.head(), cwd=remote)
    local = tmp_path / "b" / "state.git"
    b = Store(local, upstream=SharedRef(local, str(remote), DEFAULT_REF, also=(waiting_refspec(),)))
    b.refresh()
    turns = Turns(b.upstream)
    with b._mutex:
        assert turns.others_waiting(b._repo)
    monkeypatch.setattr(turns_module, "FORGOTTEN_AFTER", 0.0)
    with b._mutex:
        assert not turns.others_waiting(b._repo)


def test_a_node_that_pushed_while_another_waits_lets_it_write_first(
    tmp_path: Path, remote: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node A, having pushed, holds its next push back until node B's hand is down.

    B's write lands between A's two writes, though A asked for its second
    at once and B only once A's first was on the git server.
    """
    monkeypatch.setattr(pushqueue, "GIVE_WAY", 120.0)  # only the hand going down ends it
    local = tmp_path / "a" / "state.git"
    a = Store(local, upstream=SharedRef(local, str(remote), DEFAULT_REF, also=(waiting_refspec(),)))
    b = _node(tmp_path, "b", remote)
    first = a.transact(_bump, subject="a1", operation="test.bump")
    hand = f"{WAITING}{Turns(b.upstream).mine}"
    git("update-ref", hand, first.commit, cwd=remote)
    a.refresh()  # A learns of the raised hand, as its follower would within a second

    seconds: list[str] = []
    writer = threading.Thread(
        target=lambda: seconds.extend(
            a.transact(_bump, subject=s, operation="test.bump").commit for s in ("a2", "a3")
        )
    )
    writer.start()
    _wait_for(lambda: len(_shared_log(remote)) == 2, "A's second write on the git server")
    landed = b.transact(_bump, subject="b", operation="test.bump")
    git("update-ref", "-d", hand, cwd=remote)  # B's batch is done: its hand goes down
    writer.join(120)
    assert not writer.is_alive()

    subjects = git("log", "--format=%s", "--reverse", DEFAULT_REF, cwd=remote).split()
    assert subjects == ["a1", "a2", "b", "a3"]
    assert landed.value == 3 and a.get(COUNTER)["n"] == 4


def test_a_restarted_node_takes_down_the_hand_it_left_up(tmp_path: Path, remote: Path) -> None:
    """A node killed mid-batch leaves its hand up; on joining again it takes it down."""
    local = tmp_path / "a" / "state.git"
    a = Store(local, upstream=SharedRef(local, str(remote), DEFAULT_REF, also=(waiting_refspec(),)))
    first = a.transact(_bump, subject="first", operation="test.bump")
    turns = Turns(a.upstream)
    git("update-ref", f"{WAITING}{turns.mine}", first.commit, cwd=remote)
    git("update-ref", f"{WAITING}another-node", first.commit, cwd=remote)
    a.refresh()

    assert turns.clear_leftover() is True
    assert git("for-each-ref", "--format=%(refname)", WAITING, cwd=remote).split() == [
        f"{WAITING}another-node"  # only its own
    ]
    a.refresh()
    assert turns.clear_leftover() is False


def test_a_hand_that_could_not_be_lowered_goes_down_once_the_git_server_answers(
    tmp_path: Path, remote: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that ends during an outage must not leave its hand up for good."""
    monkeypatch.setattr(turns_module, "RETRY_EVERY", 0.05)
    a = _node(tmp_path, "a", remote)
    first = a.transact(_bump, subject="first", operation="test.bump")
    turns = Turns(a.upstream)
    hands = lambda: git("for-each-ref", "--format=%(refname)", WAITING, cwd=remote).split()  # noqa: E731

    turns.raise_hand(first.commit)
    _wait_for(lambda: hands() == [f"{WAITING}{turns.mine}"], "the hand up")
    away = remote.with_name("away.git")
    remote.rename(away)  # the git server stops answering
    turns.lower_hand()
    time.sleep(0.3)  # several tries fail meanwhile
    away.rename(remote)
    _wait_for(lambda: hands() == [], "the hand down once the git server answers")
