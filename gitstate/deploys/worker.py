"""Deploy workers: claim queued deploys, run the engine, record the outcome.

``gitstate serve`` runs ``deploy.pool_size`` of these as separate processes
(see :mod:`gitstate.process.supervisor`). Each holds an ``flock`` on its slot file
``DATADIR/locks/deploy-worker-<slot>.lock`` for as long as it lives, so any
worker can tell whether the worker named in a ``deploying`` record is still
alive: if that slot's lock can be taken, its holder died (killed, OOM,
machine restart) and the deploy is queued again once, then failed.

An idle worker sleeps until the state branch moves (inotify, see
:mod:`gitstate.store.tipwatch`), so a queued deploy is picked up at once; it also
looks again every ``deploy.poll_interval`` for deploys a gate held back (a
time rule opens a gate without any commit).

**Batches.** Each claim and each outcome is a commit, and with ``fsync`` a
commit costs milliseconds, about what a deploy that changes nothing costs.
So a worker claims several deploys at once when its recent deploys were
quick: as many as fit in :data:`BATCH_SECONDS` at its recent pace, and no
more than its share of the queue (so every worker gets work); one slow
deploy brings the batch back to one. The batch shares one collection (one
fetch of the control repositories, module remotes fetched in parallel),
and outcomes are recorded together, at the latest :data:`BATCH_SECONDS`
after the first of them is known.

A deploy that outlives ``timeouts.deploy`` is recorded as failed with the
``timeout`` kind, the rest of its batch is queued again, and the worker
process exits, taking the stuck engine call with it; the supervisor starts
a fresh worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gitstate.base import metrics
from gitstate.deploys.guard import DeployGuard
from gitstate.deploys.queue import (
    COLLECT_FAILED,
    DEPLOY_FAILURE,
    TIMEOUT,
    DeployQueue,
    Outcome,
    parse_iso,
    worker_name,
    worker_node,
)
from gitstate.engine.environments import CollectFailed, Collection, Deployer, DeployFailure
from gitstate.errors import GitStateError
from gitstate.gates.records import GATES_DIR, HOLIDAYS_PATH
from gitstate.store.branch import Draft
from gitstate.store.tipwatch import TipWatch

log = logging.getLogger(__name__)

#: How long a batch of deploys should take at the worker's recent pace, and
#: the longest an outcome waits to be recorded with the others (seconds).
BATCH_SECONDS = 0.25
#: Most deploys one claim takes.
MAX_BATCH = 64
#: Seconds between looks for deploys of dead workers while idle.
RECOVER_EVERY = 10.0
#: Held (``flock``) by the worker claiming deploys right now, in DATADIR/locks.
CLAIM_LOCK = "deploy-claim.lock"
#: The parts of the state branch a worker's work depends on: the queue's
#: records, and, while queued deploys wait on their gates, the gates and
#: holidays.
_INTEREST = ("deploys",)
_GATE_INTEREST = (GATES_DIR, HOLIDAYS_PATH)


@contextlib.contextmanager
def _try_flock(path: Path) -> Iterator[bool]:
    """Hold ``path``'s flock if it is free; yield whether it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
        else:
            yield True
    finally:
        os.close(fd)


def slot_lock_path(lockdir: Path, slot: int) -> Path:
    """Return the lock file a worker in ``slot`` holds while alive."""
    return lockdir / f"deploy-worker-{slot}.lock"


