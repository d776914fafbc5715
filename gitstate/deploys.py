"""The deploy queue, kept in the state branch.

A deploy request becomes a record ``deploys/<bucket>/<id>.yaml`` with an
increasing id and moves ``queued`` → ``deploying`` → ``complete`` | ``failed``;
each move is one commit, so ``git log -- deploys/`` is the deploy history.
Two small index records keep reads cheap however long that history grows:

* ``deploys/active.yaml`` — every deploy not finished yet, by id, with its
  environment and status. A request for an environment that already has a
  *queued* deploy joins it (same id) instead of queueing a second one; an
  environment with a deploy *deploying* gets one queued behind it. Workers
  claim the oldest queued deploy whose environment is not being deployed, so
  one environment never deploys twice at once.
* ``deploys/finished.yaml`` — the most recent finished deploys (status,
  times, error), from which the status endpoint lists failures younger than
  ``deploy_ttl``.

The last good deploy of each environment is summarised in
``environments/<name>.yaml`` (signature, environment-commit, code-commit), in
the same commit that finishes the deploy.

This module knows nothing of git trees or HTTP: it calls a deploy engine
(:class:`gitstate.environments.Deployer`) through the small
:class:`Engine` protocol and writes records through :mod:`gitstate.store`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from gitstate.errors import GitStateError
from gitstate.store import Draft, Identity, Store

SCHEMA_VERSION = 1
ACTIVE = "deploys/active.yaml"
FINISHED = "deploys/finished.yaml"
COUNTER = "deploys/counter.yaml"
#: How many finished deploys the index keeps (older ones stay in git history).
FINISHED_KEEP = 500
_BUCKET = 256

KIND_PREFIX = "puppetlabs.code-manager/"
DEPLOY_FAILURE = KIND_PREFIX + "deploy-failure"
COLLECT_FAILED = KIND_PREFIX + "collect-failed"
BAD_REQUEST = KIND_PREFIX + "bad-request"
TIMEOUT = KIND_PREFIX + "timeout"
INTERRUPTED = KIND_PREFIX + "deploy-interrupted"


class DeployRequestError(GitStateError, ValueError):
    """A deploy request is malformed (Code Manager's ``bad-request``)."""

    kind = BAD_REQUEST

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class DeployNotFound(GitStateError, LookupError):
    """No deploy has the id asked for."""

    def __init__(self, deploy_id: int) -> None:
        self.deploy_id = deploy_id
        super().__init__(f"no deploy with id {deploy_id}")


class Engine(Protocol):
    """What the queue needs from the deploy engine."""

    def collect(self) -> Any:
        """Fetch the control repositories and list their environments."""

    def deploy(
        self, environment: str, *, collection: Any = None, deploy_modules: bool = True
    ) -> Any:
        """Build and publish one environment."""

    def remove(self, environment: str) -> str | None:
        """Unpublish one environment at once."""

    def purge(self, collection: Any) -> list[str]:
        """Unpublish environments whose branches are gone."""


@dataclasses.dataclass(frozen=True)
class DeploySettings:
    """The ``deploy`` config section (times in seconds).

    Attributes:
        pool_size: deploy worker processes ``gitstate serve`` runs.
        deploy_ttl: how long finished deploys stay in the status list.
        wait_timeout: longest a ``wait: true`` request waits.
        deploy_timeout: longest one environment may take.
        fetch_timeout: longest a fetch of a remote may take.
        poll_interval: how often an idle worker looks for work.
    """

    pool_size: int = 2
    deploy_ttl: float = 3600.0
    wait_timeout: float = 700.0
    deploy_timeout: float = 600.0
    fetch_timeout: float = 30.0
    poll_interval: float = 0.1

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> DeploySettings:
        """Read the ``deploy`` section; durations accept ``30``, ``"30s"``, ``"10m"``, ``"1h"``."""
        data = data or {}
        timeouts = data.get("timeouts") or {}
        return cls(
            pool_size=int(data.get("pool_size", cls.pool_size)),
            deploy_ttl=duration(data.get("deploy_ttl", cls.deploy_ttl)),
            wait_timeout=duration(timeouts.get("wait", cls.wait_timeout)),
            deploy_timeout=duration(timeouts.get("deploy", cls.deploy_timeout)),
            fetch_timeout=duration(timeouts.get("fetch", cls.fetch_timeout)),
            poll_interval=duration(data.get("poll_interval", cls.poll_interval)),
        )


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(value: Any) -> float:
    """Parse a duration: a number of seconds or a string like ``"10m"``.

    Raises:
        ValueError: the value is not a duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(unit) and text[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * _UNITS[unit]
    if text.replace(".", "", 1).isdigit():
        return float(text)
    raise ValueError(f"not a duration: {value!r} (use e.g. 30, '30s', '10m', '1h', '1d')")


def now_iso(clock: Callable[[], float] = time.time) -> str:
    """Return the time as Code Manager writes it: ISO-8601, milliseconds, ``Z``."""
    stamp = datetime.fromtimestamp(clock(), UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """Parse a timestamp written by :func:`now_iso`."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def record_path(deploy_id: int) -> str:
    """Return where the record of deploy ``deploy_id`` lives."""
    return f"deploys/{deploy_id // _BUCKET:05d}/{deploy_id}.yaml"


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
    ) -> list[Requested]:
        """Queue a deploy of each ``(requested name, corrected name)``, in one commit.

        The requested name is what the user asked for and what Code Manager
        reports back; the corrected name is the environment deployed. A
        request for an environment that already has a queued deploy joins it.
        """
        if not environments:
            return []

        def change(draft: Draft) -> list[Requested]:
            active = _active(draft)
            counter = draft.get(COUNTER) or {"schema_version": SCHEMA_VERSION, "next_id": 1}
            answers: list[Requested] = []
            stamp = now_iso(self.clock)
            for requested, corrected in environments:
                waiting = [
                    entry
                    for entry in active.values()
                    if entry["environment"] == corrected and entry["status"] == "queued"
                ]
                if waiting:
                    entry = waiting[0]
                    record = draft.get(record_path(entry["id"])) or {}
                    if deploy_modules:
                        record["deploy_modules"] = True
                    # The newest request decides how fresh the fetch must be.
                    record["requested_at"] = stamp
                    draft.put(record_path(entry["id"]), record)
                    answers.append(Requested(requested, entry["id"], "queued", True))
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
                        "requested_at": stamp,
                        "requested_by": actor,
                        "reason": reason,
                        "deploy_modules": deploy_modules,
                        "attempts": 0,
                    },
                )
                active[str(deploy_id)] = {
                    "id": deploy_id,
                    "environment": corrected,
                    "status": "queued",
                    "queued_at": stamp,
                }
                answers.append(Requested(requested, deploy_id, "queued", False))
            draft.put(COUNTER, counter)
            _put_active(draft, active)
            new = [a for a in answers if not a.joined]
            names = ", ".join(sorted({a.environment for a in answers}))
            if new:
                ids = ", ".join(f"#{a.deploy_id}" for a in new)
                draft.subject = f"{actor} queued deploy of {names} ({ids})"
            else:
                draft.subject = f"{actor} asked again to deploy {names}"
            return answers

        done = self.store.transact(
            change,
            subject=f"{actor} queued deploys",
            operation="deploy.request",
            identity=Identity(actor, request_id),
        )
        return done.value

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
        """Return every unfinished deploy (queued or deploying), oldest first."""
        entries = _active_of(self.store.snapshot().get(ACTIVE))
        return sorted(entries.values(), key=lambda entry: entry["id"])

    def finished(self) -> list[dict[str, Any]]:
        """Return finished deploys younger than ``deploy_ttl``, newest first."""
        index = self.store.snapshot().get(FINISHED) or {}
        horizon = datetime.fromtimestamp(self.clock(), UTC) - timedelta(
            seconds=self.settings.deploy_ttl
        )
        entries = [
            entry
            for entry in index.get("deploys", [])
            if parse_iso(entry["finished_at"]) >= horizon
        ]
        return sorted(entries, key=lambda entry: entry["id"], reverse=True)

    def deployed(self) -> dict[str, dict[str, Any]]:
        """Return each environment's last good deploy summary."""
        snapshot = self.store.snapshot()
        summaries = {}
        for path, record in snapshot.records("environments"):
            summaries[path.removeprefix("environments/").removesuffix(".yaml")] = record
        return summaries

    # -- workers -------------------------------------------------------------------

    def refresh_blocked(self, blocked: Callable[[str], str | None]) -> list[dict[str, Any]]:
        """Record why queued deploys wait (closed gates); return the claimable ones.

        ``blocked(environment)`` says why an environment may not be deployed
        now, or None. A reason is written only when it changes, so a deploy
        waiting for hours on a closed gate costs two commits, not one per
        poll.
        """
        active = _active_of(self.store.snapshot().get(ACTIVE))
        reasons = {
            key: blocked(entry["environment"])
            for key, entry in active.items()
            if entry["status"] == "queued"
        }
        if any(active[key].get("blocked") != reason for key, reason in reasons.items()):

            def change(draft: Draft) -> None:
                fresh = _active(draft)
                notes = []
                for key, reason in reasons.items():
                    entry = fresh.get(key)
                    if (
                        entry is None
                        or entry["status"] != "queued"
                        or entry.get("blocked") == reason
                    ):
                        continue
                    if reason is None:
                        entry.pop("blocked", None)
                        notes.append(f"#{entry['id']} of {entry['environment']} may run")
                    else:
                        entry["blocked"] = reason
                        notes.append(f"#{entry['id']} of {entry['environment']} waits: {reason}")
                _put_active(draft, fresh)
                draft.subject = "deploy " + "; ".join(notes) if notes else "deploy waits"

            self.store.transact(
                change,
                subject="deploys wait for gates",
                operation="deploy.wait",
                identity=Identity("gitstate"),
            )
            active = _active_of(self.store.snapshot().get(ACTIVE))
        return [entry for entry in _claimable(active) if not entry.get("blocked")]

    def claim(
        self, worker: str, *, deploy_id: int | None = None, ticket: str | None = None
    ) -> dict[str, Any] | None:
        """Mark a queued deploy ``deploying`` for ``worker``.

        Without ``deploy_id``, the oldest claimable one; with it, that one if
        it is still claimable. A deploy is claimable when no other deploy of
        its environment is being deployed. ``ticket`` is the gate ticket the
        worker took for it. Returns the claimed record, or None when there is
        no such work (without writing anything).
        """
        snapshot = self.store.snapshot()
        if not _claimable(_active_of(snapshot.get(ACTIVE))):
            return None

        def change(draft: Draft) -> dict[str, Any] | None:
            active = _active(draft)
            candidates = _claimable(active)
            if deploy_id is not None:
                candidates = [entry for entry in candidates if entry["id"] == deploy_id]
            if not candidates:
                return None
            entry = candidates[0]
            record = draft.get(record_path(entry["id"]))
            if record is None:  # index and record disagree: drop the entry
                active.pop(str(entry["id"]))
                _put_active(draft, active)
                return None
            record.update(
                status="deploying",
                started_at=now_iso(self.clock),
                worker=worker,
                attempts=int(record.get("attempts", 0)) + 1,
            )
            if ticket is not None:
                record["ticket"] = ticket
            draft.put(record_path(entry["id"]), record)
            # ``candidates`` are copies: mark the entry of the index itself.
            indexed = active[str(entry["id"])]
            indexed["status"] = "deploying"
            indexed["worker"] = worker
            indexed.pop("blocked", None)
            _put_active(draft, active)
            draft.subject = f"{worker} started deploying {record['environment']} (#{record['id']})"
            return record

        return self.store.transact(
            change,
            subject=f"{worker} claims a deploy",
            operation="deploy.start",
            identity=Identity(worker),
        ).value

    def finish(
        self,
        deploy_id: int,
        worker: str,
        *,
        result: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record the outcome of a claimed deploy: ``result`` or ``error``."""

        def change(draft: Draft) -> dict[str, Any]:
            active = _active(draft)
            record = draft.get(record_path(deploy_id))
            if record is None:
                raise DeployNotFound(deploy_id)
            stamp = now_iso(self.clock)
            record["finished_at"] = stamp
            environment = record["environment"]
            if error is None:
                result_ = dict(result or {})
                record.update(status="complete", **result_)
                draft.put(
                    environment_path(environment),
                    {
                        "schema_version": SCHEMA_VERSION,
                        "environment": environment,
                        "deploy_id": deploy_id,
                        "deployed_at": stamp,
                        **{
                            key: result_[key]
                            for key in ("signature", "environment_commit", "code_commit")
                            if key in result_
                        },
                    },
                )
                outcome = "complete"
                if result_.get("skipped"):
                    outcome = "complete (unchanged)"
                signature = str(result_.get("signature") or "")[:12]
                draft.subject = (
                    f"deploy #{deploy_id} of {environment} {outcome}: {signature}".rstrip(": ")
                )
            else:
                record.update(status="failed", error=dict(error))
                draft.subject = (
                    f"deploy #{deploy_id} of {environment} failed: {error.get('msg', '')}"[:200]
                )
            draft.put(record_path(deploy_id), record)
            active.pop(str(deploy_id), None)
            _put_active(draft, active)
            _remember_finished(draft, record)
            return record

        return self.store.transact(
            change,
            subject=f"deploy #{deploy_id} finished",
            operation="deploy.finish",
            identity=Identity(worker),
        ).value

    def requeue_or_fail(
        self, deploy_id: int, worker: str, *, max_attempts: int = 2
    ) -> dict[str, Any] | None:
        """Handle a deploy whose worker died: queue it again once, then fail it."""

        def change(draft: Draft) -> dict[str, Any] | None:
            active = _active(draft)
            record = draft.get(record_path(deploy_id))
            if record is None or record.get("status") != "deploying":
                return None
            record.pop("ticket", None)  # the recovering worker gives it back
            if int(record.get("attempts", 1)) < max_attempts:
                record.update(status="queued")
                record.pop("worker", None)
                record.pop("started_at", None)
                active[str(deploy_id)] = {
                    "id": deploy_id,
                    "environment": record["environment"],
                    "status": "queued",
                    "queued_at": record["queued_at"],
                }
                draft.subject = (
                    f"deploy #{deploy_id} of {record['environment']} queued again: "
                    "its worker stopped"
                )
            else:
                record.update(
                    status="failed",
                    finished_at=now_iso(self.clock),
                    error={
                        "kind": INTERRUPTED,
                        "msg": f"deploy of {record['environment']} interrupted: its worker stopped",
                        "details": {"attempts": record.get("attempts")},
                    },
                )
                active.pop(str(deploy_id), None)
                _remember_finished(draft, record)
                draft.subject = (
                    f"deploy #{deploy_id} of {record['environment']} failed: its worker stopped"
                )
            draft.put(record_path(deploy_id), record)
            _put_active(draft, active)
            return record

        return self.store.transact(
            change, subject="recover deploy", operation="deploy.recover", identity=Identity(worker)
        ).value

    def wait(
        self, ids: Sequence[int], timeout: float, *, poll: float = 0.05
    ) -> list[dict[str, Any]]:
        """Wait until every deploy in ``ids`` is finished or ``timeout`` passes.

        Returns the records as they stand at the end (unfinished ones still
        ``queued`` or ``deploying``). Reading the branch tip costs a few
        microseconds, so polling it is cheap.
        """
        until = time.monotonic() + timeout
        last_head = None
        records: list[dict[str, Any]] = []
        while True:
            head = self.store.head()
            if head != last_head:
                last_head = head
                records = self.records(ids)
                if all(record.get("status") in ("complete", "failed") for record in records):
                    return records
            if time.monotonic() >= until:
                return records
            time.sleep(poll)


def _active_of(record: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    if not record:
        return {}
    return {str(entry["id"]): dict(entry) for entry in record.get("deploys", [])}


def _active(draft: Draft) -> dict[str, dict[str, Any]]:
    return _active_of(draft.get(ACTIVE))


def _put_active(draft: Draft, active: Mapping[str, Mapping[str, Any]]) -> None:
    entries = sorted(active.values(), key=lambda entry: entry["id"])
    draft.put(ACTIVE, {"schema_version": SCHEMA_VERSION, "deploys": [dict(e) for e in entries]})


def _claimable(active: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    busy = {entry["environment"] for entry in active.values() if entry["status"] == "deploying"}
    queued = [
        dict(entry)
        for entry in active.values()
        if entry["status"] == "queued" and entry["environment"] not in busy
    ]
    return sorted(queued, key=lambda entry: entry["id"])


def _remember_finished(draft: Draft, record: Mapping[str, Any]) -> None:
    index = draft.get(FINISHED) or {"schema_version": SCHEMA_VERSION, "deploys": []}
    entry = {
        key: record[key]
        for key in ("id", "environment", "status", "queued_at", "finished_at", "error", "signature")
        if key in record
    }
    deploys = [e for e in index["deploys"] if e["id"] != record["id"]] + [entry]
    index["deploys"] = deploys[-FINISHED_KEEP:]
    draft.put(FINISHED, index)


def worker_name(slot: int) -> str:
    """Return the name a deploy worker signs its commits with."""
    return f"deploy-worker-{slot}@{socket.gethostname()}:{os.getpid()}"
