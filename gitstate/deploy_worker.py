"""Deploy workers: claim queued deploys, run the engine, record the outcome.

``gitstate serve`` runs ``deploy.pool_size`` of these as separate processes
(see :mod:`gitstate.supervisor`). Each holds an ``flock`` on its slot file
``DATADIR/locks/deploy-worker-<slot>.lock`` for as long as it lives, so any
worker can tell whether the worker named in a ``deploying`` record is still
alive: if that slot's lock can be taken, its holder died (killed, OOM,
machine restart) and the deploy is queued again once, then failed.

A deploy that outlives ``timeouts.deploy`` is recorded as failed with the
``timeout`` kind and the worker process exits, taking the stuck engine call
with it; the supervisor starts a fresh worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gitstate import metrics
from gitstate.deploy_guard import DeployGuard, GateClosed
from gitstate.deploys import (
    COLLECT_FAILED,
    DEPLOY_FAILURE,
    TIMEOUT,
    DeployQueue,
    parse_iso,
    worker_name,
)
from gitstate.environments import CollectFailed, Deployer, DeployFailure
from gitstate.errors import GitStateError

log = logging.getLogger(__name__)


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


def _slot_of(worker: str) -> int | None:
    """Return the slot number in a worker name (``deploy-worker-<slot>@...``)."""
    head = worker.split("@", 1)[0]
    number = head.rsplit("-", 1)[-1]
    return int(number) if number.isdigit() else None


class DeployWorker:
    """One deploy worker: a loop of claim → deploy → finish."""

    def __init__(
        self,
        queue: DeployQueue,
        engine: Deployer,
        slot: int,
        lockdir: Path,
        guard: DeployGuard | None = None,
    ) -> None:
        self.queue = queue
        self.engine = engine
        self.slot = slot
        self.lockdir = lockdir
        self.guard = guard
        self.name = worker_name(slot)

    def _blocked(self, environment: str) -> str | None:
        if self.guard is None:
            return None
        closed = self.guard.blocked(environment)
        return str(closed) if closed is not None else None

    def recover(self) -> list[int]:
        """Requeue (or fail) deploys whose workers died; return their ids."""
        recovered = []
        for entry in self.queue.active():
            if entry.get("status") != "deploying":
                continue
            worker = str(entry.get("worker", ""))
            slot = _slot_of(worker)
            if worker == self.name:
                continue
            mine = slot == self.slot  # a previous process of this slot
            dead = mine or slot is None or slot_is_dead(self.lockdir, slot)
            if not dead:
                continue
            ticket = self.queue.get(entry["id"]).get("ticket")
            if self.queue.requeue_or_fail(entry["id"], self.name) is not None:
                recovered.append(entry["id"])
                if self.guard is not None:
                    self.guard.release(ticket, actor=self.name)
        return recovered

    def run_once(self) -> bool:
        """Deploy one queued environment if there is one; return whether it did.

        Environments whose gate is closed are skipped (their deploys wait,
        with the reason in the status); the deploy holds a ticket on its
        gate while it runs.
        """
        claimable = self.queue.refresh_blocked(self._blocked)
        if not claimable:
            return False
        candidate = claimable[0]
        ticket = None
        if self.guard is not None:
            try:
                ticket = self.guard.acquire(
                    candidate["environment"],
                    actor=self.name,
                    link=f"gitstate deploy #{candidate['id']}",
                )
            except GateClosed:
                return False  # closed since we looked; recorded on the next round
        record = self.queue.claim(self.name, deploy_id=candidate["id"], ticket=ticket)
        if record is None:
            if self.guard is not None:
                self.guard.release(ticket, actor=self.name)
            return False
        try:
            return self._run(record)
        finally:
            if self.guard is not None:
                self.guard.release(ticket, actor=self.name)

    def _run(self, record: dict[str, Any]) -> bool:
        deploy_id = record["id"]
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                outcome["result"] = self._deploy(record)
            except BaseException as ex:
                outcome["error"] = ex
            finally:
                done.set()

        thread = threading.Thread(target=work, name=f"deploy-{deploy_id}", daemon=True)
        started = time.monotonic()
        thread.start()
        if not done.wait(self.queue.settings.deploy_timeout):
            metrics.deploy_finished("failed", time.monotonic() - started)
            self.queue.finish(
                deploy_id,
                self.name,
                error={
                    "kind": TIMEOUT,
                    "msg": (
                        f"deploy of {record['environment']} took longer than "
                        f"{self.queue.settings.deploy_timeout:g}s and was stopped"
                    ),
                    "details": {"timeout": self.queue.settings.deploy_timeout},
                },
            )
            log.error("deploy #%s timed out; restarting worker", deploy_id)
            if self.guard is not None:
                self.guard.release(record.get("ticket"), actor=self.name)
            os._exit(3)
        self.queue.finish(deploy_id, self.name, **_outcome(record, outcome))
        metrics.deploy_finished(
            "failed" if "error" in outcome else "complete", time.monotonic() - started
        )
        return True

    def _deploy(self, record: dict[str, Any]) -> dict[str, Any]:
        # A remote fetched after the last request for this deploy already
        # holds what the request was about: deploys queued together
        # (deploy-all, a push of several branches) fetch each remote once.
        stamp = record.get("requested_at") or record.get("queued_at")
        requested_at = parse_iso(stamp).timestamp() if stamp else None
        result = self.engine.deploy(
            record.get("requested_as") or record["environment"],
            deploy_modules=bool(record.get("deploy_modules", True)),
            fresh_after=requested_at,
        )
        return {
            "signature": result.signature,
            "environment_commit": result.environment_commit,
            "code_commit": result.code_commit,
            "skipped": result.skipped,
            "module_deploys": [module.to_json() for module in result.module_deploys],
        }

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set, polling the queue when idle."""
        self.recover()
        last_recover = time.monotonic()
        while not stop.is_set():
            try:
                if self.run_once():
                    continue
                if time.monotonic() - last_recover > 10:
                    self.recover()
                    last_recover = time.monotonic()
            except GitStateError as ex:
                log.error("deploy worker %s: %s", self.name, ex)
            stop.wait(self.queue.settings.poll_interval)


def _outcome(record: dict[str, Any], outcome: dict[str, Any]) -> dict[str, Any]:
    """Turn what the engine did into ``finish`` arguments (result or error)."""
    error = outcome.get("error")
    if error is None:
        return {"result": outcome["result"]}
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
    log.exception("deploy #%s failed unexpectedly", record["id"], exc_info=error)
    return {
        "error": {
            "kind": DEPLOY_FAILURE,
            "msg": f"Errors while deploying environment '{record['environment']}': {error}",
            "details": {"corrected-env-name": record["environment"]},
        }
    }
