"""A TipWatch wakes its waiters when a ref moves, and only then."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from pathlib import Path

import pytest

from gitstate.base import shutdown
from gitstate.base.blocking import Blocking
from gitstate.store import tipwatch
from gitstate.store.branch import Store
from gitstate.store.tipwatch import TipWatch
from tests.support.helpers import git


@pytest.fixture
def store(state_path: Path) -> Store:
    store = Store(state_path, fsync=False)
    store.transact(
        lambda draft: draft.put("a.yaml", {"schema_version": 1, "n": 0}),
        subject="first",
        operation="test",
    )
    return store


def _later(action, delay: float = 0.2) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), action()))
    thread.start()
    return thread


def test_a_commit_wakes_a_waiter(store: Store) -> None:
    watch = TipWatch(Path(store.path)).start()
    try:
        head = store.head()
        writer = _later(
            lambda: store.transact(
                lambda draft: draft.put("a.yaml", {"schema_version": 1, "n": 1}),
                subject="next",
                operation="test",
            )
        )
        assert watch.wait(lambda: store.head() != head, 30)
        writer.join()
    finally:
        watch.stop()


def test_a_ref_in_a_new_directory_and_packed_refs_wake_a_waiter(store: Store) -> None:
    watch = TipWatch(Path(store.path)).start()
    repo = str(store.path)
    head = store.head()
    try:
        refs = lambda: git("for-each-ref", "--format=%(refname)", cwd=repo).split()  # noqa: E731
        creator = _later(lambda: git("update-ref", "refs/tags/deep/er/one", head, cwd=repo))
        assert watch.wait(lambda: "refs/tags/deep/er/one" in refs(), 30)
        creator.join()
        # pack-refs moves them into packed-refs; deleting a packed ref
        # rewrites only that file.
        git("pack-refs", "--all", cwd=repo)
        deleter = _later(lambda: git("update-ref", "-d", "refs/tags/deep/er/one", cwd=repo))
        assert watch.wait(lambda: "refs/tags/deep/er/one" not in refs(), 30)
        deleter.join()
    finally:
        watch.stop()


def test_lock_files_and_objects_do_not_wake_a_waiter(store: Store) -> None:
    watch = TipWatch(Path(store.path)).start()
    looks = []
    try:

        def touch() -> None:
            (Path(store.path) / "refs" / "heads" / "state.lock").write_text("x")
            (Path(store.path) / "refs" / "heads" / "state.lock").unlink()
            subprocess.run(
                ["git", "hash-object", "-w", "--stdin"],
                input=b"an object",
                cwd=store.path,
                check=True,
                capture_output=True,
            )

        toucher = _later(touch, 0.05)
        assert not watch.wait(lambda: looks.append(1) and False, 0.6)
        toucher.join()
        # Asked at the start and once more when the time is up; any wake in
        # between would have asked again.
        assert len(looks) == 2
    finally:
        watch.stop()


def test_a_stopping_process_wakes_every_wait_at_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long poll answers when the server stops, not when its safety net runs out."""
    monkeypatch.setattr(tipwatch, "SAFETY_NET", 3600.0)  # only the stop can wake it
    watch = TipWatch(Path(store.path)).start()
    looks: list[str] = []

    async def unchanged() -> bool:
        looks.append("look")
        return False

    async def poll() -> bool:
        asyncio.get_running_loop().call_later(0.2, shutdown.stop)
        wait = watch.wait_async(unchanged, 3600, stop=shutdown.stopping)
        return await asyncio.wait_for(wait, 60)  # fails rather than hangs

    try:
        moved = asyncio.run(poll())
    finally:
        shutdown.stopping.clear()
        watch.stop()
    assert moved is False
    assert looks == ["look", "look"]  # once at the start, once when woken by stop()


def _commit(store: Store, n: int) -> None:
    store.transact(
        lambda draft: draft.put("a.yaml", {"schema_version": 1, "n": n}),
        subject=f"n={n}",
        operation="test",
    )


def test_waiters_of_one_wake_share_a_look_and_the_next_wake_reads_afresh(store: Store) -> None:
    """Fifty waiting requests read the tip once per wake between them, and see every move."""
    watch = TipWatch(Path(store.path)).start()
    run = Blocking(4)
    looks: list[str | None] = []

    def head() -> str | None:
        time.sleep(0.05)  # long enough for every waiter to ask while it runs
        looks.append(store.head())
        return looks[-1]

    async def together() -> list[str | None]:
        return list(await asyncio.gather(*(watch.look_async("head", head, run) for _ in range(50))))

    try:
        first = asyncio.run(together())
        _commit(store, 1)
        watch.notify()  # as the inotify thread does when the ref moves
        second = asyncio.run(together())
    finally:
        run.close()
        watch.stop()
    assert len(looks) == 2
    assert set(first) == {looks[0]} and set(second) == {looks[1]}
    assert looks[1] == store.head() != looks[0]


def test_a_finished_look_is_not_reused_without_a_wake(store: Store) -> None:
    """The safety net's look (a lost event: no wake) reads the tip again."""
    watch = TipWatch(Path(store.path))  # not started: no event can wake it
    run = Blocking(2)

    async def look() -> str | None:
        return await watch.look_async("head", store.head, run)

    try:
        before = asyncio.run(look())
        generation = watch._wakeup.generation
        _commit(store, 2)
        after = asyncio.run(look())
    finally:
        run.close()
        watch.stop()
    assert watch._wakeup.generation == generation
    assert before != after == store.head()
