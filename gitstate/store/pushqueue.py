"""Writes of a node of several servers: queued, committed in turn, pushed together.

With a git server sharing the state branch (docs/cluster.md), a write is
acknowledged once a push has advanced the git server's ref, and that round
trip, not the commit, is what a write costs. So the writers of one process
queue their changes, and whichever takes the process's writer lock first
(the *leader*) runs every change queued by then on this node's copy of the
tip, one after the other, each as its own commit on the one before, and
pushes the last with a lease on that tip: one push for the lot. The others
find their change done when the lock comes to them. A refused push (another
node pushed first, or the copy was behind) fetches and runs the whole batch
again on the new tip, as a lost compare-and-swap does for one change; the
change functions may run more than once, as every transaction's may. A batch
refused again and again asks the other nodes to give way
(:mod:`gitstate.store.turns`).

A change whose function raises gets its exception and is left out of the
batch; the others go on. A fetch or push that fails, a branch moved back
or a deadline passed is every writer's answer in the batch.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import pygit2

from gitstate.store.rewind import BranchRewound
from gitstate.store.turns import FETCH_EVERY, GIVE_WAY, RAISE_AFTER, Turns
from gitstate.store.upstream import SharedUnreachable

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from gitstate.store.branch import Committed, Draft, Snapshot, Store, _Job, _Tally


@dataclasses.dataclass
class Queued:
    """One writer's change waiting for, or answered by, a push."""

    job: _Job[Any]
    tally: _Tally
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: Committed[Any] | None = None
    error: BaseException | None = None

    def answer(self, result: Committed[Any] | None, error: BaseException | None) -> None:
        """Hand the writer its answer and wake it."""
        self.result, self.error = result, error
        self.done.set()


