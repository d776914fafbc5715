"""The deploy queue, kept in the state branch, one small record per entry.

A deploy request becomes a record ``deploys/<bucket>/<id>.yaml`` with an
increasing id and moves ``queued`` → ``deploying`` → ``complete`` | ``failed``;
each move is a commit, so ``git log -- deploys/`` is the deploy history.
Where a deploy stands is also told by *where* a small record of it lives,
so that every move touches a constant number of records however long the
queue is:

``deploys/queued/<id>.yaml``
    one per queued deploy (``<id>`` zero-padded, so the directory lists in
    queue order); empty but for why, when a gate holds the deploy back. A
    request for an environment that already has a queued deploy joins it
    (same id).
``deploys/running/<env>.yaml``
    the deploy of ``<env>`` that a worker is running. The path is the
    environment, so two deploys of one environment can never run at once:
    a worker claims only environments without this record.
``deploys/failed/<id>.yaml``
    failed deploys younger than ``deploy_ttl``, for the status list.
``environments/<env>.yaml``
    the last good deploy of each environment (signature, commits, source
    and branch), written in the commit that finishes it.

A worker claims several deploys in one commit when deploys are quick (a
no-op deploy costs milliseconds, a commit with fsync several), takes each
environment's gate ticket in that same commit, and records several outcomes
(and gives the tickets back) in one commit; see
:class:`gitstate.deploys.worker.DeployWorker` for how it sizes a batch.

This module knows nothing of git trees or HTTP: workers call the deploy
engine (:class:`gitstate.engine.environments.Deployer`) and record what it did here.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gitstate.base.blocking import Blocking
from gitstate.base.times import now_iso, parse_iso
from gitstate.errors import BAD_REQUEST, KIND_PREFIX, NOT_FOUND, GitStateError
from gitstate.settings import DeploySettings
from gitstate.store.branch import Draft, Identity, Snapshot, Store
from gitstate.store.tipwatch import TipWatch

SCHEMA_VERSION = 1
#: Every deploy record is under this directory.
DEPLOYS = "deploys"
COUNTER = "deploys/counter.yaml"
QUEUED = "deploys/queued"
RUNNING = "deploys/running"
FAILED = "deploys/failed"
#: Where queue version 1 kept every unfinished / finished deploy in one file.
LEGACY_ACTIVE = "deploys/active.yaml"
LEGACY_FINISHED = "deploys/finished.yaml"
_BUCKET = 256
#: What ``deploys/queued/<id>.yaml`` holds unless a gate holds the deploy
#: back: the same bytes for every queued deploy, so queueing a thousand
#: deploys writes one blob for the queue, not a thousand (the environment
#: and times are in the deploy's record).
QUEUED_ENTRY: Mapping[str, Any] = {"schema_version": SCHEMA_VERSION}
#: A deploy whose worker died this many times is failed instead of queued again.
MAX_INTERRUPTIONS = 2

DEPLOY_FAILURE = KIND_PREFIX + "deploy-failure"
COLLECT_FAILED = KIND_PREFIX + "collect-failed"
TIMEOUT = KIND_PREFIX + "timeout"
INTERRUPTED = KIND_PREFIX + "deploy-interrupted"
FINAL = ("complete", "failed")


class DeployRequestError(GitStateError, ValueError):
    """A deploy request is malformed (Code Manager's ``bad-request``)."""

    status = 400
    kind = BAD_REQUEST

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class DeployNotFound(GitStateError, LookupError):
    """No deploy has the id asked for."""

    status = 404
    kind = NOT_FOUND
    public_fields = (("id", "deploy_id"),)

    def __init__(self, deploy_id: int) -> None:
        self.deploy_id = deploy_id
        super().__init__(f"no deploy with id {deploy_id}")


class Held(GitStateError):
    """A queued deploy may not run now; raised by a claim's gate check.

    Attributes:
        reason: why, as the status shows it (``waiting-for``).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def record_path(deploy_id: int) -> str:
    """Return where the record of deploy ``deploy_id`` lives."""
    return f"deploys/{deploy_id // _BUCKET:05d}/{deploy_id}.yaml"


def queued_path(deploy_id: int) -> str:
    """Return where a queued deploy waits (ids padded: names sort in queue order)."""
    return f"{QUEUED}/{deploy_id:010d}.yaml"


def running_path(environment: str) -> str:
    """Return the record of the deploy running for ``environment``."""
    return f"{RUNNING}/{environment}.yaml"


def failed_path(deploy_id: int) -> str:
    """Return where a recently failed deploy is listed."""
    return f"{FAILED}/{deploy_id:010d}.yaml"


def environment_path(environment: str) -> str:
    """Return where the summary of one environment's last deploy lives."""
    return f"environments/{environment}.yaml"


@dataclasses.dataclass(frozen=True)
class Requested:
    """One environment of a deploy request, as the queue answered it."""

    environment: str
    deploy_id: int
    status: str
    joined: bool

    def to_json(self) -> dict[str, Any]:
        """Return Code Manager's entry for a request without ``wait``."""
        return {"environment": self.environment, "id": self.deploy_id, "status": self.status}


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of one claimed deploy, as :meth:`DeployQueue.finish` records it.

    Exactly one of ``result`` (it completed), ``error`` (it failed) or
    ``requeue`` (it was never started, and why: the commit's subject says
    so) is set.
    """

    deploy_id: int
    result: Mapping[str, Any] | None = None
    error: Mapping[str, Any] | None = None
    requeue: str = ""


#: A claim's gate check: ``(draft, environment, deploy id)`` → the ticket
#: taken (None when the environment is not guarded); raises :class:`Held`.
GateCheck = Callable[[Draft, str, int], str | None]
#: Gives a finished deploy's ticket back inside the finishing commit.
GateRelease = Callable[[Draft, str], None]


class DeployQueue:
    """Queue, claim and finish deploys; every change a commit on the state branch."""

    def __init__(
        self,
        store: Store,
        settings: DeploySettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings or DeploySettings()
        self.clock = clock

    # -- requests ------------------------------------------------------------------

    def request(
        self,
        environments: Sequence[tuple[str, str]],
        *,
        actor: str,
        request_id: str | None = None,
        deploy_modules: bool = True,
        reason: str = "requested",
        requested_at: float | None = None,
        pushed_by: str | None = None,
    ) -> list[Requested]:
        """Queue a deploy of each ``(requested name, corrected name)``, in one commit.

        The requested name is what the user asked for and what Code Manager
        reports back; the corrected name is the environment deployed. A
        request for an environment that already has a queued deploy joins it.
        ``requested_at`` (default: now) is the moment the request's view of
        the remotes starts: mirrors fetched since then are not fetched again.
        ``pushed_by`` (a webhook's pusher, as the git host names them) is
        kept in the deploy record and the commit (subject and a
        ``Pushed-By:`` trailer); the actor stays who asked (``webhook:<type>``).
        """
        if not environments:
            return []
        by = f", pushed by {pushed_by}" if pushed_by else ""

        def change(draft: Draft) -> list[Requested]:
            _migrate(draft)
            waiting = _queued_by_environment(draft)
            counter = draft.get(COUNTER) or {"schema_version": SCHEMA_VERSION, "next_id": 1}
            answers: list[Requested] = []
            stamp = now_iso(self.clock)
            asked = now_iso(lambda: requested_at) if requested_at is not None else stamp
            for requested, corrected in environments:
                joined = waiting.get(corrected)
                if joined is not None:
                    record = draft.get(record_path(joined)) or {}
                    if deploy_modules:
                        record["deploy_modules"] = True
                    # The newest request decides how fresh the fetch must be.
                    record["requested_at"] = max(str(record.get("requested_at", "")), asked)
                    draft.put(record_path(joined), record)
                    answers.append(Requested(requested, joined, "queued", True))
                    continue
                deploy_id = int(counter["next_id"])
                counter["next_id"] = deploy_id + 1
                draft.put(
                    record_path(deploy_id),
                    {
                        "schema_version": SCHEMA_VERSION,
                        "id": deploy_id,
                        "environment": corrected,
                        "requested_as": requested,
                        "status": "queued",
                        "queued_at": stamp,
                        "requested_at": asked,
                        "requested_by": actor,
                        "reason": reason,
                        "deploy_modules": deploy_modules,
                        "attempts": 0,
                        **({"pushed_by": pushed_by} if pushed_by else {}),
                    },
                )
                draft.put(queued_path(deploy_id), QUEUED_ENTRY)
                waiting[corrected] = deploy_id
                answers.append(Requested(requested, deploy_id, "queued", False))
            draft.put(COUNTER, counter)
            new = [a for a in answers if not a.joined]
            names = _names({a.environment for a in answers})
            if new:
                ids = _ids(a.deploy_id for a in new)
                draft.subject = f"{actor} queued deploy of {names} ({ids}){by}"
            else:
                draft.subject = f"{actor} asked again to deploy {names}{by}"
            return answers

        notes = (("Pushed-By", pushed_by),) if pushed_by else ()
        done = self.store.transact(
            change,
            subject=f"{actor} queued deploys",
            operation="deploy.request",
            identity=Identity(actor, request_id, notes),
        )
        return done.value

    # -- reads ---------------------------------------------------------------------

    def get(self, deploy_id: int, at: str | None = None) -> dict[str, Any]:
        """Return one deploy record.

        Raises:
            DeployNotFound: there is no such deploy.
        """
        snapshot = self.store.at(at) if at else self.store.snapshot()
        record = snapshot.get(record_path(deploy_id))
        if record is None:
            raise DeployNotFound(deploy_id)
        return record

    def records(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """Return the records of ``ids`` that exist, from one snapshot."""
        snapshot = self.store.snapshot()
        found = (snapshot.get(record_path(deploy_id)) for deploy_id in ids)
        return [record for record in found if record is not None]

    def active(self) -> list[dict[str, Any]]:
        """Return every unfinished deploy (queued or deploying), oldest first.

        Each entry has ``id``, ``environment``, ``requested_as``, ``status``,
        ``queued_at`` and, when a gate holds it back, ``blocked``.
        """
        snapshot = self.store.snapshot()
        entries = []
        for deploy_id in _queued_ids(snapshot):
            record = snapshot.get(record_path(deploy_id))
            if record is None:
                continue
            entry = {
                key: record[key]
                for key in ("id", "environment", "requested_as", "queued_at")
                if key in record
            }
            blocked = (snapshot.get(queued_path(deploy_id)) or {}).get("blocked")
            if blocked:
                entry["blocked"] = blocked
            entries.append({**entry, "status": "queued"})
        for name in snapshot.names(RUNNING):
            entry = snapshot.get(f"{RUNNING}/{name}")
            if entry is not None:
                entries.append({**entry, "status": "deploying"})
        entries.extend(_legacy_active(snapshot.get(LEGACY_ACTIVE)))
        for entry in entries:
            entry.pop("schema_version", None)
        return sorted(entries, key=lambda entry: entry["id"])

    def running(self, environment: str) -> dict[str, Any] | None:
        """Return the deploy running for ``environment`` now, if any."""
        return self.store.snapshot().get(running_path(environment))

    def finished(self) -> list[dict[str, Any]]:
        """Return failed deploys younger than ``deploy_ttl``, newest first."""
        snapshot = self.store.snapshot()
        horizon = self._horizon()
        entries = []
        for name in snapshot.names(FAILED):
            entry = snapshot.get(f"{FAILED}/{name}")
            if entry is not None and parse_iso(entry["finished_at"]) >= horizon:
                entry.pop("schema_version", None)
                entries.append({**entry, "status": "failed"})
        return sorted(entries, key=lambda entry: entry["id"], reverse=True)

    def deployed(self) -> dict[str, dict[str, Any]]:
        """Return each environment's last good deploy summary."""
        snapshot = self.store.snapshot()
        summaries = {}
        for name in snapshot.names("environments"):
            record = snapshot.get(f"environments/{name}")
            if record is not None:
                summaries[name.removesuffix(".yaml")] = record
        return summaries

    def _horizon(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC) - timedelta(
            seconds=self.settings.deploy_ttl
        )

    # -- workers -------------------------------------------------------------------

    def claimable(self) -> int:
        """Count queued deploys whose environment is not being deployed (a cheap read)."""
        snapshot = self.store.snapshot()
        running = {name.removesuffix(".yaml") for name in snapshot.names(RUNNING)}
        count = 0
        for deploy_id in _queued_ids(snapshot):
            record = snapshot.get(record_path(deploy_id))
            if record is not None and record["environment"] not in running:
                count += 1
        if snapshot.get(LEGACY_ACTIVE) is not None:
            count += 1  # the first claim moves the old index over
        return count

    def claim(
        self, worker: str, *, limit: int = 1, gate: GateCheck | None = None
    ) -> list[dict[str, Any]]:
        """Mark up to ``limit`` queued deploys ``deploying`` for ``worker``, in one commit.

        Queued deploys are taken in queue order, skipping environments that
        are being deployed. ``gate`` is asked about each candidate inside the
        transaction: it returns the gate ticket it took (kept in the record)
        or raises :class:`Held`, and the deploy waits, its reason recorded
        (only when it changes, so a deploy waiting hours costs two commits).

        Returns the claimed records (empty when there is no such work).
        """
        if limit < 1 or not self.claimable():
            return []

        def change(draft: Draft) -> list[dict[str, Any]]:
            _migrate(draft)
            running = {name.removesuffix(".yaml") for name in draft.names(RUNNING)}
            claimed: list[dict[str, Any]] = []
            waits: list[str] = []
            stamp = now_iso(self.clock)
            for deploy_id in _queued_ids(draft):
                if len(claimed) >= limit:
                    break
                record = draft.get(record_path(deploy_id))
                if record is None or record.get("status") != "queued":
                    draft.delete(queued_path(deploy_id))  # index and record disagree
                    continue
                environment = record["environment"]
                if environment in running:
                    continue
                try:
                    ticket = gate(draft, environment, deploy_id) if gate is not None else None
                except Held as held:
                    entry = draft.get(queued_path(deploy_id)) or dict(QUEUED_ENTRY)
                    if entry.get("blocked") != held.reason:
                        entry["blocked"] = held.reason
                        draft.put(queued_path(deploy_id), entry)
                        waits.append(f"#{deploy_id} of {environment} waits: {held.reason}")
                    continue
                record.update(
                    status="deploying",
                    started_at=stamp,
                    worker=worker,
                    attempts=int(record.get("attempts", 0)) + 1,
                )
                record.pop("ticket", None)
                if ticket is not None:
                    record["ticket"] = ticket
                draft.put(record_path(deploy_id), record)
                draft.delete(queued_path(deploy_id))
                draft.put(
                    running_path(environment),
                    {
                        "schema_version": SCHEMA_VERSION,
                        "id": deploy_id,
                        "environment": environment,
                        "requested_as": record.get("requested_as", environment),
                        "queued_at": record.get("queued_at"),
                        "worker": worker,
                        "started_at": stamp,
                        **({"ticket": ticket} if ticket is not None else {}),
                    },
                )
                running.add(environment)
                claimed.append(record)
            if claimed:
                names = _names(record["environment"] for record in claimed)
                ids = _ids(record["id"] for record in claimed)
                draft.subject = f"{worker} started deploying {names} ({ids})"
                if waits:
                    draft.body = "\n".join(waits)
            elif waits:
                draft.subject = "deploy " + "; ".join(waits)
            return claimed

        return self.store.transact(
            change,
            subject=f"{worker} claims deploys",
            operation="deploy.start",
            identity=Identity(worker),
        ).value

    def finish(
        self,
        outcomes: Sequence[Outcome],
        worker: str,
        *,
        release: GateRelease | None = None,
    ) -> list[dict[str, Any]]:
        """Record what became of deploys ``worker`` claimed, in one commit.

        A deploy that is no longer ``worker``'s (another worker queued it
        again, believing this one dead) is left alone: it is recorded by
        whoever runs it now, so it is never finished twice. ``release``
        gives each deploy's gate ticket back in the same commit.

        Returns the records written.
        """
        if not outcomes:
            return []

        def change(draft: Draft) -> list[dict[str, Any]]:
            _migrate(draft)
            stamp = now_iso(self.clock)
            written = []
            lines = []
            for outcome in outcomes:
                record = draft.get(record_path(outcome.deploy_id))
                if (
                    record is None
                    or record.get("status") != "deploying"
                    or record.get("worker") != worker
                ):
                    continue
                environment = record["environment"]
                running = draft.get(running_path(environment))
                if running is not None and running.get("id") == outcome.deploy_id:
                    draft.delete(running_path(environment))
                ticket = record.pop("ticket", None)
                if ticket and release is not None:
                    release(draft, str(ticket))
                if outcome.requeue:
                    line = self._requeue(draft, record, outcome.requeue)
                elif outcome.error is None:
                    line = self._complete(draft, record, dict(outcome.result or {}), stamp)
                else:
                    line = self._fail(draft, record, dict(outcome.error), stamp)
                draft.put(record_path(outcome.deploy_id), record)
                written.append(record)
                lines.append(line)
            if any(record["status"] == "failed" for record in written):
                self._expire_failed(draft)
            if len(lines) == 1:
                draft.subject = lines[0]
            elif lines:
                draft.subject = f"{len(lines)} deploys finished: " + "; ".join(
                    line.removeprefix("deploy ") for line in lines
                )
                draft.body = "\n".join(lines)
            return written

        return self.store.transact(
            change,
            subject=f"{worker} finished deploys",
            operation="deploy.finish",
            identity=Identity(worker),
        ).value

    def _complete(
        self, draft: Draft, record: dict[str, Any], result: dict[str, Any], stamp: str
    ) -> str:
        deploy_id, environment = record["id"], record["environment"]
        record.update(status="complete", finished_at=stamp, **result)
        summary = draft.get(environment_path(environment))
        if not (result.get("skipped") and _same_version(summary, result)):
            # A deploy that changed nothing leaves the summary of the one
            # that put this version in storage (its time is when it landed).
            draft.put(
                environment_path(environment),
                {
                    "schema_version": SCHEMA_VERSION,
                    "environment": environment,
                    "deploy_id": deploy_id,
                    "deployed_at": stamp,
                    **{
                        key: result[key]
                        for key in (
                            "signature",
                            "environment_commit",
                            "code_commit",
                            "source",
                            "branch",
                        )
                        if key in result
                    },
                },
            )
        outcome = "complete (unchanged)" if result.get("skipped") else "complete"
        signature = str(result.get("signature") or "")[:12]
        return f"deploy #{deploy_id} of {environment} {outcome}: {signature}".rstrip(": ")

    def _fail(self, draft: Draft, record: dict[str, Any], error: dict[str, Any], stamp: str) -> str:
        record.update(status="failed", finished_at=stamp, error=error)
        draft.put(
            failed_path(record["id"]),
            {
                "schema_version": SCHEMA_VERSION,
                **{
                    key: record[key]
                    for key in (
                        "id",
                        "environment",
                        "requested_as",
                        "queued_at",
                        "finished_at",
                        "error",
                    )
                    if key in record
                },
            },
        )
        message = f"deploy #{record['id']} of {record['environment']} failed: "
        return (message + str(error.get("msg", "")))[:200]

    def _requeue(self, draft: Draft, record: dict[str, Any], why: str) -> str:
        """Put a claimed deploy back in the queue (its claim counted as an attempt).

        Another deploy of the environment may have been queued behind it
        meanwhile; both wait, in id order, and the later one is most likely
        a no-op.
        """
        deploy_id, environment = record["id"], record["environment"]
        record.update(status="queued")
        record.pop("worker", None)
        record.pop("started_at", None)
        draft.put(queued_path(deploy_id), QUEUED_ENTRY)
        return f"deploy #{deploy_id} of {environment} queued again: {why}"

    def _expire_failed(self, draft: Draft) -> None:
        """Drop failed-list entries older than ``deploy_ttl`` (their records stay)."""
        horizon = self._horizon()
        for name in draft.names(FAILED):
            entry = draft.get(f"{FAILED}/{name}")
            if entry is None or parse_iso(entry["finished_at"]) < horizon:
                draft.delete(f"{FAILED}/{name}")

    def recover(
        self,
        deploy_id: int,
        worker: str,
        *,
        release: GateRelease | None = None,
    ) -> dict[str, Any] | None:
        """Handle a deploy whose worker died: queue it again once, then fail it.

        Returns the record written, or None when the deploy was no longer
        running (its worker finished it meanwhile).
        """

        def change(draft: Draft) -> dict[str, Any] | None:
            _migrate(draft)
            record = draft.get(record_path(deploy_id))
            if record is None or record.get("status") != "deploying":
                return None
            environment = record["environment"]
            running = draft.get(running_path(environment))
            if running is not None and running.get("id") == deploy_id:
                draft.delete(running_path(environment))
            ticket = record.pop("ticket", None)
            if ticket and release is not None:
                release(draft, str(ticket))
            interruptions = int(record.get("interruptions", 0)) + 1
            record["interruptions"] = interruptions
            if interruptions < MAX_INTERRUPTIONS:
                draft.subject = self._requeue(draft, record, "its worker stopped")
            else:
                stamp = now_iso(self.clock)
                error = {
                    "kind": INTERRUPTED,
                    "msg": f"deploy of {environment} interrupted: its worker stopped",
                    "details": {"attempts": record.get("attempts")},
                }
                self._fail(draft, record, error, stamp)
                draft.subject = f"deploy #{deploy_id} of {environment} failed: its worker stopped"
            draft.put(record_path(deploy_id), record)
            return record

        return self.store.transact(
            change, subject="recover deploy", operation="deploy.recover", identity=Identity(worker)
        ).value

    def wait(
        self,
        ids: Sequence[int],
        timeout: float,
        *,
        held: bool = False,
    ) -> list[dict[str, Any]]:
        """Wait until every deploy in ``ids`` is finished or ``timeout`` passes.

        Woken by every move of the state branch (:class:`TipWatch`), not by
        polling. With ``held``, a queued deploy that a closed gate holds
        back counts as settled too (for a caller that will not wait for the
        gate). Returns the records as they stand at the end.
        """
        settled = _Settled(self, ids, held)
        TipWatch.of(Path(self.store.path)).wait(settled, timeout)
        return settled.records

    async def wait_async(
        self,
        ids: Sequence[int],
        timeout: float,
        *,
        held: bool = False,
        run: Blocking,
    ) -> list[dict[str, Any]]:
        """:meth:`wait` for an asyncio task: it sleeps without a thread.

        One look per process and wake reads the id of ``deploys/`` at the
        tip, and the waiting requests are woken only when it changed
        (:meth:`TipWatch.wait_until_async`): gate traffic moves the tip
        hundreds of times a second without touching ``deploys/``. A waiter
        then reads its records in ``run``'s pool.
        """
        settled = _Settled(self, ids, held)

        async def finished(version: str | None) -> bool:
            if version == settled.version:
                return settled.done
            return await run(settled.settle, version)

        await TipWatch.of(Path(self.store.path)).wait_until_async(
            DEPLOYS, self.version, run, finished, timeout
        )
        return settled.records

    def version(self) -> str | None:
        """Return the id of ``deploys/`` at the tip: it changes when any deploy record does."""
        return self.store.ids((DEPLOYS,))[0]

    def blocked(self, ids: Iterable[int]) -> dict[int, str]:
        """Return the queued deploys among ``ids`` that a gate holds back, with why."""
        wanted = {int(deploy_id) for deploy_id in ids}
        snapshot = self.store.snapshot()
        found = {}
        for deploy_id in wanted:
            entry = snapshot.get(queued_path(deploy_id))
            if entry is not None and entry.get("blocked"):
                found[deploy_id] = str(entry["blocked"])
        return found


#: A version no tip has: the records were never read.
_UNREAD = object()


class _Settled:
    """Whether the deploys a request waits for are finished, looked at per version.

    Records are read again only when ``deploys/`` has changed
    (:meth:`DeployQueue.version`). With ``held``, a queued deploy that a
    closed gate holds back counts as settled (for a caller that will not
    wait for the gate).
    """

    def __init__(self, queue: DeployQueue, ids: Sequence[int], held: bool) -> None:
        self._queue = queue
        self._ids = list(ids)
        self._held = held
        #: The version of ``deploys/`` the records were last read at.
        self.version: object = _UNREAD
        self.done = False
        self.records: list[dict[str, Any]] = []

    def __call__(self) -> bool:
        version = self._queue.version()
        return self.done if version == self.version else self.settle(version)

    def settle(self, version: str | None) -> bool:
        """Read the records (``deploys/`` is at ``version`` or later); tell if all are settled."""
        self.version = version
        self.records = self._queue.records(self._ids)
        open_ = [r["id"] for r in self.records if r.get("status") not in FINAL]
        self.done = len(self.records) == len(set(self._ids)) and (
            not open_ or (self._held and len(self._queue.blocked(open_)) == len(open_))
        )
        return self.done


def _same_version(summary: Mapping[str, Any] | None, result: Mapping[str, Any]) -> bool:
    """Tell whether an environment's summary already names the version ``result`` deployed."""
    return summary is not None and all(
        summary.get(key) == result.get(key) for key in ("signature", "environment_commit")
    )


def _queued_ids(reader: Snapshot | Draft) -> list[int]:
    """Return the ids of the queued deploys, oldest first."""
    return [int(name.removesuffix(".yaml")) for name in reader.names(QUEUED)]


def _queued_by_environment(draft: Draft) -> dict[str, int]:
    found: dict[str, int] = {}
    for deploy_id in _queued_ids(draft):
        record = draft.get(record_path(deploy_id))
        if record is not None:
            found.setdefault(record["environment"], deploy_id)
    return found


def _legacy_active(record: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not record:
        return []
    return [dict(entry) for entry in record.get("deploys", [])]


def _migrate(draft: Draft) -> None:
    """Move queue version 1's two index files into one record per entry.

    A datadir written before the queue kept one record per entry has
    ``deploys/active.yaml`` (every unfinished deploy) and
    ``deploys/finished.yaml`` (the last 500 finished); the first write of
    the queue moves them over in its own commit.
    """
    active = draft.get(LEGACY_ACTIVE)
    finished = draft.get(LEGACY_FINISHED)
    if active is None and finished is None:
        return
    for entry in _legacy_active(active):
        deploy_id = int(entry["id"])
        record = draft.get(record_path(deploy_id))
        if record is None or record.get("status") in FINAL:
            continue
        if record.get("status") == "deploying" and not draft.get(
            running_path(record["environment"])
        ):
            draft.put(
                running_path(record["environment"]),
                {
                    "schema_version": SCHEMA_VERSION,
                    "id": deploy_id,
                    "environment": record["environment"],
                    "requested_as": record.get("requested_as", record["environment"]),
                    "queued_at": record.get("queued_at"),
                    "worker": record.get("worker", ""),
                    "started_at": record.get("started_at"),
                },
            )
        else:
            record["status"] = "queued"
            draft.put(record_path(deploy_id), record)
            draft.put(queued_path(deploy_id), QUEUED_ENTRY)
    for entry in (finished or {}).get("deploys", []):
        if entry.get("status") == "failed":
            draft.put(failed_path(int(entry["id"])), {"schema_version": SCHEMA_VERSION, **entry})
    draft.delete(LEGACY_ACTIVE)
    draft.delete(LEGACY_FINISHED)


def _names(environments: Iterable[str], limit: int = 5) -> str:
    names = sorted(set(environments))
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"


def _ids(ids: Iterable[int], limit: int = 5) -> str:
    ordered = sorted(ids)
    shown = ", ".join(f"#{deploy_id}" for deploy_id in ordered[:limit])
    return shown if len(ordered) <= limit else f"{shown} and {len(ordered) - limit} more"


def worker_name(slot: int, node: str | None = None) -> str:
    """Return the name a deploy worker signs its commits with.

    ``node`` names the server the worker runs on when several share the
    state branch (docs/cluster.md); by default, the host.
    """
    return f"deploy-worker-{slot}@{node or socket.gethostname()}:{os.getpid()}"


def worker_node(worker: str) -> str:
    """Return the server part of a worker name (between ``@`` and the pid)."""
    return worker.partition("@")[2].rpartition(":")[0]
