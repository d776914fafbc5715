"""What each environment has deployed, told for the people who run Code Manager.

Code Manager's ``deploys/status`` lists signatures and counts; an operator
wants one row per environment: the commit deployed, the branch and source
it came from, when and by whom (the requester of the deploy, or whoever
rolled it back), whether each file-sync client has that version, what is
queued or deploying for it now, its last failure if that is newer than the
version deployed, and whether the caller may roll it back
(``deploy:<environment>``, as :meth:`CodeManager.rollback` requires).

Everything is read from one snapshot of the state branch and the clients'
latest check-ins; nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gitstate.auth import Principal
from gitstate.deploys.queue import DeployNotFound, DeployQueue
from gitstate.engine.sources import Sources
from gitstate.filesync.server import FileSyncService

#: A client's relation to an environment's deployed version.
SYNCED = "synced"
BEHIND = "behind"
MISSING = "missing"
NEVER = "never-checked-in"


def environments_overview(
    queue: DeployQueue,
    file_sync: FileSyncService,
    sources: Sources,
    principal: Principal,
) -> dict[str, Any]:
    """Return ``{"commit", "environments"}``: one entry per environment, sorted by name.

    An environment is listed when it has a deployed version, or a deploy
    queued, running or recently failed.
    """
    commit = queue.store.head()
    deployed = queue.deployed()
    active = queue.active()
    failed = queue.finished()  # newest first
    clients = file_sync.client_status()["file-sync-clients"]
    names = set(deployed)
    names.update(entry["environment"] for entry in active)
    names.update(entry["environment"] for entry in failed)
    rows = []
    for name in sorted(names):
        summary = deployed.get(name)
        row: dict[str, Any] = {"environment": name, **_version(queue, summary)}
        if summary is not None and not row.get("branch"):
            row.update(_origin(sources, name))
        row["clients"] = _clients(clients, name, summary)
        mine = [entry for entry in active if entry["environment"] == name]
        row["deploying"] = next(
            (_active(entry) for entry in mine if entry["status"] == "deploying"), None
        )
        row["queued"] = [_active(entry) for entry in mine if entry["status"] == "queued"]
        failure = next((entry for entry in failed if entry["environment"] == name), None)
        newer = failure is not None and (
            summary is None or str(failure.get("finished_at", "")) > str(summary["deployed_at"])
        )
        row["last_failure"] = (
            {
                "id": failure["id"],
                "finished_at": failure.get("finished_at"),
                "error": failure.get("error"),
            }
            if newer and failure is not None
            else None
        )
        row["may_roll_back"] = summary is not None and principal.allows(f"deploy:{name}")
        rows.append(row)
    return {"commit": commit, "environments": rows}


def _version(queue: DeployQueue, summary: Mapping[str, Any] | None) -> dict[str, Any]:
    """Describe the version deployed (all None when there is none)."""
    if summary is None:
        return {
            "signature": None,
            "environment_commit": None,
            "code_commit": None,
            "deployed_at": None,
            "deployed_by": None,
            "deploy_id": None,
            "source": None,
            "branch": None,
            "rollback": None,
        }
    rollback = summary.get("rollback")
    deploy_id = summary.get("deploy_id")
    by = rollback.get("by") if isinstance(rollback, Mapping) else None
    pushed_by = None
    if by is None and deploy_id is not None:
        try:
            record = queue.get(int(deploy_id))
        except DeployNotFound:
            record = {}
        by = record.get("requested_by")
        pushed_by = record.get("pushed_by")
    return {
        "signature": summary.get("signature"),
        "environment_commit": summary.get("environment_commit"),
        "code_commit": summary.get("code_commit"),
        "deployed_at": summary.get("deployed_at"),
        "deployed_by": by,
        **({"pushed_by": pushed_by} if pushed_by else {}),
        "deploy_id": deploy_id,
        "source": summary.get("source"),
        "branch": summary.get("branch"),
        "rollback": dict(rollback) if isinstance(rollback, Mapping) else None,
    }


def _origin(sources: Sources, environment: str) -> dict[str, Any]:
    """Guess source and branch from the name, for versions recorded without them.

    Deploys record both since this module exists; a version deployed
    before, or restored by a rollback, is named by its source's prefix. The
    branch is then the name without the prefix, which is the branch unless
    r10k corrected characters in it.
    """
    for source in sorted(sources, key=lambda item: len(item.prefix_text), reverse=True):
        if environment.startswith(source.prefix_text):
            return {"source": source.name, "branch": environment[len(source.prefix_text) :]}
    return {"source": None, "branch": None}


def _clients(
    clients: Mapping[str, Any], environment: str, summary: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """Say for every file-sync client whether it has the environment's version."""
    wanted = (summary or {}).get("environment_commit")
    answer = []
    for name, client in sorted(clients.items()):
        mine = next(
            (item for item in client.get("deployed", []) if item["environment"] == environment),
            None,
        )
        if not client.get("last_check_in_time"):
            status = NEVER
        elif mine is None:
            status = MISSING
        elif wanted is None or mine.get("environment-commit") == wanted:
            status = SYNCED
        else:
            status = BEHIND
        answer.append(
            {
                "client": name,
                "status": status,
                "environment_commit": (mine or {}).get("environment-commit"),
                "last_check_in_time": client.get("last_check_in_time"),
                "failed": (client.get("failed-environments") or {}).get(environment),
            }
        )
    return answer


def _active(entry: Mapping[str, Any]) -> dict[str, Any]:
    """Describe a queued or running deploy of the environment."""
    return {
        key: entry[key]
        for key in ("id", "queued_at", "started_at", "worker", "blocked")
        if entry.get(key) is not None
    }
