"""The audit trail: the state branch's history, told for people and filtered.

Every change gitstate makes is a commit on the state branch, so the branch
*is* the audit log; this module reads it back as entries a person can
scan: when, who (the ``Actor:`` trailer), what (the subject), and which
gates, environments and deploys the commit touched, worked out from the
records it changed:

* ``gates/<group>/<service>.yaml``: the environments whose entry differs
  between the two versions, as ``<group>/<service>/<environment>``;
* ``environments/<env>.yaml`` and ``deploys/running/<env>.yaml``: ``<env>``;
* ``deploys/<bucket>/<id>.yaml``: deploy ``<id>`` and its environment.

Entries come newest first, a page at a time (``before`` = the last commit
of the previous page). Each request does bounded work: it looks at no more
than :data:`SCAN_BUDGET` commits and parsed records, and when the budget
runs out before the page is full it answers what it found with ``next`` set
to where it stopped, so a filter that matches rarely costs several short
requests rather than one long one.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gitstate.deploys.queue import RUNNING
from gitstate.errors import BAD_REQUEST, GitStateError
from gitstate.gates.records import GATES_DIR
from gitstate.store.branch import PathChange, Step, Store

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
#: Commits plus records parsed that one request may look at.
SCAN_BUDGET = 5000
#: Changed records listed per entry (the detail lists up to MAX_CHANGES).
MAX_PATHS = 50
#: Records whose before/after one detail request returns.
MAX_CHANGES = 200
#: Filters (and paging) a listing accepts; ``token`` is the auth parameter.
PARAMETERS = frozenset(
    {"gate", "environment", "actor", "since", "until", "limit", "before", "token"}
)
_COMMIT = re.compile(r"\A[0-9a-f]{7,40}\Z")
_NAME = re.compile(r"\A[A-Za-z0-9_.@+:-]{1,255}\Z")
_DEPLOY_RECORD = re.compile(r"\Adeploys/\d{5}/(\d+)\.yaml\Z")


class AuditQueryError(GitStateError, ValueError):
    """A listing or detail of the audit trail was asked for with a bad parameter.

    Attributes:
        parameter: the query parameter (or path part) at fault.
    """

    status = 400
    kind = BAD_REQUEST
    public_fields = (("parameter", "parameter"),)

    def __init__(self, parameter: str, detail: str) -> None:
        self.parameter = parameter
        super().__init__(f"{parameter}: {detail}")


def check_commit(text: str, parameter: str = "commit") -> str:
    """Return ``text`` if it looks like a commit id (7 to 40 lowercase hex digits).

    Raises:
        AuditQueryError: it does not.
    """
    if not _COMMIT.fullmatch(text):
        raise AuditQueryError(parameter, "must be a state commit id (7 to 40 hex digits)")
    return text


def _time(parameter: str, text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as ex:
        raise AuditQueryError(
            parameter, f"{text!r} is not an ISO 8601 time (e.g. 2026-11-01T12:00:00Z)"
        ) from ex
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class AuditQuery:
    """A validated listing request: filters, page size and where the page starts."""

    gate: tuple[str, ...] = ()
    environment: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = DEFAULT_LIMIT
    before: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> AuditQuery:
        """Check the query parameters of ``GET /api/audit``.

        ``gate`` is ``<group>``, ``<group>/<service>`` or
        ``<group>/<service>/<environment>``; ``since`` and ``until`` are ISO
        8601 times (UTC unless they say otherwise), both inclusive.

        Raises:
            AuditQueryError: an unknown or repeated parameter, or a bad value.
        """
        unknown = sorted(set(params) - PARAMETERS)
        if unknown:
            raise AuditQueryError(
                unknown[0], f"unknown parameter; use {', '.join(sorted(PARAMETERS - {'token'}))}"
            )
        values: dict[str, str] = {}
        for key, value in params.items():
            if not isinstance(value, str):
                raise AuditQueryError(key, "may be given once")
            values[key] = value
        gate: tuple[str, ...] = ()
        if values.get("gate"):
            gate = tuple(values["gate"].strip("/").split("/"))
            if len(gate) > 3 or not all(_NAME.fullmatch(part) for part in gate):
                raise AuditQueryError(
                    "gate", "must be <group>, <group>/<service> or <group>/<service>/<environment>"
                )
        for key in ("environment", "actor"):
            if values.get(key) and not _NAME.fullmatch(values[key]):
                raise AuditQueryError(key, "is not a name gitstate uses")
        limit = DEFAULT_LIMIT
        if values.get("limit"):
            if not values["limit"].isdigit() or not 1 <= int(values["limit"]) <= MAX_LIMIT:
                raise AuditQueryError("limit", f"must be a number from 1 to {MAX_LIMIT}")
            limit = int(values["limit"])
        since = _time("since", values["since"]) if values.get("since") else None
        until = _time("until", values["until"]) if values.get("until") else None
        if since and until and since > until:
            raise AuditQueryError("since", "is after until")
        before = check_commit(values["before"], "before") if values.get("before") else None
        return cls(
            gate=gate,
            environment=values.get("environment") or None,
            actor=values.get("actor") or None,
            since=since,
            until=until,
            limit=limit,
            before=before,
        )

    def matches(self, entry: Mapping[str, Any], when: datetime) -> bool:
        """Tell whether a described commit passes every filter."""
        if self.actor is not None and entry["actor"] != self.actor:
            return False
        if self.until is not None and when > self.until:
            return False
        if self.since is not None and when < self.since:
            return False
        if self.gate and not any(
            tuple(gate.split("/"))[: len(self.gate)] == self.gate for gate in entry["gates"]
        ):
            return False
        if self.environment is not None:
            return self.environment in entry["environments"] or any(
                gate.count("/") == 2 and gate.rsplit("/", 1)[1] == self.environment
                for gate in entry["gates"]
            )
        return True


class AuditTrail:
    """Reads the state branch's history as audit entries."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def list(self, query: AuditQuery) -> dict[str, Any]:
        """Return one page of entries matching ``query``, newest first.

        The answer is ``{"commit", "entries", "next", "scanned"}``: the tip
        the walk started from (when not paging), the entries, the commit to
        pass as ``before`` for the next page (None at the end of the
        history or of ``since``) and how many commits were looked at.

        Raises:
            RevisionNotFound: ``before`` is not a commit of the branch.
        """
        entries: list[dict[str, Any]] = []
        budget = _Budget(SCAN_BUDGET)
        scanned = 0
        last: str | None = None
        exhausted = True
        for step in self.store.walk(query.before):
            if query.since is not None and step.change.time < query.since:
                break  # newest first: nothing older can match
            scanned += 1
            last = step.change.commit
            budget.spend(1)
            # Time and actor need no records read: judged before describing.
            if (query.until is None or step.change.time <= query.until) and (
                query.actor is None or step.change.actor == query.actor
            ):
                entry = self._describe(step, budget)
                if query.matches(entry, step.change.time):
                    entries.append(entry)
            if len(entries) >= query.limit or budget.spent:
                exhausted = False
                break
        return {
            "commit": self.store.head() if query.before is None else None,
            "entries": entries,
            "next": None if exhausted else last,
            "scanned": scanned,
        }

    def detail(self, commit: str) -> dict[str, Any]:
        """Return one commit's entry with every record it changed, before and after.

        Each change carries the record's YAML as stored before and after
        the commit (None where it did not exist) and a unified diff of the
        two; at most :data:`MAX_CHANGES` records (``changes_total`` says how
        many there were).

        Raises:
            AuditQueryError: ``commit`` is not a commit id.
            RevisionNotFound: no such commit on the state branch.
        """
        step = self.store.step(check_commit(commit))
        entry = self._describe(step, _Budget(SCAN_BUDGET))
        changes = []
        for item in step.paths[:MAX_CHANGES]:
            before = self.store.blob_text(item.before) if item.before else None
            after = self.store.blob_text(item.after) if item.after else None
            diff = difflib.unified_diff(
                (before or "").splitlines(keepends=True),
                (after or "").splitlines(keepends=True),
                fromfile=f"a/{item.path}" if before is not None else "/dev/null",
                tofile=f"b/{item.path}" if after is not None else "/dev/null",
            )
            changes.append(
                {
                    "path": item.path,
                    "change": item.kind,
                    "before": before,
                    "after": after,
                    "diff": "".join(diff),
                }
            )
        entry.pop("paths")
        return {**entry, "changes": changes}

    def _describe(self, step: Step, budget: _Budget) -> dict[str, Any]:
        """Return the entry of one commit: who, when, what, and what it touched."""
        gates: set[str] = set()
        environments: set[str] = set()
        deploys: set[int] = set()
        for item in step.paths:
            parts = item.path.split("/")
            if parts[0] == GATES_DIR and len(parts) == 3:
                gates.update(self._gates(item, parts[1], parts[2].removesuffix(".yaml"), budget))
            elif parts[0] == "environments" and len(parts) == 2:
                environments.add(parts[1].removesuffix(".yaml"))
            elif item.path.startswith(RUNNING + "/") and len(parts) == 3:
                environments.add(parts[2].removesuffix(".yaml"))
            elif (match := _DEPLOY_RECORD.fullmatch(item.path)) is not None:
                deploys.add(int(match[1]))
                record = self._record(item.after or item.before, item.path, budget)
                if record and isinstance(record.get("environment"), str):
                    environments.add(record["environment"])
        change = step.change
        return {
            "commit": change.commit,
            "time": change.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "actor": change.actor,
            "subject": change.subject,
            "operation": change.operation,
            "request_id": change.request_id,
            "parent": step.parent,
            "gates": sorted(gates),
            "environments": sorted(environments),
            "deploys": sorted(deploys),
            "paths": [{"path": item.path, "change": item.kind} for item in step.paths[:MAX_PATHS]],
            "paths_total": len(step.paths),
            "link": f"/api/audit/{change.commit}",
        }

    def _gates(self, item: PathChange, group: str, service: str, budget: _Budget) -> set[str]:
        """Name the gates of one service file that a commit changed."""
        before = _environments(self._record(item.before, item.path, budget))
        after = _environments(self._record(item.after, item.path, budget))
        changed = {env for env in set(before) | set(after) if before.get(env) != after.get(env)}
        if not changed:
            return {f"{group}/{service}"}
        return {f"{group}/{service}/{env}" for env in changed}

    def _record(self, blob: str | None, path: str, budget: _Budget) -> dict[str, Any] | None:
        if blob is None or budget.spent:
            return None
        budget.spend(1)
        return self.store.blob_record(blob, path)


def _environments(record: Mapping[str, Any] | None) -> dict[str, Any]:
    found = (record or {}).get("environments")
    return dict(found) if isinstance(found, Mapping) else {}


class _Budget:
    """Work one request may still do (commits looked at, records parsed)."""

    def __init__(self, total: int) -> None:
        self.left = total

    def spend(self, units: int) -> None:
        self.left -= units

    @property
    def spent(self) -> bool:
        return self.left <= 0
