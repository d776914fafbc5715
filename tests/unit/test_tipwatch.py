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


def test_waiters_share_one_look_per_wake_and_sleep_while_their_answer_stands(
    store: Store,
) -> None:
    """Fifty waiting requests cost one look per move, and wake only when their answer changes.

    The waiters care about ``b.yaml``; commits to ``a.yaml`` (gate traffic)
    must not wake them, and the commit to ``b.yaml`` must.
    """
    watch = TipWatch(Path(store.path)).start()
    run = Blocking(4)
    looks: list[str | None] = []
    asked: list[str | None] = []

    def look() -> str | None:
        looks.append(store.ids(("b.yaml",))[0])
        return looks[-1]

    async def arrived(version: str | None) -> bool:
        asked.append(version)
        return version is not None

    async def commits() -> None:
        for n in range(1, 6):
            await asyncio.sleep(0.1)
            await run(_commit, store, n)
        await asyncio.sleep(0.1)
        await run(
            store.transact,
            lambda draft: draft.put("b.yaml", {"schema_version": 1}),
            subject="b",
            operation="test",
        )

    async def scenario() -> list[bool]:
        waits = [watch.wait_until_async("b", look, run, arrived, 60) for _ in range(50)]
        return list(await asyncio.gather(commits(), *waits))[1:]

    try:
        answers = asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        run.close()
        watch.stop()
    assert answers == [True] * 50
    # Each waiter asked twice: at the start (nothing yet) and once b.yaml came.
    assert len(asked) == 100 and asked.count(None) == 50
    # Each waiter's own first look, then the shared ones: the follower's first
    # and one per wake, however many waited (at most one wake per commit,
    # fewer when commits come together).
    assert 50 + 2 <= len(looks) <= 50 + 7


def test_a_failed_look_reaches_the_waiter_and_the_next_wait_looks_again(store: Store) -> None:
    watch = TipWatch(Path(store.path))
    run = Blocking(2)
    failing = [True]

    def look() -> str | None:
        if failing[0]:
            raise OSError("disk gone")
        return store.head()

    async def scenario() -> tuple[str, bool]:
        async def tip(head: str | None) -> bool:
            return head is not None

        try:
            await watch.wait_until_async("head", look, run, tip, 60)
        except OSError as ex:
            error = str(ex)
        failing[0] = False
        return error, await watch.wait_until_async("head", look, run, tip, 60)

    try:
        error, found = asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        run.close()
    assert error == "disk gone"
    assert found is True
