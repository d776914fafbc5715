"""Gauges computed when ``/metrics`` is scraped, from state the services keep.

The deploy queue's length and the file-sync clients' lag are not counted as
things happen: they are read from the queue's active index and from the
clients' check-ins at scrape time, so they are right whichever process
changed them and need no bookkeeping in the writers. So is whether the
state branch has moved back (:class:`RewoundGauge`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from gitstate.deploys.queue import DeployQueue
from gitstate.engine.storage import Storage
from gitstate.filesync.checkins import CheckIns
from gitstate.store.branch import Store

#: Statuses reported even when no deploy has them, so alerts see a zero.
QUEUE_STATUSES = ("queued", "deploying")
#: Longest stretch of code-commit history walked to find what a client lacks.
MAX_WALK = 10_000


class DeployQueueGauge:
    """``gitstate_deploy_queue{status}``: unfinished deploys by status."""

    def __init__(self, queue: DeployQueue) -> None:
        self._queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Count the queue's active entries now."""
        counts = dict.fromkeys(QUEUE_STATUSES, 0)
        for entry in self._queue.active():
            status = str(entry.get("status", "unknown"))
            counts[status] = counts.get(status, 0) + 1
        family = GaugeMetricFamily(
            "gitstate_deploy_queue", "Deploys not finished yet, by status.", labels=["status"]
        )
        for status, count in sorted(counts.items()):
            family.add_metric([status], count)
        yield family


class SyncLagGauge:
    """``gitstate_filesync_lag_seconds{client}``: how long a client has lacked code.

    A client that has the current code-commit lags 0 seconds. Otherwise its
    lag is the age of the oldest code-commit it has not synced: the first
    commit published after the one it checked in with. That keeps growing
    while a client is stuck, however often new code is published (the age
    of the newest missing commit would drop back with every deploy).

    Args:
        storage: the storage repository (``DATADIR/storage.git``).
        check_ins: the clients' check-ins.
        clients: the configured clients' names; they are reported even
            before their first check-in.
        clock: seconds since the epoch (tests pass their own).
    """

    def __init__(
        self,
        storage: Path,
        check_ins: CheckIns,
        clients: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._storage_path = storage
        self._storage: Storage | None = None
        self._check_ins = check_ins
        self._clients = tuple(clients)
        self._clock = clock

    def lags(self) -> dict[str, float]:
        """Return each client's lag in seconds."""
        synced: dict[str, str | None] = dict.fromkeys(self._clients)
        for name, record in self._check_ins.all().items():
            synced[name] = record.get("code_commit")
        if not synced:
            return {}
        if self._storage is None:
            self._storage = Storage(self._storage_path)
        history = _history(self._storage, {commit for commit in synced.values() if commit})
        now = self._clock()
        return {name: _lag(history, commit, now) for name, commit in sorted(synced.items())}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Report every client's lag now."""
        family = GaugeMetricFamily(
            "gitstate_filesync_lag_seconds",
            "Age of the oldest code-commit a file-sync client has not synced (0 when current).",
            labels=["client"],
        )
        for name, lag in self.lags().items():
            family.add_metric([name], lag)
        yield family


class RewoundGauge:
    """``gitstate_state_branch_rewound``: 1 while the state branch has moved back.

    Read at scrape time from the branch and the mark every writer keeps
    (:mod:`gitstate.store.rewind`), so it says the same in every process and
    drops to 0 as soon as an operator restores the branch or accepts its tip.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Check the branch now."""
        yield GaugeMetricFamily(
            "gitstate_state_branch_rewound",
            "1 while the state branch does not contain the last commit gitstate made "
            "(moved back behind its back; writes are refused), else 0.",
            value=1 if self._store.rewound() is not None else 0,
        )


def _history(storage: Storage, wanted: set[str]) -> list[tuple[str, int]]:
    """Walk the code ref's first parents from the tip until every wanted commit is seen."""
    tip = storage.code_commit()
    history: list[tuple[str, int]] = []
    if tip is None:
        return history
    repo = storage.repo
    commit: Any = repo[tip]
    missing = set(wanted)
    while commit is not None and len(history) < MAX_WALK:
        oid = str(commit.id)
        history.append((oid, int(commit.commit_time)))
        missing.discard(oid)
        if not missing:
            break
        commit = commit.parents[0] if commit.parents else None
    return history


def _lag(history: Sequence[tuple[str, int]], synced: str | None, now: float) -> float:
    if not history or synced == history[0][0]:
        return 0.0
    oldest_missing = history[-1][1]
    for (_newer, newer_time), (commit, _time) in itertools.pairwise(history):
        if commit == synced:
            oldest_missing = newer_time
            break
    return max(0.0, now - oldest_missing)


def collectors(
    queue: DeployQueue,
    storage: Path,
    check_ins: CheckIns,
    clients: Iterable[str],
    state: Store | None = None,
) -> list[Any]:
    """Return the scrape-time collectors of one server process."""
    found: list[Any] = [DeployQueueGauge(queue), SyncLagGauge(storage, check_ins, list(clients))]
    if state is not None:
        found.append(RewoundGauge(state))
    return found


def for_services(services: Any) -> list[Any]:
    """Return the scrape-time collectors of a :class:`gitstate.services.Services`."""
    file_sync = services.file_sync
    return collectors(
        services.code_manager.queue,
        file_sync.storage_path,
        file_sync.check_ins,
        [client.name for client in file_sync.settings.clients],
        services.store,
    )
