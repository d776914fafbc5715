"""Scheduled git maintenance of the state and storage repositories.

Every state write and every deploy adds loose objects (a commit, a few
trees, the changed blobs: about 20 KiB per state commit on disk). Left
alone, the object directories grow by hundreds of MiB per 100,000 writes
and reading them slows down. Maintenance packs them, writes a
commit-graph (with changed-path Bloom filters, which ``git log -- PATH``
benefits from) and packs the refs. It also brings the state repository's
history index (:mod:`gitstate.store.history_index`) up to the tip, building it
if the repository has none, so that no user's request pays for that.

It is safe while gitstate writes: git never deletes an object that is not
in a pack unless it is older than the prune grace period (two weeks), so an
object a writer has just made but not yet committed to a ref survives; and
packing refs takes each ref's ``.lock`` just like a writer does, which the
state store waits out and retries.

One race remains, and maintenance steps around it: removing loose objects
that are now packed (``git prune-packed``, also run by the ``loose-objects``
task and by ``git gc``) deletes the emptied ``objects/xx`` directories, and
libgit2 creates that directory and then renames its new object into it, so
a write landing in between fails (ENOENT). Those steps therefore run while
holding the writers' host lock (``gitstate-writer.lock`` of the state
repository, ``gitstate-code.lock`` of storage): local writers wait for them,
as they wait for each other. The step costs about 2 s per 10,000 state
operations' worth of loose objects; ``git gc`` holds the lock throughout.

Two strategies (``maintenance.strategy``):

``incremental`` (default)
    ``git maintenance run`` with the ``loose-objects``,
    ``incremental-repack`` and ``commit-graph`` tasks, then
    ``git prune-packed`` and ``git pack-refs --all``. Work is bounded by what
    is new, so it suits large, long-lived repositories.
``gc``
    ``git gc`` (a full repack: smallest result, work grows with the
    repository), then a commit-graph with changed paths.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gitstate.base.hostlock import HostLock
from gitstate.errors import GitStateError
from gitstate.settings import MAINTENANCE_STRATEGIES, MaintenanceSettings
from gitstate.store.branch import Store

STRATEGIES = MAINTENANCE_STRATEGIES
#: The host locks gitstate's writers of each repository queue on.
WRITER_LOCKS = ("gitstate-writer.lock", "gitstate-code.lock")
#: Longest maintenance waits for the writers' lock.
LOCK_TIMEOUT = 60.0


class MaintenanceError(GitStateError, RuntimeError):
    """A git maintenance command failed."""

    def __init__(self, repo: Path, command: Sequence[str], detail: str) -> None:
        self.repo = repo
        self.command = list(command)
        self.detail = detail
        super().__init__(f"{repo}: git {' '.join(command)} failed: {detail}")


class MaintenanceConfigError(GitStateError, ValueError):
    """A maintenance strategy gitstate does not know was asked for."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"maintenance: {detail}")


@dataclasses.dataclass(frozen=True)
class ObjectCounts:
    """What ``git count-objects -v`` says, in bytes."""

    loose: int
    loose_bytes: int
    packed: int
    pack_bytes: int
    packs: int

    @property
    def total_bytes(self) -> int:
        """Loose plus packed bytes."""
        return self.loose_bytes + self.pack_bytes


@dataclasses.dataclass(frozen=True)
class Report:
    """One repository's maintenance: sizes before and after."""

    repo: Path
    before: ObjectCounts
    after: ObjectCounts
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        return {
            "repo": str(self.repo),
            "before": dataclasses.asdict(self.before),
            "after": dataclasses.asdict(self.after),
            "seconds": round(self.seconds, 3),
        }


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_DIR": str(repo)}
    try:
        result = subprocess.run(
            ["git", *args], env=env, capture_output=True, text=True, check=True, timeout=3600
        )
    except subprocess.CalledProcessError as ex:
        raise MaintenanceError(repo, args, (ex.stderr or "").strip() or str(ex)) from ex
    except (OSError, subprocess.TimeoutExpired) as ex:
        raise MaintenanceError(repo, args, str(ex)) from ex
    return result.stdout


def count_objects(repo: Path) -> ObjectCounts:
    """Return the repository's object counts and sizes.

    Raises:
        MaintenanceError: git could not read the repository.
    """
    fields: dict[str, int] = {}
    for line in _git(repo, "count-objects", "-v").splitlines():
        key, _, value = line.partition(":")
        if value.strip().isdigit():
            fields[key.strip()] = int(value)
    return ObjectCounts(
        loose=fields.get("count", 0),
        loose_bytes=fields.get("size", 0) * 1024,
        packed=fields.get("in-pack", 0),
        pack_bytes=fields.get("size-pack", 0) * 1024,
        packs=fields.get("packs", 0),
    )


def maintain(repo: Path, strategy: str = "incremental") -> Report:
    """Pack objects and refs and write the commit-graph of one bare repository.

    Raises:
        MaintenanceError: a git command failed (the repository is left as
            git leaves it: every step is safe to interrupt).
    """
    if strategy not in STRATEGIES:
        raise MaintenanceConfigError(f"strategy must be one of {', '.join(STRATEGIES)}")
    started = time.monotonic()
    before = count_objects(repo)
    if strategy == "gc":
        with writers_paused(repo):
            _git(repo, "gc", "--quiet")
    else:
        with writers_paused(repo):
            _git(repo, "maintenance", "run", "--quiet", "--task=loose-objects")
            # loose-objects packs the loose objects but deletes them only on
            # its next run; drop the copies that are in a pack now.
            _git(repo, "prune-packed")
        if count_objects(repo).packs:  # the task fails on a repository without packs
            _git(repo, "maintenance", "run", "--quiet", "--task=incremental-repack")
        _git(repo, "pack-refs", "--all")
    _git(repo, "commit-graph", "write", "--reachable", "--changed-paths")
    return Report(repo, before, count_objects(repo), time.monotonic() - started)


@contextlib.contextmanager
def writers_paused(repo: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the host locks gitstate's writers of ``repo`` take (see the module docs).

    Raises:
        MaintenanceError: the writers kept a lock for ``timeout`` seconds.
    """
    with contextlib.ExitStack() as stack:
        for name in WRITER_LOCKS:
            if not (repo / name).exists():
                continue
            lock = HostLock(repo / name)
            stack.callback(lock.close)
            if not lock.acquire(timeout):
                raise MaintenanceError(repo, ["maintenance"], f"writers held {name} for {timeout}s")
            stack.callback(lock.release)
        yield


def repositories(datadir: Path) -> list[Path]:
    """Return the data directory's repositories that exist: state, then storage."""
    found = []
    for name in ("state.git", "storage.git"):
        path = datadir / name
        if (path / "HEAD").exists():
            found.append(path)
    return found


def maintain_all(datadir: Path, settings: MaintenanceSettings) -> list[Report]:
    """Maintain every repository of the data directory and index the state's history."""
    reports = [maintain(repo, settings.strategy) for repo in repositories(datadir)]
    state = datadir / "state.git"
    if (state / "HEAD").exists():
        store = Store(state, create=False)
        try:
            store.index_history(wait=LOCK_TIMEOUT)
        finally:
            store.close()
    return reports