@contextlib.contextmanager
def hold_slot(lockdir: Path, slot: int) -> Iterator[int]:
    """Hold the slot's lock; waits while a previous holder is still exiting."""
    lockdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(slot_lock_path(lockdir, slot), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def slot_is_dead(lockdir: Path, slot: int) -> bool:
    """Tell whether nobody holds the lock of ``slot`` (its worker is gone)."""
    path = slot_lock_path(lockdir, slot)
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def worker_slot(worker: str) -> int | None:
    """Return the slot number in a worker name (``deploy-worker-<slot>@...``)."""
    head = worker.split("@", 1)[0]
    number = head.rsplit("-", 1)[-1]
    return int(number) if number.isdigit() else None


class Pace:
    """The seconds per deploy of the worker's last batch.

    The last batch, not a long average: a deploy-all that changes nothing
    follows a cold one, and a worker should notice within one batch.
    """

    def __init__(self, initial: float = BATCH_SECONDS) -> None:
        self.seconds = initial

    def observe(self, deploys: int, seconds: float) -> None:
        """Account for a batch of ``deploys`` that took ``seconds``."""
        if deploys > 0:
            self.seconds = seconds / deploys

    def batch(self, claimable: int, workers: int) -> int:
        """Return how many deploys to claim.

        All of them when they fit in :data:`BATCH_SECONDS` at this pace
        (one worker, two commits: deploys that change nothing are quicker
        than the commits other workers would add); otherwise what fits,
        at most a fair share of the queue, so every worker gets some.
        """
        fits = int(BATCH_SECONDS / max(self.seconds, 1e-6))
        if claimable > fits:
            fits = min(fits, math.ceil(claimable / max(1, workers)))
        return max(1, min(fits, MAX_BATCH))


class DeployWorker:
    """One deploy worker: a loop of claim → deploy → finish."""

    def __init__(
        self,
        queue: DeployQueue,
        engine: Deployer,
        slot: int,
        lockdir: Path,
        guard: DeployGuard | None = None,
        *,
        node: str | None = None,
    ) -> None:
        self.queue = queue
        self.engine = engine
        self.slot = slot
        self.lockdir = lockdir
        self.guard = guard
        #: The server this worker runs on when several share the state
        #: branch; their workers are theirs to recover (docs/cluster.md).
        self.node = node
        self.name = worker_name(slot, self.node)
        self.pace = Pace()
        self._stop = threading.Event()
        # One long-lived thread runs the engine: its repository handles are
        # per thread, and opening every mirror again for each deploy cost
        # more than a deploy that changes nothing. The worker's own thread
        # waits on it with the deploy timeout.
        self._engine_thread = ThreadPoolExecutor(1, thread_name_prefix=f"deploy-{slot}")

    # -- gates, inside the queue's commits ---------------------------------------------

    def _take_gate(self, draft: Draft, environment: str, deploy_id: int) -> str | None:
        if self.guard is None:
            return None
        return self.guard.take_on(
            draft, environment, actor=self.name, link=f"gitstate deploy #{deploy_id}"
        )

    def _release_gate(self, draft: Draft, ticket: str) -> None:
        if self.guard is not None:
            self.guard.release_on(draft, ticket, actor=self.name)

    # -- the loop ----------------------------------------------------------------------

    def recover(self) -> list[int]:
        """Requeue (or fail) deploys whose workers died; return their ids."""
        recovered = []
        for entry in self.queue.active():
            if entry.get("status") != "deploying":
                continue
            worker = str(entry.get("worker", ""))
            if worker == self.name:
                continue
            if self.node is not None and worker_node(worker) != self.node:
                # Another server's worker: its slot locks are on that host.
                # That server recovers it when it starts again; one gone for
                # good has overrun the deploy timeout long since.
                if not self._overdue(entry):
                    continue
            else:
                slot = worker_slot(worker)
                mine = slot == self.slot  # a previous process of this slot
                if not (mine or slot is None or slot_is_dead(self.lockdir, slot)):
                    continue
            if self.queue.recover(entry["id"], self.name, release=self._release_gate):
                log.warning(
                    "deploy #%s of %s: its worker %s stopped",
                    entry["id"],
                    entry["environment"],
                    worker,
                )
                recovered.append(entry["id"])
        return recovered

    def _overdue(self, entry: dict[str, Any]) -> bool:
        """Tell whether a deploy has run for twice the deploy timeout (its worker is gone)."""
        started = entry.get("started_at")
        if not started:
            return False
        limit = 2 * self.queue.settings.timeouts.deploy
        return time.time() - parse_iso(str(started)).timestamp() > limit

    def run_once(self) -> bool:
        """Claim a batch of queued deploys and run it; return whether there was one.

        Environments whose gate is closed are skipped (their deploys wait,
        with the reason in the status); each deploy holds a ticket on its
        gate while it runs.
        """
        claimable = self.queue.claimable()
        if not claimable:
            return False
        limit = self.pace.batch(claimable, self.queue.settings.pool_size)
        with _try_flock(self.lockdir / CLAIM_LOCK) as mine:
            if not mine:
                # Another worker is claiming: its commit wakes this one, which
                # then claims what is left, instead of both preparing claims
                # of the same deploys and one redoing its work.
                return False
            batch = self.queue.claim(self.name, limit=limit, gate=self._take_gate)
        if not batch:
            return False
        self._run_batch(batch)
        return True

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set; sleep until the state branch moves when idle."""
        self._stop = stop
        watch = TipWatch.of(Path(self.queue.store.path))
        recovered = self.recover()
        log.info(
            "deploy worker %s ready (recovered %s)",
            self.name,
            ", ".join(f"#{deploy_id}" for deploy_id in recovered) or "nothing",
        )
        last_recover = time.monotonic()
        store = self.queue.store
        # What the last look for work saw of the parts of the branch that
        # decide it; a commit elsewhere (gates of other groups, tickets of
        # pipelines, tokens: nearly every commit under gate traffic) is
        # not a reason to look again.
        looked: tuple[str | None, ...] | None = None
        waiting_on_gates = False
        while not stop.is_set():
            head = store.head()
            interest = store.ids(_INTEREST + (_GATE_INTEREST if waiting_on_gates else ()))
            try:
                if interest != looked:
                    if self.run_once():
                        looked = None
                        continue
                    looked = interest
                    # Queued deploys that none could claim wait on their
                    # gates (or on another worker's claim, whose commit
                    # changes deploys/ anyway): a gate commit may free them.
                    blocked = self.queue.claimable() > 0
                    if blocked != waiting_on_gates:
                        waiting_on_gates, looked = blocked, None
                if time.monotonic() - last_recover > RECOVER_EVERY:
                    self.recover()
                    last_recover = time.monotonic()
            except GitStateError as ex:
                log.error("deploy worker %s: %s", self.name, ex)
                looked = None
                stop.wait(self.queue.settings.poll_interval)
                continue
            moved = watch.wait(
                lambda head=head: store.head() != head,
                self.queue.settings.poll_interval,
                stop=stop,
            )
            if not moved:
                looked = None  # a poll: time rules and ticket expiry move without commits

    # -- running a batch -------------------------------------------------------------

    def _collection(self, batch: list[dict[str, Any]]) -> Collection | Exception:
        """Collect once for the batch, fresh enough for its newest request."""
        stamps = [
            parse_iso(stamp).timestamp()
            for record in batch
            if (stamp := record.get("requested_at") or record.get("queued_at"))
        ]
        try:
            collection = self.engine.collect(fresh_after=max(stamps) if stamps else None)
        except CollectFailed as ex:
            return ex
        with contextlib.suppress(GitStateError, OSError):
            self.engine.prefetch(collection, [record["environment"] for record in batch])
        return collection

    def _run_batch(self, batch: list[dict[str, Any]]) -> None:
        collection = self._collection(batch)
        # The pace is the deploys' own: fetches are shared by the batch.
        began = time.monotonic()
        outcomes: list[Outcome] = []
        ran = 0
        first_known: float | None = None
        for index, record in enumerate(batch):
            if self._stop.is_set():
                why = "its worker stopped before starting it"
                outcomes += [Outcome(rest["id"], requeue=why) for rest in batch[index:]]
                break
            started = time.monotonic()
            outcome, timed_out = self._run_one(record, collection)
            took = time.monotonic() - started
            metrics.deploy_finished("failed" if outcome.error else "complete", took)
            _report(record, outcome)
            outcomes.append(outcome)
            ran += 1
            if timed_out:
                why = f"deploy #{record['id']} before it in its worker's batch timed out"
                outcomes += [Outcome(rest["id"], requeue=why) for rest in batch[index + 1 :]]
                self.queue.finish(outcomes, self.name, release=self._release_gate)
                log.error("deploy #%s timed out; restarting worker", record["id"])
                os._exit(3)
            rest = batch[index + 1 :]
            if rest and time.monotonic() - began > 2 * BATCH_SECONDS:
                # Slower than the pace promised (the last batch changed
                # nothing, this one changes everything): give the rest
                # back so idle workers share it.
                why = "its worker's batch ran slower than its pace; given back to share"
                outcomes += [Outcome(later["id"], requeue=why) for later in rest]
                break
            first_known = first_known or time.monotonic()
            if rest and time.monotonic() - first_known >= BATCH_SECONDS:
                self.queue.finish(outcomes, self.name, release=self._release_gate)
                outcomes, first_known = [], None
        if not isinstance(collection, Exception):
            # r10k purges deleted branches' environments on every deploy;
            # before the outcomes, so a waiting request sees them gone.
            with contextlib.suppress(GitStateError, OSError):
                self.engine.purge(collection)
        self.queue.finish(outcomes, self.name, release=self._release_gate)
        self.pace.observe(ran, time.monotonic() - began)

    def _run_one(
        self, record: dict[str, Any], collection: Collection | Exception
    ) -> tuple[Outcome, bool]:
        """Deploy one environment under the deploy timeout.

        Returns its outcome and whether it timed out.
        """
        deploy_id = record["id"]
        if isinstance(collection, CollectFailed):
            # As a deploy that collected by itself reports it: a deploy failure.
            name = record.get("requested_as") or record["environment"]
            failure = DeployFailure(name, record["environment"], collection.details)
            return Outcome(deploy_id, **_outcome(record, {"error": failure})), False
        if isinstance(collection, Exception):
            return Outcome(deploy_id, **_outcome(record, {"error": collection})), False
        found: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                found["result"] = self._deploy(record, collection)
            except BaseException as ex:
                found["error"] = ex
            finally:
                done.set()

        self._engine_thread.submit(work)
        limit = self.queue.settings.timeouts.deploy
        if not done.wait(limit):
            error = {
                "kind": TIMEOUT,
                "msg": (
                    f"deploy of {record['environment']} took longer than {limit:g}s and was stopped"
                ),
                "details": {"timeout": limit},
            }
            return Outcome(deploy_id, error=error), True
        return Outcome(deploy_id, **_outcome(record, found)), False

    def _deploy(self, record: dict[str, Any], collection: Collection) -> dict[str, Any]:
        result = self.engine.deploy(
            record.get("requested_as") or record["environment"],
            collection=collection,
            deploy_modules=bool(record.get("deploy_modules", True)),
            purge=False,
        )
        # Where the environment came from, for people reading what is deployed.
        origin = collection.environments.get(record["environment"])
        return {
            "signature": result.signature,
            "environment_commit": result.environment_commit,
            "code_commit": result.code_commit,
            "skipped": result.skipped,
            "module_deploys": [module.to_json() for module in result.module_deploys],
            **({"source": origin.source, "branch": origin.branch} if origin else {}),
        }


def _report(record: dict[str, Any], outcome: Outcome) -> None:
    """Log how a deploy ended, in one line meant for a person (``notable``)."""
    name = record.get("requested_as") or record["environment"]
    if outcome.error is not None:
        log.error(
            "deploy #%s of %s failed: %s",
            record["id"],
            name,
            outcome.error.get("msg"),
            extra={"notable": True},
        )
    elif outcome.result is not None:
        signature = str(outcome.result.get("signature") or "")[:12]
        unchanged = ", unchanged" if outcome.result.get("skipped") else ""
        log.info(
            "deployed %s at %s (#%s%s)",
            name,
            signature,
            record["id"],
            unchanged,
            extra={"notable": True},
        )


def _outcome(record: dict[str, Any], found: dict[str, Any]) -> dict[str, Any]:
    """Turn what the engine did into :class:`Outcome` fields (result or error)."""
    error = found.get("error")
    if error is None:
        return {"result": found["result"]}
    if isinstance(error, DeployFailure):
        return {
            "error": {
                "kind": DEPLOY_FAILURE,
                "msg": error.message,
                "details": {"corrected-env-name": error.corrected_name},
            }
        }
    if isinstance(error, CollectFailed):
        return {
            "error": {
                "kind": COLLECT_FAILED,
                "msg": "Errors while collecting a list of environments to deploy",
                "details": error.details,
            }
        }
    log.error("deploy #%s failed unexpectedly", record["id"], exc_info=error)
    return {
        "error": {
            "kind": DEPLOY_FAILURE,
            "msg": f"Errors while deploying environment '{record['environment']}': {error}",
            "details": {"corrected-env-name": record["environment"]},
        }
    }
