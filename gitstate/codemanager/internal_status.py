"""``/internal/status``: gatekeeper's status document, with gitstate's parts.

gatekeeper answers ``GET /internal/status.json`` (and ``/internal/status``
for JSON clients) with ``application``, ``system``, ``team`` and
``serviceSpecs`` sections; monitors read ``application.status``. gitstate
fills those in and adds what an operator of gitstate looks at first: the
state commit, the deploy workers and the file-sync clients. Each of those
has an entry in ``application.statusDetails``, and the overall status is
the worst of them:

* ``state``: ERROR while the state branch has moved back behind gitstate's
  back (writes are refused until an operator acts), else OK;
* ``deploy-workers``: WARNING when deploys are queued and no worker of the
  configured pool holds its slot lock (nothing will deploy them), else OK;
* ``file-sync``: WARNING when storage has published code and a configured
  client does not have it, else OK.
"""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime
from typing import Any

from gitstate import __version__
from gitstate.config import Config
from gitstate.deploys.queue import DeployQueue
from gitstate.deploys.worker import slot_is_dead, worker_slot
from gitstate.filesync.server import FileSyncService
from gitstate.store.branch import DEFAULT_REF, Store

_ORDER = ("OK", "WARNING", "ERROR")


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


def _worst(statuses: list[str]) -> str:
    return max(statuses, key=_ORDER.index, default="OK")


def deploy_workers(config: Config, queue: DeployQueue) -> list[dict[str, Any]]:
    """Return each configured worker slot: alive (holds its lock) and what it deploys."""
    lockdir = config.datadir / "locks"
    deploying: dict[int, list[dict[str, Any]]] = {}
    for entry in queue.active():
        if entry.get("status") != "deploying":
            continue
        slot = worker_slot(str(entry.get("worker", "")))
        if slot is not None:
            deploying.setdefault(slot, []).append(
                {
                    "id": entry["id"],
                    "environment": entry["environment"],
                    "started-at": entry.get("started_at"),
                }
            )
    slots = range(max(config.deploy.pool_size, max(deploying, default=-1) + 1))
    return [
        {
            "slot": slot,
            "alive": not slot_is_dead(lockdir, slot),
            "deploying": deploying.get(slot, []),
        }
        for slot in slots
    ]


def internal_status(
    config: Config,
    store: Store,
    queue: DeployQueue,
    file_sync: FileSyncService,
    *,
    started_at: float,
    now: float | None = None,
) -> dict[str, Any]:
    """Return the status document of ``/internal/status.json``."""
    now = time.time() if now is None else now
    commit = store.head()
    rewind = store.rewound()
    state_detail = (
        {"status": "OK", "message": f"{DEFAULT_REF} at {commit or '(no commit yet)'}"}
        if rewind is None
        else {
            "status": "ERROR",
            "message": f"{rewind.ref} moved back to {rewind.found}; expected {rewind.expected}",
        }
    )
    workers = deploy_workers(config, queue)
    alive = sum(1 for worker in workers if worker["alive"])
    waiting = sum(1 for entry in queue.active() if entry.get("status") == "queued")
    workers_detail = {
        "status": "WARNING" if waiting and not alive else "OK",
        "message": f"{alive} of {len(workers)} deploy workers alive; {waiting} deploys queued",
    }
    clients = file_sync.client_status()
    configured = {client.name for client in config.file_sync.clients}
    published = file_sync.code_commit()
    behind = sorted(
        name
        for name, item in clients["file-sync-clients"].items()
        if name in configured and published is not None and item["code-commit"] != published
    )
    sync_detail = {
        "status": "WARNING" if behind else "OK",
        "message": f"not synced: {', '.join(behind)}" if behind else "every client is synced",
    }
    details = {"state": state_detail, "deploy-workers": workers_detail, "file-sync": sync_detail}
    _, _, port = config.listen.rpartition(":")
    return {
        "application": {
            "name": "gitstate",
            "description": "Code Manager's deploys and gatekeeper's gates, state in git",
            "group": "gitstate",
            "environment": None,
            "version": __version__,
            "commit": commit,
            "vcs_link": None,
            "status": _worst([detail["status"] for detail in details.values()]),
            "statusDetails": details,
        },
        "system": {
            "hostname": socket.gethostname(),
            "port": int(port) if port.isdigit() else None,
            "systemtime": _iso(now),
            "systemstarttime": _iso(started_at),
            "uptime": round(now - started_at, 3),
        },
        "team": {},
        "serviceSpecs": {},
        "state": {"ref": DEFAULT_REF, "commit": commit},
        "deploy-workers": workers,
        "file-sync-clients": clients["file-sync-clients"],
    }