class PushQueue:
    """The changes of one process's writers, waiting for the next push.

    Args:
        store: the store whose writer lock, host lock and object writes it uses.
    """

    #: How long a writer waits for the writer lock before it looks at its change again.
    LOOK_AGAIN = 0.05

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._waiting: list[Queued] = []
        assert store.upstream is not None
        self._turns = Turns(store.upstream)

    def write(self, job: _Job[Any], tally: _Tally) -> Committed[Any]:
        """Queue ``job`` and return once a push has it (or it failed).

        Raises:
            whatever the change function raised, or the batch's failure
            (:class:`~gitstate.store.upstream.SharedUnreachable`,
            :class:`~gitstate.store.rewind.BranchRewound`,
            :class:`~gitstate.store.branch.StoreBusy`).
        """
        from gitstate.store.branch import StoreBusy

        store = self._store
        entry = Queued(job, tally)
        with self._lock:
            self._waiting.append(entry)
        while not entry.done.is_set():
            if store._writer.acquire(timeout=self.LOOK_AGAIN):
                try:
                    if not entry.done.is_set():
                        with self._lock:
                            batch, self._waiting = self._waiting, []
                        self._run(batch)
                finally:
                    store._writer.release()
            elif time.monotonic() >= job.until:
                with self._lock:
                    queued = entry in self._waiting
                    if queued:
                        self._waiting.remove(entry)
                if queued:  # no leader took it: nobody else will answer it
                    waited = time.monotonic() - job.started
                    raise StoreBusy(store.ref, waited, 0, "other writers in this process held it")
        if entry.error is not None:
            raise entry.error
        assert entry.result is not None
        return entry.result

    def _run(self, batch: list[Queued]) -> None:
        """Commit and push ``batch`` (the writer lock is held); answer every entry."""
        store = self._store
        until = min(entry.job.until for entry in batch)
        started = min(entry.job.started for entry in batch)
        try:
            with store._host_lock(until, started):
                try:
                    self._push(batch, until)
                finally:
                    self._turns.lower_hand()
                self._give_way()
        except BaseException as ex:  # every writer gets the batch's failure
            for entry in batch:
                if not entry.done.is_set():
                    entry.answer(None, ex)
            if not isinstance(ex, Exception):
                raise

    def _give_way(self) -> None:
        """Hold this node's next push back while another node's hand is up (host lock held).

        The batch is answered already. Until every other node that kept
        losing has landed its batch and lowered its hand, or
        :data:`~gitstate.store.turns.GIVE_WAY` seconds pass, this node
        fetches every few milliseconds instead of pushing; the fetches also
        bring the waiting nodes' commits, which the next batch builds on.
        (Ending the wait when the tip moved let a third node, itself just
        past its turn, push first again: five writes of 3 nodes failed.)
        """
        store = self._store
        until = time.monotonic() + GIVE_WAY
        while self._others_waiting() and time.monotonic() < until:
            time.sleep(FETCH_EVERY)
            try:
                store.refresh()
            except (SharedUnreachable, BranchRewound):
                return  # the next write meets it and says so

    def _others_waiting(self) -> bool:
        with self._store._mutex:
            return self._turns.others_waiting(self._store._repo)

    def _push(self, batch: list[Queued], until: float) -> None:
        """Run the batch and push it until the git server takes it (host lock held)."""
        from gitstate.store.branch import StoreBusy

        store = self._store
        upstream = store.upstream
        assert upstream is not None
        retry = False
        refused = 0
        while True:
            if retry:
                # Under the host lock no push from this host is under way,
                # so a git server behind this copy went back.
                store.refresh(exact=True)
            # PERF: the first attempt runs on this copy as it stands (the
            # follower keeps it within a second of the git server, and this
            # node's own writes land on it at once) instead of fetching
            # first: a push with a lease on a tip that moved is refused
            # before any object is sent, and only then does the batch fetch
            # and run again. A fetch is a round trip to the git server of its
            # own (12 ms against git daemon on loopback, beside 60 ms for the
            # push) that an uncontended write does not need.
            with store._mutex:
                base = store._snapshot_of(store._lookup_ref())
            try:
                answers, tip = self._commit_all(batch, base)
            except (pygit2.GitError, OSError) as ex:
                # As on a single server: maintenance may remove an empty
                # objects/xx folder under a write; writing again is harmless.
                log.warning("writing state objects failed (%s); retrying", ex)
                if time.monotonic() >= until:
                    reason = f"objects not written: {ex}"
                    raise StoreBusy(store.ref, store.deadline, 1, reason) from ex
                time.sleep(0.005)
                continue
            if not retry and any(result is None or result.commit is None for result, _ in answers):
                # An answer that commits nothing (a refusal, a denied
                # test-and-set, an error) may rest on what this copy has not
                # fetched yet; it is given on the git server's tip.
                retry = True
                continue
            if tip is base:
                break  # nothing to push: every answer stands on the tip
            # No flush of this copy before the push (state.fsync): an
            # acknowledged write is on the git server, whose receive-pack
            # makes it durable there; a copy that loses it fetches it back.
            if upstream.push(str(tip._commit_id), base.commit):
                store._fast_forward(str(tip._commit_id))
                store._seen.record(str(tip._commit_id))
                store._make_latest(base, tip)
                break
            for entry in batch:
                entry.tally.conflicts += 1
            refused += 1
            if refused >= RAISE_AFTER:
                self._turns.raise_hand(base.commit or str(tip._commit_id))
            if time.monotonic() >= until:
                raise StoreBusy(store.ref, store.deadline, 1, "the git server's ref kept moving")
            retry = True
        for entry, (result, error) in zip(batch, answers, strict=True):
            if result is not None and result.commit is not None:
                entry.tally.committed = True
            entry.answer(result, error)

    def _commit_all(
        self, batch: list[Queued], base: Snapshot
    ) -> tuple[list[tuple[Committed[Any] | None, BaseException | None]], Snapshot]:
        """Run each change on the commit before it; return the answers and the last snapshot."""
        from gitstate.store.branch import Committed, Draft

        store = self._store
        current = base
        answers: list[tuple[Committed[Any] | None, BaseException | None]] = []
        for entry in batch:
            job = entry.job
            draft: Draft = Draft(current, job.subject)
            try:
                value = job.change(draft)
            except Exception as ex:  # the writer's own answer
                answers.append((None, ex))
                continue
            with store._mutex:
                blobs = store._write_blobs(draft.changes)
                written = store._write_commit(current, draft, job, blobs) if blobs else None
            if written is None:
                answers.append((Committed(value, None, current, entry.tally.runs), None))
                continue
            delta = {path: oid for path, (oid, _) in blobs.items()}
            current = store._successor(current, delta, written)
            answers.append((Committed(value, str(written[0]), current, entry.tally.runs), None))
        return answers, current
