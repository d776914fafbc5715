"""Changes prepared before the writer locks: kept when still good, redone when not.

A transaction first applies its change to the tip without any lock; under
the locks it commits that result only if everything the change read is the
same at the (possibly newer) tip. These tests move the tip between the two
steps with a second store on the same repository, as another process would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gitstate.base.hostlock import HostLock
from gitstate.store.branch import Draft, Store, _Optimism
from tests.support.helpers import slow_transaction


def _seed(store: Store, records: dict[str, dict[str, Any]]) -> None:
    def change(draft: Draft) -> None:
        for path, record in records.items():
            draft.put(path, {"schema_version": 1, **record})

    store.transact(change, subject="seed", operation="test.seed")


def _interfere_once(other: Store, path: str, **fields: Any):
    """Return a function that commits ``fields`` at ``path`` through ``other`` the first time."""
    done: list[bool] = []

    def interfere() -> None:
        if done:
            return
        done.append(True)

        def change(draft: Draft) -> None:
            record = draft.get(path) or {"schema_version": 1}
            record.update(fields)
            draft.put(path, record)

        other.transact(change, subject=f"other writer sets {path}", operation="test.other")

    return interfere


def _take(draft: Draft) -> str:
    """Take gate.yaml unless it is closed (a test-and-set in miniature)."""
    gate = draft.get("gate.yaml")
    if gate["state"] == "closed":
        return "denied"
    draft.put("gate.yaml", {**gate, "holder": "me"})
    return "ok"


def _subjects(store: Store) -> list[str]:
    return [change.subject for change in store.log()]


def test_prepared_change_survives_a_commit_to_other_records(state_path: Path) -> None:
    store, other = Store(state_path), Store(state_path)
    _seed(store, {"counter.yaml": {"value": 1}, "elsewhere.yaml": {"value": 0}})
    interfere = _interfere_once(other, "elsewhere.yaml", value=99)

    def increment(draft: Draft) -> int:
        record = draft.get("counter.yaml")
        interfere()  # the tip moves while this change is being prepared
        record["value"] += 1
        draft.put("counter.yaml", record)
        return record["value"]

    done = store.transact(increment, subject="increment", operation="test.increment")

    assert done.value == 2
    assert done.attempts == 1  # committed as prepared, not run again
    assert store.get("counter.yaml")["value"] == 2
    assert store.get("elsewhere.yaml")["value"] == 99  # the other write is kept
    assert _subjects(store) == ["increment", "other writer sets elsewhere.yaml", "seed"]


def test_prepared_change_is_redone_when_what_it_read_changed(state_path: Path) -> None:
    store, other = Store(state_path), Store(state_path)
    _seed(store, {"counter.yaml": {"value": 1}})
    interfere = _interfere_once(other, "counter.yaml", value=10)

    def increment(draft: Draft) -> int:
        record = draft.get("counter.yaml")
        interfere()
        record["value"] += 1
        draft.put("counter.yaml", record)
        return record["value"]

    done = store.transact(increment, subject="increment", operation="test.increment")

    assert done.attempts == 2
    assert done.value == 11  # applied to the other writer's 10, not to the stale 1
    assert store.get("counter.yaml")["value"] == 11


def test_a_record_read_as_missing_counts_as_read(state_path: Path) -> None:
    store, other = Store(state_path), Store(state_path)
    _seed(store, {"unrelated.yaml": {"value": 0}})
    interfere = _interfere_once(other, "claim.yaml", owner="other")

    def claim(draft: Draft) -> str:
        current = draft.get("claim.yaml")
        interfere()
        if current is not None:
            return current["owner"]
        draft.put("claim.yaml", {"schema_version": 1, "owner": "me"})
        return "me"

    done = store.transact(claim, subject="claim", operation="test.claim")

    assert done.value == "other"  # the claim made meanwhile wins; it is not overwritten
    assert store.get("claim.yaml")["owner"] == "other"


def test_a_listing_counts_as_read(state_path: Path) -> None:
    store, other = Store(state_path), Store(state_path)
    _seed(store, {"items/a.yaml": {"n": 1}})
    interfere = _interfere_once(other, "items/b.yaml", n=2)

    def count(draft: Draft) -> int:
        total = len(draft.paths("items"))
        interfere()
        draft.put("summary.yaml", {"schema_version": 1, "items": total})
        return total

    done = store.transact(count, subject="count", operation="test.count")

    assert done.attempts == 2
    assert store.get("summary.yaml")["items"] == 2


def test_a_change_that_looks_at_its_base_commit_is_redone_on_any_move(state_path: Path) -> None:
    store, other = Store(state_path), Store(state_path)
    _seed(store, {"a.yaml": {"n": 1}, "b.yaml": {"n": 1}})
    interfere = _interfere_once(other, "b.yaml", n=2)
    seen: list[str | None] = []

    def stamp(draft: Draft) -> None:
        seen.append(draft.base.commit)
        interfere()
        draft.put("a.yaml", {"schema_version": 1, "n": 1, "based_on": draft.base.commit})

    done = store.transact(stamp, subject="stamp", operation="test.stamp")

    assert done.attempts == 2
    assert seen[0] != seen[1]
    assert store.get("a.yaml")["based_on"] == seen[1]  # the commit it was really built on


def test_a_change_that_writes_nothing_does_not_wait_for_writers(state_path: Path) -> None:
    store = Store(state_path, deadline=0.5)
    _seed(store, {"gate.yaml": {"state": "closed"}})
    held = HostLock(state_path / "gitstate-writer.lock")
    assert held.acquire(1)
    try:

        def look(draft: Draft) -> str:
            return draft.get("gate.yaml")["state"]

        done = store.transact(look, subject="look", operation="test.look")
    finally:
        held.release()
        held.close()
    assert done.value == "closed"
    assert done.commit is None


def test_an_error_on_the_tip_writes_nothing(state_path: Path) -> None:
    store = Store(state_path)
    _seed(store, {"a.yaml": {"n": 1}})
    head = store.head()

    def refuse(draft: Draft) -> None:
        draft.put("a.yaml", {"schema_version": 1, "n": 2})
        raise LookupError("no such thing")

    with pytest.raises(LookupError):
        store.transact(refuse, subject="refuse", operation="test.refuse")
    assert store.head() == head
    assert store.get("a.yaml")["n"] == 1


def test_optimism_backs_off_under_contention_and_probes_again() -> None:
    optimism = _Optimism()
    assert optimism.worth_trying()
    for _ in range(30):
        optimism.record(False)
    tries = [optimism.worth_trying() for _ in range(64)]
    assert tries.count(True) == 64 // _Optimism.PROBE_EVERY
    for _ in range(30):
        optimism.record(True)
    assert all(optimism.worth_trying() for _ in range(8))


def test_a_refusal_on_a_stale_view_is_checked_against_the_tip(state_path: Path) -> None:
    store, other = Store(state_path), Store(state_path)
    _seed(store, {"a.yaml": {"n": 1}})
    assert store.get("a.yaml") is not None  # this process now knows the tip
    _seed(other, {"ticket.yaml": {"holder": "other"}})  # which then moves elsewhere

    def release(draft: Draft) -> str:
        ticket = draft.get("ticket.yaml")
        if ticket is None:
            raise LookupError("no such ticket")
        draft.delete("ticket.yaml")
        return ticket["holder"]

    done = store.transact(release, subject="release", operation="test.release")

    assert done.value == "other"
    assert store.get("ticket.yaml") is None


def test_an_answer_without_writes_reflects_the_tip(state_path: Path) -> None:
    store, other = Store(state_path), Store(state_path)
    _seed(store, {"gate.yaml": {"state": "open"}})
    assert store.get("gate.yaml")["state"] == "open"
    _seed(other, {"gate.yaml": {"state": "closed"}})

    done = store.transact(_take, subject="take", operation="test.take")

    assert done.value == "denied"
    assert store.get("gate.yaml") == {"schema_version": 1, "state": "closed"}


def test_a_stale_denial_is_not_the_answer(state_path: Path) -> None:
    store, other = Store(state_path), Store(state_path)
    _seed(store, {"gate.yaml": {"state": "closed"}})
    assert store.get("gate.yaml")["state"] == "closed"
    _seed(other, {"gate.yaml": {"state": "open"}})

    done = store.transact(_take, subject="take", operation="test.take")

    assert done.value == "ok"
    assert store.get("gate.yaml")["holder"] == "me"


def test_prepared_changes_are_counted_as_kept_or_redone(state_path: Path) -> None:
    from gitstate.base import metrics
    from tests.support.metrics import total

    def scrape() -> tuple[float, float]:
        text = metrics.exposition()[0].decode()
        name = "gitstate_state_prepared_total"
        return total(text, name, outcome="kept"), total(text, name, outcome="redone")

    store, other = Store(state_path), Store(state_path)
    _seed(store, {"counter.yaml": {"value": 1}})
    kept, redone = scrape()
    interfere = _interfere_once(other, "counter.yaml", value=10)

    def increment(draft: Draft) -> None:
        record = draft.get("counter.yaml")
        interfere()
        record["value"] += 1
        draft.put("counter.yaml", record)

    # The first increment is redone; the other writer's change, made while it
    # was being prepared, and the second increment are kept.
    store.transact(increment, subject="increment", operation="test.increment")
    store.transact(increment, subject="increment", operation="test.increment")

    assert scrape() == (kept + 2, redone + 1)


def test_a_slow_change_being_prepared_holds_up_no_other_writer(state_path: Path) -> None:
    store = Store(state_path, deadline=10)
    _seed(store, {"a.yaml": {"n": 0}})

    def quick(draft: Draft) -> None:
        draft.put("a.yaml", {"schema_version": 1, "n": 1})

    with slow_transaction(store):
        # A short deadline: the quick write must not wait for the slow one.
        done = store.transact(quick, subject="quick", operation="x", deadline=2)
        assert store.get("a.yaml")["n"] == 1  # readers are not held up either
    assert done.commit is not None
    assert store.get("slow.yaml") is not None
    assert _subjects(store) == ["slow", "quick", "seed"]
