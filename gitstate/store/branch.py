"""The state branch: snapshot reads and compare-and-swap transactions.

All of gitstate's state is YAML records committed to one branch
(``refs/heads/state``) of one bare repository. This module is the only
place, apart from the tree builders of the deploy code, that talks to
pygit2. It offers three things:

* **Snapshots.** A :class:`Snapshot` is the state at one commit. The latest
  one is cached per process and brought forward by a tree diff when the ref
  moves, and parsed records are cached by blob id, which can never be stale.
* **Transactions.** :meth:`Store.transact` applies a change function to a
  snapshot and writes its blobs before taking any lock; under the locks it
  keeps that work if what the change read is unchanged at the tip (and runs
  the change again on the tip otherwise), writes only the trees on changed
  paths, commits, and advances the ref by compare-and-swap. If another
  writer got there first the change function runs again on the new tip.
  Writers on one host queue on an ``flock`` so that they do not storm the
  ref; the CAS still guards against writers we do not know about. A
  ``.lock`` file left by a killed process is removed once it is old enough
  to be certainly dead. A tip that no longer contains the last commit a
  writer set (moved back behind our back) is refused
  (:mod:`gitstate.store.rewind`).
* **The past.** State at a commit or at a point in time, read from the
  first-parent chain of the branch, and the history of one record, found
  through an index of which commit changed which record
  (:mod:`gitstate.store.history_index`) that every writer keeps current.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import random
import re
import socket
import sqlite3
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import pygit2
from pygit2.enums import FileMode, SortMode

from gitstate.base import durable, metrics
from gitstate.base.bare import create_bare
from gitstate.base.hostlock import HostLock, break_stale_ref_locks
from gitstate.errors import BAD_REQUEST, NOT_FOUND, UNAVAILABLE, GitStateError
from gitstate.store import codec, history_index
from gitstate.store.pushqueue import PushQueue
from gitstate.store.rewind import BranchRewound, Rewind, SeenTip
from gitstate.store.upstream import Diverged, SharedRef, fast_forward

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_REF = "refs/heads/state"
SERVICE_NAME = "gitstate"
TRAILER_KEYS = ("Actor", "Request-Id", "Operation")
#: Longest time the first writer in line polls for the host lock rather than
#: sleeping (see HostLock); a commit holds it for about half a millisecond
#: without fsync.
WRITER_SPIN = 0.002
_MAX_COMPONENT = 255
#: Parsed trees kept per process (see Store._tree).
_TREE_CACHE = 512


class PathError(GitStateError, ValueError):
    """A record path is not a safe relative path of plain names."""

    status = 400
    kind = BAD_REQUEST

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"bad record path {path!r}: {detail}")


class StoreBusy(GitStateError, TimeoutError):
    """A write could not be committed before its deadline.

    Attributes:
        ref: the branch that could not be advanced.
        waited: seconds spent before giving up.
        attempts: how many times the change was applied.
    """

    # The writers may be done in a moment: ask the client to come back.
    status = 503
    kind = UNAVAILABLE
    retry_after = 1

    def __init__(self, ref: str, waited: float, attempts: int, reason: str) -> None:
        self.ref = ref
        self.waited = waited
        self.attempts = attempts
        self.reason = reason
        super().__init__(
            f"could not update {ref} within {waited:.1f}s after {attempts} attempt(s): {reason}"
        )


class _WriteFailed(Exception):
    """Writing objects failed in one attempt (retried until the deadline)."""

    def __init__(self, cause: Exception) -> None:
        self.cause = cause
        super().__init__(str(cause))


class RevisionNotFound(GitStateError, LookupError):
    """A commit or time asked for is not in the state branch's history."""

    status = 404
    kind = NOT_FOUND

    def __init__(self, revision: str, detail: str = "not found in the state history") -> None:
        self.revision = revision
        super().__init__(f"{revision}: {detail}")


_ZERO = bytes(20)
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


@functools.lru_cache(maxsize=16384)
def check_path(path: str) -> tuple[str, ...]:
    """Split a record path into its components, refusing anything unsafe.

    A path is ``/``-separated names; each name is non-empty, not ``.`` or
    ``..``, has no control characters or backslashes and is at most 255
    bytes, so that a record path can never leave the state tree nor be
    written differently by two clients.

    Raises:
        PathError: the path is unsafe.
    """
    if not isinstance(path, str) or not path:
        raise PathError(str(path), "empty")
    if _UNSAFE_CHARS.search(path):
        raise PathError(path, "control characters and backslashes are not allowed")
    parts = tuple(path.split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise PathError(path, f"component {part!r} is not allowed")
        if len(part.encode()) > _MAX_COMPONENT:
            raise PathError(path, f"component longer than {_MAX_COMPONENT} bytes")
    return parts


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who a commit is made for: the acting user and the request.

    Attributes:
        actor: who acts (the ``Actor:`` trailer and the author).
        request_id: the request (``Request-Id:``).
        notes: more ``(key, value)`` trailers, written after ``Actor:``
            (a webhook's ``Pushed-By:``); values are put on one line.
    """

    actor: str = SERVICE_NAME
    request_id: str | None = None
    notes: tuple[tuple[str, str], ...] = ()

    def signature(self, when: float) -> pygit2.Signature:
        """Return a pygit2 signature for this actor at ``when``."""
        name = self.actor or SERVICE_NAME
        email = name if "@" in name else f"{name}@{SERVICE_NAME}"
        return pygit2.Signature(name, email, int(when), 0)


@functools.lru_cache(maxsize=4)
def _service_signature(when: int) -> pygit2.Signature:
    """Return the committer signature of the service at ``when`` (whole seconds)."""
    return Identity().signature(when)


class _ParseCache:
    """Parsed records keyed by blob id; a blob id names its bytes forever."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[pygit2.Oid, dict[str, Any]] = OrderedDict()

    def get(self, oid: pygit2.Oid) -> dict[str, Any] | None:
        item = self._items.get(oid)
        if item is not None:
            self._items.move_to_end(oid)
        return item

    def put(self, oid: pygit2.Oid, record: dict[str, Any]) -> None:
        self._items[oid] = record
        self._items.move_to_end(oid)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


class Snapshot:
    """The state at one commit of the state branch; read-only.

    Records handed out are private copies, so callers may change them.

    The index of every record path (needed only to list records) is built
    lazily: a snapshot that follows another one keeps a reference to it and
    the change between them (the paths a transaction wrote, or nothing, which
    means "diff the two trees"), and materialises its index from the nearest
    ancestor that has one. A commit therefore costs O(changed records), not
    O(all records), however large the state grows.
    """

    #: Longest chain of lazy snapshots kept; a longer one is cut, and the
    #: index, if ever asked for, is then built by walking the tree.
    MAX_CHAIN = 256

    def __init__(
        self,
        store: Store,
        commit: pygit2.Commit | None,
        index: dict[str, pygit2.Oid] | None = None,
        *,
        base: Snapshot | None = None,
        delta: Mapping[str, pygit2.Oid | None] | None = None,
        ids: tuple[pygit2.Oid, pygit2.Oid] | None = None,
    ) -> None:
        """``ids`` (commit id, tree id) stand for ``commit`` when it is not read yet."""
        self._store = store
        self._loaded = commit
        self._commit_id: pygit2.Oid | None
        self._tree_id: pygit2.Oid | None
        if commit is not None:
            self._commit_id, self._tree_id = commit.id, commit.tree_id
        elif ids is not None:
            self._commit_id, self._tree_id = ids
        else:
            self._commit_id = self._tree_id = None
        self._index = index
        self._base = base if index is None else None
        self._delta = delta
        self._depth = base._depth + 1 if self._base is not None else 0
        if self._depth > self.MAX_CHAIN:
            # PERF: materialising here cost a tree diff per foreign commit in
            # the chain on every write path, though writers rarely list
            # records; a walk when listing is cheaper overall.
            self._base = None
            self._delta = None
            self._depth = 0

    @property
    def _commit(self) -> pygit2.Commit | None:
        """The commit object, read when first asked for.

        A writer knows the ids of the commit it has just made, and its next
        transaction needs only those, so the object is not read back then.
        """
        if self._loaded is None and self._commit_id is not None:
            with self._store._mutex:
                self._loaded = self._store._repo[self._commit_id]
        return self._loaded

    @property
    def commit(self) -> str | None:
        """Hex id of the commit, or None for a branch that has no commit yet."""
        return str(self._commit_id) if self._commit_id is not None else None

    @property
    def time(self) -> datetime | None:
        """When the commit was made, in UTC."""
        commit = self._commit
        if commit is None:
            return None
        return datetime.fromtimestamp(commit.commit_time, UTC)

    @property
    def tree_id(self) -> pygit2.Oid | None:
        """Id of the commit's tree."""
        return self._tree_id

    def _blobs(self) -> dict[str, pygit2.Oid]:
        """Return the path → blob id index, materialising it if needed."""
        if self._index is not None:
            return self._index
        with self._store._mutex:
            return self._materialise()

    def _materialise(self) -> dict[str, pygit2.Oid]:
        if self._index is not None:
            return self._index  # another thread got here first
        chain: list[Snapshot] = []
        node: Snapshot | None = self
        while node is not None and node._index is None:
            chain.append(node)
            node = node._base
        index = dict(node._index) if node is not None and node._index is not None else None
        previous = node
        for snap in reversed(chain):
            if index is None:
                index = self._store._walk(snap._commit)
            elif snap._delta is not None:
                for path, oid in snap._delta.items():
                    if oid is None:
                        index.pop(path, None)
                    else:
                        index[path] = oid
            else:
                self._store._apply_diff(index, previous._commit if previous else None, snap._commit)
            previous = snap
        for snap in chain:
            # Each snapshot of the chain could keep its own copy, but only
            # this one was asked for; the others just drop their chain.
            snap._base = None
            snap._delta = None
        self._index = index if index is not None else {}
        for snap in chain[1:]:
            snap._depth = 0
        return self._index

    def blob_id(self, path: str) -> pygit2.Oid | None:
        """Return the blob id of the record at ``path``, or None."""
        if self._index is not None:
            return self._index.get(path)
        if self._tree_id is None:
            return None
        check_path(path)
        return self._store._lookup(self._tree_id, path)

    def get(self, path: str) -> dict[str, Any] | None:
        """Return a copy of the record at ``path``, or None if there is none.

        Raises:
            RecordError: the record exists but cannot be read.
        """
        return self.record_of(self.blob_id(path), path)

    def record_of(self, oid: pygit2.Oid | None, path: str) -> dict[str, Any] | None:
        """Return a copy of the record stored as blob ``oid`` at ``path`` (None for None)."""
        if oid is None:
            return None
        return codec.thaw(self._store._parse(oid, path, self.commit))

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self.blob_id(path) is not None

    def paths(self, prefix: str = "") -> list[str]:
        """Return the sorted paths of every record under directory ``prefix``.

        A prefix is read from its subtree, so listing one directory costs
        what it holds, not every record of the state (deploy records alone
        grow by one per deploy, forever).
        """
        if not prefix:
            return sorted(self._blobs())
        directory = prefix.rstrip("/")
        if self._tree_id is None:
            return []
        check_path(directory)
        found = self._store._subtree_blobs(self._tree_id, directory)
        return sorted(f"{directory}/{rel}" for rel in found)

    def names(self, directory: str) -> list[str]:
        """Return the sorted names of the records directly in ``directory``.

        One tree read: what a queue kept as one record per entry lists.
        """
        if self._tree_id is None:
            return []
        check_path(directory)
        return self._store._list(self._tree_id, directory)

    def records(self, prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(path, record)`` for every record under ``prefix``."""
        for path in self.paths(prefix):
            record = self.get(path)
            if record is not None:
                yield path, record


class Draft:
    """A snapshot being changed inside a transaction.

    Reads see the draft's own writes. ``subject`` and ``body`` may be set by
    the change function to describe, in plain words, what it did.

    The draft remembers what it read from its base (each record's blob id,
    each listing) so that :meth:`Store.transact` can tell whether a change
    prepared on one snapshot would come out the same on a later one. Reading
    :attr:`base` itself makes the change depend on that exact commit.
    """

    def __init__(self, base: Snapshot, subject: str) -> None:
        self._base = base
        self.subject = subject
        self.body = ""
        self.changes: dict[str, dict[str, Any] | None] = {}
        self._reads: dict[str, pygit2.Oid | None] = {}
        self._listings: dict[str, list[str]] = {}
        self._names: dict[str, list[str]] = {}
        self._pinned = False

    @property
    def base(self) -> Snapshot:
        """The snapshot this draft changes (the change then depends on its commit)."""
        self._pinned = True
        return self._base

    def get(self, path: str) -> dict[str, Any] | None:
        """Return a copy of the record at ``path`` as this draft sees it."""
        if path in self.changes:
            return codec.thaw(self.changes[path])
        oid = self._base.blob_id(path)
        self._reads.setdefault(path, oid)
        return self._base.record_of(oid, path)

    def paths(self, prefix: str = "") -> list[str]:
        """Return the paths under ``prefix`` as this draft sees them."""
        start = prefix.rstrip("/") + "/" if prefix else ""
        listing = self._base.paths(prefix)
        self._listings.setdefault(prefix, listing)
        paths = set(listing)
        for path, record in self.changes.items():
            if path.startswith(start):
                if record is None:
                    paths.discard(path)
                else:
                    paths.add(path)
        return sorted(paths)

    def names(self, directory: str) -> list[str]:
        """Return the names of the records directly in ``directory`` as this draft sees them."""
        listing = self._base.names(directory)
        self._names.setdefault(directory, listing)
        names = set(listing)
        start = directory.rstrip("/") + "/"
        for path, record in self.changes.items():
            if path.startswith(start) and "/" not in path[len(start) :]:
                if record is None:
                    names.discard(path[len(start) :])
                else:
                    names.add(path[len(start) :])
        return sorted(names)

    def put(self, path: str, record: Mapping[str, Any]) -> None:
        """Write ``record`` at ``path`` (validated when the draft is committed)."""
        check_path(path)
        self.changes[path] = codec.thaw(dict(record))

    def delete(self, path: str) -> None:
        """Remove the record at ``path``; removing a missing record is a no-op."""
        check_path(path)
        self.changes[path] = None

    def reads_same_on(self, snap: Snapshot) -> bool:
        """Tell whether everything this draft read from its base reads the same in ``snap``.

        If so, the change function would have done exactly the same on
        ``snap``, so its writes may be committed on top of ``snap`` without
        running it again. A draft that looked at its base commit itself
        (``draft.base``) only matches that commit.
        """
        if snap.commit == self._base.commit:
            return True
        if self._pinned:
            return False
        for path, oid in self._reads.items():
            if snap.blob_id(path) != oid:
                return False
        if any(snap.names(name) != listing for name, listing in self._names.items()):
            return False
        return all(snap.paths(prefix) == listing for prefix, listing in self._listings.items())


@dataclasses.dataclass(frozen=True)
class Committed(Generic[T]):
    """What a transaction did.

    Attributes:
        value: what the change function returned.
        commit: the new state commit, or None when nothing changed.
        snapshot: the state after the transaction.
        attempts: how many times the change function ran.
    """

    value: T
    commit: str | None
    snapshot: Snapshot
    attempts: int


@dataclasses.dataclass(frozen=True)
class Change:
    """One commit in the history of a record."""

    commit: str
    time: datetime
    actor: str
    subject: str
    operation: str | None
    request_id: str | None
    record: dict[str, Any] | None
    """The record as that commit left it (None when it was deleted)."""


@dataclasses.dataclass(frozen=True)
class PathChange:
    """One record a commit added, changed or removed, by blob id.

    ``before`` is None for a record the commit added, ``after`` for one it
    removed; the ids name the bytes, so :meth:`Store.blob_record` and
    :meth:`Store.blob_text` read either side whenever asked.
    """

    path: str
    before: str | None
    after: str | None

    @property
    def kind(self) -> str:
        """``added``, ``deleted`` or ``modified``."""
        if self.before is None:
            return "added"
        return "deleted" if self.after is None else "modified"


@dataclasses.dataclass(frozen=True)
class Step:
    """One commit of the state branch and the records it changed."""

    change: Change
    """The commit's metadata (``record`` is None)."""
    parent: str | None
    paths: tuple[PathChange, ...]


_Blobs = dict[str, tuple[pygit2.Oid | None, dict[str, Any] | None]]


@dataclasses.dataclass(frozen=True)
class _Prepared(Generic[T]):
    """A change applied to some snapshot, its blobs already in the object store.

    Committing it on a later tip is the same as running the change again
    there when everything the draft read is unchanged
    (:meth:`Draft.reads_same_on`): the change function is deterministic in
    what it reads, and writes to paths it did not read are ordered after
    whatever the tip did to them.
    """

    draft: Draft
    value: T
    blobs: _Blobs


@dataclasses.dataclass(frozen=True)
class _Job(Generic[T]):
    """What one transaction was asked to do, handed down the locked write path."""

    change: Callable[[Draft], T]
    subject: str
    operation: str
    identity: Identity
    started: float
    until: float


@dataclasses.dataclass
class _Outcome(Generic[T]):
    """What one successful round of a transaction produced (see :meth:`Store._attempt`).

    ``commit`` is None when the change wrote nothing; ``delta`` maps each
    changed path to its new blob id (None for a deletion).
    """

    value: T
    base: Snapshot
    commit: pygit2.Oid | None = None
    delta: dict[str, pygit2.Oid | None] = dataclasses.field(default_factory=dict)
    tree: pygit2.Oid | None = None

    @property
    def commit_hex(self) -> str | None:
        return str(self.commit) if self.commit is not None else None


@dataclasses.dataclass
class _Tally:
    """What one transaction did, counted as it goes and sent to the metrics at the end.

    The metrics are recorded only after the host lock is released (see
    :meth:`Store.transact`).
    """

    runs: int = 0
    """How many times the change function ran."""
    prepared: list[bool] = dataclasses.field(default_factory=list)
    """For each prepared change looked at: whether it was kept."""
    conflicts: int = 0
    committed: bool = False

    def report(self, operation: str) -> None:
        for kept in self.prepared:
            metrics.prepared_change(kept)
        for _ in range(self.conflicts):
            metrics.cas_conflict()
        if self.committed:
            metrics.state_committed(operation)


class _Optimism:
    """Whether preparing changes before taking the locks is paying off here.

    Writers that all change one record (a counter) find the tip moved under
    nearly every prepared change, and preparing then only doubles the work.
    The success rate is kept as a moving average that forgets quickly (four
    misses in a row turn preparing off, one probe that works turns it back
    on); below a third, changes are made under the lock, with a probe every
    sixteenth transaction to notice when the contention is over.
    """

    THRESHOLD = 0.33
    PROBE_EVERY = 16

    def __init__(self) -> None:
        self.rate = 1.0
        self._skipped = 0

    def worth_trying(self) -> bool:
        """Tell whether the next transaction should prepare its change."""
        if self.rate >= self.THRESHOLD:
            return True
        self._skipped += 1
        if self._skipped >= self.PROBE_EVERY:
            self._skipped = 0
            return True
        return False

    def record(self, reused: bool) -> None:
        """Note whether a prepared change could be committed as it was."""
        self.rate = 0.7 * self.rate + (0.3 if reused else 0.0)


class Store:
    """The state branch of one bare repository.

    One instance per process is enough; it is safe to share between threads
    and reopens the repository after a fork, so it may be created before
    gunicorn forks its workers.

    Args:
        path: the bare repository (created if ``create`` and missing).
        ref: the branch holding the state.
        fsync: flush objects, then the ref, to disk before a commit is
            acknowledged (:mod:`gitstate.base.durable`).
        deadline: default seconds a write may take before :class:`StoreBusy`.
        stale_lock_after: age in seconds after which a ``.lock`` file on the
            ref is taken to be left by a dead process and removed.
        cache_size: how many parsed records to keep per process.
        upstream: the git server sharing the branch with other gitstate
            servers (docs/cluster.md), or None when this host alone holds
            it. With one, a write is acknowledged only once a push to the
            git server has advanced its ref from the tip the change ran on.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        ref: str = DEFAULT_REF,
        *,
        create: bool = True,
        fsync: bool = False,
        deadline: float = 10.0,
        stale_lock_after: float = 5.0,
        cache_size: int = 65536,
        upstream: SharedRef | None = None,
    ) -> None:
        self.path = Path(path)
        self.upstream = upstream
        self.ref = ref
        self.fsync = fsync
        self.deadline = deadline
        self.stale_lock_after = stale_lock_after
        self._cache_size = cache_size
        if create:
            init_repository(self.path)
        elif not (self.path / "HEAD").exists():
            raise FileNotFoundError(f"no state repository at {self.path}")
        self._reset()
        # libgit2 handles, locks and the flock descriptor must not cross a
        # fork: a child (a gunicorn worker, a multiprocessing writer) starts
        # afresh. A weak reference keeps the hook from pinning the store.
        reset = weakref.WeakMethod(self._reset)
        os.register_at_fork(after_in_child=lambda: _call_if_alive(reset))

    # -- process and thread plumbing -------------------------------------------------

    def _reset(self) -> None:
        """Drop everything that must not cross a fork."""
        self._repo_obj: pygit2.Repository | None = None
        self._mutex = threading.RLock()
        self._writer = threading.Lock()
        self._latest: Snapshot | None = None
        self._parsed = _ParseCache(self._cache_size)
        self._trees: OrderedDict[pygit2.Oid, pygit2.Tree] = OrderedDict()
        self._lock: HostLock | None = None
        self._optimism = _Optimism()
        self._index = history_index.HistoryIndex(self.path, self.ref)
        self._since_indexed = 0
        self._seen = SeenTip(self.path, self.ref)
        self._pushes = PushQueue(self) if self.upstream is not None else None

    @property
    def _repo(self) -> pygit2.Repository:
        if self._repo_obj is None:
            repo = pygit2.Repository(str(self.path))
            _pin_ident(repo)
            self._repo_obj = repo
        return self._repo_obj

    def close(self) -> None:
        """Release the repository handle and the lock file descriptor."""
        with self._mutex:
            self._trees.clear()
            if self._repo_obj is not None:
                self._repo_obj.free()
                self._repo_obj = None
            if self._lock is not None:
                self._lock.close()
                self._lock = None
            self._latest = None
        self._index.close()

    # -- reads ---------------------------------------------------------------------

    def head(self) -> str | None:
        """Return the hex id of the branch tip, or None before the first commit."""
        with self._mutex:
            ref = self._lookup_ref()
            return str(ref.target) if ref is not None else None

    def ids(self, paths: Sequence[str]) -> tuple[str | None, ...]:
        """Return the object id of each path (a record or a directory) at the tip.

        A few lookups in cached trees, no snapshot: a process that only
        cares about part of the branch (a deploy worker, about ``deploys/``)
        can tell whether a new tip changed that part before it reads more.
        """
        with self._mutex:
            ref = self._lookup_ref()
            if ref is None:
                return tuple(None for _ in paths)
            tree_id = self._repo[ref.target].tree_id
            found = []
            for path in paths:
                entry = self._entry(tree_id, path)
                found.append(str(entry.id) if entry is not None else None)
            return tuple(found)

    def _lookup_ref(self) -> pygit2.Reference | None:
        try:
            return self._repo.lookup_reference(self.ref)
        except KeyError:
            return None

    def _tree(self, tree_id: pygit2.Oid) -> pygit2.Tree:
        """Return a parsed tree, kept for the next lookup (caller holds the mutex).

        PERF: libgit2 caches no tree larger than 4 KiB, so a directory of a
        thousand records (``environments/`` at 1,000 environments) was read
        and parsed again for every record looked up in it: 0.27 ms a lookup,
        280 ms for one status answer. A tree id names its content forever,
        so the cache is never stale.
        """
        tree = self._trees.get(tree_id)
        if tree is None:
            tree = self._repo[tree_id]
            self._trees[tree_id] = tree
            if len(self._trees) > _TREE_CACHE:
                self._trees.popitem(last=False)
        else:
            self._trees.move_to_end(tree_id)
        return tree

    def _entry(self, tree_id: pygit2.Oid, path: str) -> pygit2.Object | None:
        """Return the tree entry at ``path`` under tree ``tree_id`` (caller holds the mutex)."""
        tree = self._tree(tree_id)
        *directories, name = path.split("/")
        for part in directories:
            try:
                entry = tree[part]
            except KeyError:
                return None
            if entry.filemode != FileMode.TREE:
                return None
            tree = self._tree(entry.id)
        try:
            return tree[name]
        except KeyError:
            return None

    def _lookup(self, tree_id: pygit2.Oid, path: str) -> pygit2.Oid | None:
        with self._mutex:
            entry = self._entry(tree_id, path)
            return entry.id if entry is not None and entry.filemode == FileMode.BLOB else None

    def _subtree(self, tree_id: pygit2.Oid, directory: str) -> pygit2.Tree | None:
        """Return the tree at ``directory`` of tree ``tree_id`` (caller holds the mutex)."""
        entry = self._entry(tree_id, directory)
        if entry is None or entry.filemode != FileMode.TREE:
            return None
        return self._tree(entry.id)

    def _list(self, tree_id: pygit2.Oid, directory: str) -> list[str]:
        """Return the sorted blob names directly in ``directory``."""
        with self._mutex:
            tree = self._subtree(tree_id, directory)
            if tree is None:
                return []
            return sorted(entry.name for entry in tree if entry.filemode == FileMode.BLOB)

    def _subtree_blobs(self, tree_id: pygit2.Oid, directory: str) -> list[str]:
        """Return the paths (relative to ``directory``) of every blob under it."""
        with self._mutex:
            top = self._subtree(tree_id, directory)
            if top is None:
                return []
            found: list[str] = []
            stack: list[tuple[str, pygit2.Tree]] = [("", top)]
            while stack:
                prefix, tree = stack.pop()
                for entry in tree:
                    if entry.filemode == FileMode.TREE:
                        stack.append((prefix + entry.name + "/", self._repo[entry.id]))
                    elif entry.filemode == FileMode.BLOB:
                        found.append(prefix + entry.name)
            return found

    def _walk(self, commit: pygit2.Commit | None) -> dict[str, pygit2.Oid]:
        """Index every record path of ``commit``'s tree (used for old commits)."""
        index: dict[str, pygit2.Oid] = {}
        if commit is None:
            return index
        with self._mutex:
            stack: list[tuple[str, pygit2.Tree]] = [("", commit.tree)]
            while stack:
                prefix, tree = stack.pop()
                for entry in tree:
                    name = prefix + entry.name
                    if entry.filemode == FileMode.TREE:
                        stack.append((name + "/", self._repo[entry.id]))
                    elif entry.filemode == FileMode.BLOB:
                        index[name] = entry.id
        return index

    def _parse(self, oid: pygit2.Oid, path: str, commit: str | None) -> dict[str, Any]:
        with self._mutex:
            record = self._parsed.get(oid)
            if record is None:
                data = self._repo[oid].data
                record = codec.decode(data, path, commit)
                self._parsed.put(oid, record)
            return record

    def snapshot(self) -> Snapshot:
        """Return the state at the branch tip.

        Cheap when the tip has not moved. Otherwise the new snapshot follows
        the cached one: records are read by path from the new tree, parsed
        records are reused by blob id, and the index of record paths, if
        anyone lists records, is carried forward by diffing the two trees.
        """
        with self._mutex:
            return self._snapshot_of(self._lookup_ref())

    def _snapshot_of(self, ref: pygit2.Reference | None) -> Snapshot:
        with self._mutex:
            if ref is None:
                return Snapshot(self, None, {})
            latest = self._latest
            if latest is not None and latest._commit_id == ref.target:
                return latest
            commit = self._repo[ref.target]
            if latest is not None and latest._commit_id is not None:
                self._latest = Snapshot(self, commit, base=latest)
            else:
                self._latest = Snapshot(self, commit)
            return self._latest

    def _apply_diff(
        self,
        index: dict[str, pygit2.Oid],
        old: pygit2.Commit | None,
        new: pygit2.Commit,
    ) -> None:
        if old is None:
            index.update(self._walk(new))
            return
        with self._mutex:
            deltas = list(self._repo.diff(old.tree, new.tree).deltas)
        for delta in deltas:
            if delta.old_file.mode == FileMode.BLOB:
                index.pop(delta.old_file.path, None)
            if delta.new_file.mode == FileMode.BLOB:
                index[delta.new_file.path] = delta.new_file.id

    def get(self, path: str) -> dict[str, Any] | None:
        """Return a copy of the record at ``path`` at the tip, or None."""
        return self.snapshot().get(path)

    # -- the past ------------------------------------------------------------------

    def _first_parent_chain(self, start: pygit2.Oid) -> Iterator[pygit2.Commit]:
        walker = self._repo.walk(start, SortMode.NONE)
        walker.simplify_first_parent()
        yield from walker

    def at(self, revision: str | datetime) -> Snapshot:
        """Return the state at a commit (hex id or prefix) or at a point in time.

        For a time, the answer is the last commit made at or before it; a time
        before the first commit gives the empty state.

        Raises:
            RevisionNotFound: the commit is not on the state branch.
        """
        with self._mutex:
            ref = self._lookup_ref()
            if isinstance(revision, datetime):
                if revision.tzinfo is None:
                    revision = revision.replace(tzinfo=UTC)
                stamp = revision.timestamp()
                if ref is None:
                    return Snapshot(self, None, {})
                for commit in self._first_parent_chain(ref.target):
                    if commit.commit_time <= stamp:
                        return Snapshot(self, commit)
                return Snapshot(self, None, {})
            return Snapshot(self, self._on_branch(ref, revision))

    def _on_branch(self, ref: pygit2.Reference | None, revision: str) -> pygit2.Commit:
        """Return the commit ``revision`` names if the branch at ``ref`` contains it.

        Raises:
            RevisionNotFound: no such commit, or not one of the branch.
        """
        try:
            obj = self._repo.revparse_single(revision)
            commit = obj.peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError) as ex:
            raise RevisionNotFound(revision) from ex
        if ref is None or not (
            commit.id == ref.target or self._repo.descendant_of(ref.target, commit.id)
        ):
            raise RevisionNotFound(revision, "is not a commit of the state branch")
        return commit

    def history(self, path: str, limit: int | None = None) -> list[Change]:
        """Return the commits that changed the record at ``path``, newest first."""
        return list(itertools.islice(self.iter_history(path), limit))

    def iter_history(self, path: str) -> Iterator[Change]:
        """Yield the commits that changed the record at ``path``, newest first.

        Each carries the record as that commit left it. The commits come
        from the history index (:mod:`gitstate.store.history_index`), a page at a
        time, so the cost follows the entries taken, not the branch's
        length; if the index cannot be used (a read-only repository, say)
        the branch is walked instead.
        """
        check_path(path)
        with self._mutex:
            ref = self._lookup_ref()
            if ref is None:
                return
            tip = ref.target
        try:
            found = self._index.changed(tip, path)
            first = next(found, None)
        except (sqlite3.Error, OSError) as ex:
            log.warning("history index unusable (%s); walking the branch", ex)
            yield from self._history_by_walk(tip, path)
            return
        if first is None:
            return
        for commit_id in itertools.chain([first], found):
            # NOTE: the mutex is taken per commit, not for the whole list: a
            # long history read must not hold up this process's writer while
            # it holds the host lock every other process is waiting for.
            with self._mutex:
                commit = self._repo[commit_id]
                mine = self._lookup(commit.tree_id, path)
                record = self._parse(mine, path, str(commit_id)) if mine is not None else None
                change = _change(commit, codec.thaw(record))
            yield change

    def _history_by_walk(self, tip: pygit2.Oid, path: str) -> Iterator[Change]:
        for commit in self._first_parent_chain(tip):
            with self._mutex:
                mine = self._lookup(commit.tree_id, path)
                parent = commit.parents[0] if commit.parents else None
                before = self._lookup(parent.tree_id, path) if parent is not None else None
                if mine == before:
                    continue
                record = self._parse(mine, path, str(commit.id)) if mine is not None else None
                change = _change(commit, codec.thaw(record))
            yield change

    def index_history(self, *, wait: float = 0.0) -> int | None:
        """Bring the history index up to the tip; return its commit count.

        Writers call this after each commit (not waiting for another
        process that is at it); maintenance calls it, waiting, so that a
        repository that never had an index gets one before a user asks.
        """
        head = self.head()
        if head is None:
            return 0
        try:
            return self._index.catch_up(pygit2.Oid(hex=head), wait=wait)
        except (sqlite3.Error, OSError) as ex:
            log.warning("could not update the history index: %s", ex)
            return None

    def log(self, limit: int | None = None) -> list[Change]:
        """Return the branch's commits, newest first, without record contents."""
        changes: list[Change] = []
        with self._mutex:
            ref = self._lookup_ref()
            if ref is None:
                return changes
            for commit in self._first_parent_chain(ref.target):
                changes.append(_change(commit, None))
                if limit is not None and len(changes) >= limit:
                    break
        return changes

    def walk(self, before: str | None = None) -> Iterator[Step]:
        """Yield the branch's commits newest first, each with the records it changed.

        With ``before`` (a commit of the branch), the walk starts at the
        commit before it, so a caller pages through the history by passing
        the last commit it was given. The walk is lazy: a caller that stops
        early pays only for the commits it took (one tree diff each, which
        libgit2 prunes at unchanged subtrees).

        Raises:
            RevisionNotFound: ``before`` is not a commit of the branch.
        """
        with self._mutex:
            ref = self._lookup_ref()
            if ref is None:
                if before is not None:
                    raise RevisionNotFound(before, "is not a commit of the state branch")
                return
            if before is None:
                start: pygit2.Oid | None = ref.target
            else:
                first = self._on_branch(ref, before)
                start = first.parent_ids[0] if first.parent_ids else None
        if start is None:
            return
        for commit in self._first_parent_chain(start):
            # NOTE: the mutex per commit, as in iter_history: a long walk
            # must not hold up this process's writer.
            with self._mutex:
                step = self._step(commit)
            yield step

    def step(self, revision: str) -> Step:
        """Return one commit of the branch with the records it changed.

        Raises:
            RevisionNotFound: ``revision`` is not a commit of the branch.
        """
        with self._mutex:
            return self._step(self._on_branch(self._lookup_ref(), revision))

    def _step(self, commit: pygit2.Commit) -> Step:
        if commit.parents:
            parent = commit.parents[0]
            diff = self._repo.diff(parent.tree, commit.tree)
        else:
            parent = None
            diff = commit.tree.diff_to_tree(swap=True)
        paths = []
        for delta in diff.deltas:
            old = None if delta.old_file.id.raw == _ZERO else str(delta.old_file.id)
            new = None if delta.new_file.id.raw == _ZERO else str(delta.new_file.id)
            paths.append(PathChange(delta.new_file.path or delta.old_file.path, old, new))
        paths.sort(key=lambda item: item.path)
        return Step(
            _change(commit, None), str(parent.id) if parent is not None else None, tuple(paths)
        )

    def blob_record(self, blob: str, path: str) -> dict[str, Any] | None:
        """Return a copy of the record stored as ``blob`` at ``path``; None if unreadable.

        Records are parsed once per blob (the parse cache snapshots use),
        so reading the same version of a record for many commits is cheap.
        """
        try:
            return codec.thaw(self._parse(pygit2.Oid(hex=blob), path, None))
        except (GitStateError, KeyError, ValueError):
            return None

    def blob_text(self, blob: str) -> str:
        """Return a blob's bytes as text (a record's YAML as it is stored)."""
        with self._mutex:
            data = self._repo[pygit2.Oid(hex=blob)].data
        return data.decode("utf-8", "replace")

    # -- writes --------------------------------------------------------------------

    def transact(
        self,
        change: Callable[[Draft], T],
        *,
        subject: str,
        operation: str,
        identity: Identity | None = None,
        deadline: float | None = None,
    ) -> Committed[T]:
        """Apply ``change`` to the tip and commit the result by compare-and-swap.

        ``change`` receives a :class:`Draft` of the tip snapshot and may read,
        put and delete records and set ``draft.subject``. It may run more than
        once (again on the new tip after a conflict), so it must not have side
        effects outside the draft. If it changes nothing, no commit is made.

        Args:
            change: the change function.
            subject: the commit subject, in plain words, unless the change
                function sets another.
            operation: machine-readable name of the operation (a trailer).
            identity: the acting user and request id (trailers, author).
            deadline: seconds before giving up; default ``self.deadline``.

        Raises:
            StoreBusy: the deadline passed before the ref could be advanced.
            BranchRewound: the tip does not contain the last commit a
                gitstate writer set (the branch was moved back behind our
                back); nothing is committed until an operator acts.
            RecordError: a record written or read is invalid.
            Any exception the change function raises, with nothing written.
        """
        identity = identity or Identity()
        budget = self.deadline if deadline is None else deadline
        started = time.monotonic()
        until = started + budget
        # PERF: the change is first applied to the tip without any lock, and
        # its blobs written; under the locks it is committed as it stands if
        # what it read is unchanged (see _Prepared). The host lock is then
        # held only for the trees, the commit and the CAS.
        tally = _Tally()

        def counted(draft: Draft) -> T:
            tally.runs += 1
            return change(draft)

        if self._pushes is not None:
            # A node of several servers: the change is pushed to the git
            # server with the others queued here, with a lease on the tip
            # it ran on (gitstate/store/pushqueue.py).
            job = _Job(counted, subject, operation, identity, started, until)
            try:
                return self._pushes.write(job, tally)
            finally:
                tally.report(operation)

        prepared = self._prepare(counted, subject) if self._optimism.worth_trying() else None
        if prepared is not None and not prepared.blobs:
            # Nothing to write: the answer stands if the tip reads the same.
            tip = self.snapshot()
            if prepared.draft.reads_same_on(tip):
                return Committed(prepared.value, None, tip, tally.runs)
            prepared = None
        # The deadline covers the wait for this process's other writers too.
        if not self._writer.acquire(timeout=max(0.0, until - time.monotonic())):
            raise StoreBusy(
                self.ref, time.monotonic() - started, 0, "other writers in this process held it"
            )
        try:
            with self._host_lock(until, started):
                job = _Job(counted, subject, operation, identity, started, until)
                outcome = self._commit_loop(job, prepared, tally)
            # PERF: every other writer on the host waits while the host lock is
            # held, so what can wait for its release does: the new snapshot
            # (it reads the commit back) and the metrics (whose first use
            # imports prometheus-client, tens of milliseconds).
            tally.committed = outcome.commit is not None
            if self.fsync and tally.committed:
                # The ref itself, before the write is acknowledged. Outside
                # the host lock: the next writer need not wait for it, and
                # one flush covers every writer that flushes at once.
                durable.flush(self.path)
            snap = self._follow(outcome)
        finally:
            self._writer.release()
            tally.report(operation)
        if outcome.commit is not None:
            self._since_indexed += 1
            if self._since_indexed >= history_index.INDEX_EVERY:
                # PERF: after every lock is released, and one commit in
                # INDEX_EVERY: an SQLite transaction would add about half
                # a millisecond to each (see bench/history_bench.py).
                self._since_indexed = 0
                self._index_after_commit(outcome.commit)
        return Committed(outcome.value, outcome.commit_hex, snap, tally.runs)

    def rewound(self) -> Rewind | None:
        """Return how the branch moved back, or None while it contains the last tip set.

        For readers (health, metrics) that do not hold the host lock: the
        mark is read before the tip, so a commit landing in between leaves
        a tip that contains it; a rewind is reported only if a second look
        finds the same one (a writer may be rewriting the mark just then).
        """
        found: Rewind | None = None
        for _ in range(2):
            mark = self._seen.read()
            with self._mutex:
                ref = self._lookup_ref()
                tip = str(ref.target) if ref is not None else None
                rewind = self._seen.compare(self._repo, mark, tip)
            if rewind is None or rewind == found:
                break
            found = rewind
        else:
            return None  # two different answers: the branch is moving; ask again later
        if rewind is not None:
            self._seen.report(rewind)
        return rewind

    def accept_tip(self) -> tuple[str | None, str | None]:
        """Take the branch's current tip as the last one set, ending a rewind.

        For an operator who has decided the branch is where it should be
        (a deliberate rewind, or one whose lost commits are restored by
        hand). Returns the mark before and after.
        """
        started = time.monotonic()
        with self._writer, self._host_lock(started + self.deadline, started):
            before = self._seen.read()
            tip = self.head()
            if tip is None:
                self._seen.path.unlink(missing_ok=True)
            else:
                self._seen.write(tip)
        log.warning("state tip accepted: %s (the mark was %s)", tip, before)
        return before, tip

    def _index_after_commit(self, commit: pygit2.Oid) -> None:
        try:
            self._index.catch_up(commit)
        except (sqlite3.Error, OSError) as ex:
            # The next reader catches up; a write is never failed for it.
            log.debug("history index not updated after %s: %s", commit, ex)

    def _commit_loop(
        self, job: _Job[T], prepared: _Prepared[T] | None, tally: _Tally
    ) -> _Outcome[T]:
        """Attempt the commit until it lands or the deadline passes (host lock held)."""
        reason = "the ref kept moving"
        while True:
            try:
                outcome = self._attempt(job, prepared, tally)
            except _WriteFailed as ex:
                # NOTE: git's prune-packed (run by gc and maintenance)
                # removes empty objects/xx folders; libgit2 makes the
                # folder, then renames the object into it, so a write in
                # between fails. Writing the objects again is harmless.
                log.warning("writing state objects failed (%s); retrying", ex.cause)
                reason = f"objects could not be written: {ex.cause}"
                outcome = None
                time.sleep(0.005)
            prepared = None
            if outcome is not None:
                return outcome
            if time.monotonic() >= job.until:
                raise StoreBusy(self.ref, time.monotonic() - job.started, tally.runs, reason)

    def _follow(self, outcome: _Outcome[Any]) -> Snapshot:
        """Return the snapshot a transaction left, making it this process's latest."""
        base = outcome.base
        if outcome.commit is None:
            return base
        assert outcome.tree is not None
        snap = self._successor(base, outcome.delta, (outcome.commit, outcome.tree))
        self._make_latest(base, snap)
        return snap

    def _successor(
        self,
        base: Snapshot,
        delta: Mapping[str, pygit2.Oid | None],
        ids: tuple[pygit2.Oid, pygit2.Oid],
    ) -> Snapshot:
        """The snapshot of a commit made on ``base`` that changed ``delta`` (path → blob).

        PERF: the new commit is not read back (see Snapshot._commit); its
        ids are all the next transaction here needs.
        """
        if base._commit_id is None:
            # First commit: the delta is the whole state.
            index = {path: oid for path, oid in delta.items() if oid is not None}
            return Snapshot(self, None, index, ids=ids)
        return Snapshot(self, None, base=base, delta=delta, ids=ids)

    def _make_latest(self, base: Snapshot, snap: Snapshot) -> None:
        """Make ``snap``, written on ``base``, this process's latest snapshot.

        Unless a reader here already followed the ref to it or past it
        (another writer's commit, after the host lock was released).
        """
        with self._mutex:
            latest = self._latest
            if latest is None or latest._commit_id is None or latest._commit_id == base._commit_id:
                self._latest = snap

    def _prepare(self, change: Callable[[Draft], T], subject: str) -> _Prepared[T] | None:
        """Apply ``change`` without the writer locks and store its blobs.

        The change is applied to the latest snapshot this process knows,
        without reading the ref: whether it is still the tip is settled
        when the result is used (:meth:`Draft.reads_same_on`). Exceptions
        from the change function propagate; they are answers about state
        that was the tip a moment ago, unless this process has not seen the
        tip yet, in which case the change runs again on the tip to be sure.
        None means the blobs could not be written (the locked path will try
        again).
        """
        # The change function runs without the mutex (reads take it call by
        # call), so a slow one holds up neither readers nor other writers.
        with self._mutex:
            known = self._latest
        draft = Draft(known if known is not None else self.snapshot(), subject)
        try:
            value = change(draft)
        except Exception:
            if known is None:
                raise  # the draft was built on the tip itself
            tip = self.snapshot()
            if tip.commit == known.commit:
                raise
            draft = Draft(tip, subject)
            value = change(draft)
        with self._mutex:
            try:
                blobs = self._write_blobs(draft.changes)
            except (pygit2.GitError, OSError):
                return None
        return _Prepared(draft, value, blobs)

    def _attempt(
        self, job: _Job[T], prepared: _Prepared[T] | None, tally: _Tally
    ) -> _Outcome[T] | None:
        """Run one read-change-commit-CAS round; None means "ref moved, retry".

        ``prepared`` is committed as it stands if what it read is unchanged
        at the tip; otherwise the change runs again here.
        """
        with self._mutex:
            ref = self._lookup_ref()
            base = self._snapshot_of(ref)
        reused = prepared is not None and prepared.draft.reads_same_on(base)
        if prepared is not None:
            self._optimism.record(reused)
            tally.prepared.append(reused)
        if reused:
            assert prepared is not None
            draft, value, blobs = prepared.draft, prepared.value, prepared.blobs
        else:
            # Without the mutex, as in _prepare; the writer locks are held.
            draft = Draft(base, job.subject)
            value = job.change(draft)
        with self._mutex:
            try:
                if not reused:
                    blobs = self._write_blobs(draft.changes)
                if not blobs:
                    return _Outcome(value, base)
                written = self._write_commit(base, draft, job, blobs)
            except (pygit2.GitError, OSError) as ex:
                raise _WriteFailed(ex) from ex
        if written is None:
            return _Outcome(value, base)
        commit_id, tree_id = written
        if self.fsync:
            # The objects reach the disk before the ref that names them.
            durable.flush(self.path)
        if not self._advance(base, ref, commit_id, draft.subject, job.until):
            tally.conflicts += 1
            return None
        # Still under the host lock: the next writer checks its tip against it.
        self._seen.record(str(commit_id))
        delta = {path: oid for path, (oid, _record) in blobs.items()}
        return _Outcome(value, base, commit_id, delta, tree_id)

    def _write_commit(
        self, base: Snapshot, draft: Draft, job: _Job[Any], blobs: _Blobs
    ) -> tuple[pygit2.Oid, pygit2.Oid] | None:
        """Write the trees above ``blobs`` and a commit of them on ``base`` (mutex held).

        Returns the ids of the commit and its tree, or None when the new
        tree is the base's (nothing to commit). Refuses, with
        :class:`BranchRewound`, to commit on a base that moved back.
        """
        base_tree = self._repo[base._tree_id] if base._tree_id is not None else None
        tree_id = self._write_tree(base_tree, blobs)
        if tree_id == base._tree_id:
            return None
        # A change that leaves the tree as it is is answered like a read;
        # one that commits is refused on a branch that moved back.
        self._seen.refuse(self._repo, base.commit)
        now = time.time()
        # With several servers, a Node trailer says which one wrote the
        # commit, and keeps two nodes that make the same change on the same
        # tip in the same second from making the same commit: a git server
        # takes a push of a commit it already holds as a success, so both
        # would be acknowledged for one change.
        node = self.upstream.node if self.upstream is not None else None
        message = _message(draft.subject, draft.body, job.operation, job.identity, node)
        parents = [base._commit_id] if base._commit_id is not None else []
        author, committer = job.identity.signature(now), _service_signature(int(now))
        commit_id = self._repo.create_commit(None, author, committer, message, tree_id, parents)
        return commit_id, tree_id

    def _write_blobs(self, changes: Mapping[str, dict[str, Any] | None]) -> _Blobs:
        """Encode and store each changed record; remember the parsed form (mutex held)."""
        blobs: _Blobs = {}
        for path, record in changes.items():
            if record is None:
                blobs[path] = (None, None)
                continue
            data = codec.encode(record, path)
            oid = self._repo.create_blob(data)
            # The draft's copy is its own and no longer changes; readers get copies.
            self._parsed.put(oid, record)
            blobs[path] = (oid, record)
        return blobs

    def _write_tree(
        self,
        base: pygit2.Tree | None,
        blobs: Mapping[str, tuple[pygit2.Oid | None, Any]],
    ) -> pygit2.Oid:
        """Write the trees on the changed paths only; return the new root tree."""
        nested: dict[str, Any] = {}
        for path, (oid, _record) in blobs.items():
            node = nested
            *dirs, leaf = check_path(path)
            for name in dirs:
                child = node.setdefault(name, {})
                if not isinstance(child, dict):
                    raise codec.RecordError(path, f"{name!r} is both a record and a directory")
                node = child
            if isinstance(node.get(leaf), dict):
                raise codec.RecordError(path, "is both a record and a directory")
            node[leaf] = oid
        root = self._build(base, nested, "")
        return root if root is not None else self._repo.TreeBuilder().write()

    def _build(
        self, base: pygit2.Tree | None, nested: Mapping[str, Any], where: str
    ) -> pygit2.Oid | None:
        builder = self._repo.TreeBuilder(base) if base is not None else self._repo.TreeBuilder()
        for name, item in nested.items():
            existing = builder.get(name)
            if isinstance(item, dict):
                subtree = None
                if existing is not None:
                    if existing.filemode != FileMode.TREE:
                        raise codec.RecordError(where + name, "is a record, not a directory")
                    subtree = self._repo[existing.id]
                oid = self._build(subtree, item, where + name + "/")
                if oid is None:
                    if existing is not None:
                        builder.remove(name)
                else:
                    builder.insert(name, oid, FileMode.TREE)
            elif item is None:
                if existing is not None:
                    builder.remove(name)
            else:
                if existing is not None and existing.filemode == FileMode.TREE:
                    raise codec.RecordError(where + name, "is a directory, not a record")
                builder.insert(name, item, FileMode.BLOB)
        if len(builder) == 0:
            return None
        return builder.write()

    def _advance(
        self,
        base: Snapshot,
        ref: pygit2.Reference | None,
        commit_id: pygit2.Oid,
        subject: str,
        until: float,
    ) -> bool:
        """Move the ref from ``base`` to ``commit_id`` by CAS.

        ``ref`` is the reference as it was looked up when ``base`` was read:
        ``set_target`` on it succeeds only if the ref still holds that value.
        Returns False when the ref has moved (the caller re-applies the
        change). Retries, with backoff, while the ref's ``.lock`` is held, and
        removes a lock left by a dead process.
        """
        delay = 0.0005
        reflog = f"gitstate: {subject}"[:200]
        while True:
            with self._mutex:
                try:
                    if base._commit_id is None:
                        self._repo.create_reference_direct(
                            self.ref, commit_id, False, message=reflog
                        )
                    else:
                        if ref is None:
                            ref = self._repo.lookup_reference(self.ref)
                        if ref.target != base._commit_id:
                            return False
                        ref.set_target(commit_id, reflog)
                    return True
                except pygit2.AlreadyExistsError:
                    return False
                except (pygit2.GitError, OSError, KeyError):
                    current = self._lookup_ref()
                    expected = base._commit_id
                    if (current.target if current is not None else None) != expected:
                        return False
                    # The ref has not moved, so its lock is held by someone.
                    self._break_stale_locks()
                    ref = None
            if time.monotonic() >= until:
                raise StoreBusy(self.ref, self.deadline, 1, f"{self.ref}.lock stayed locked")
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.05)

    # -- several servers: the git server's tip ---------------------------------------

    def refresh(self, *, exact: bool = False) -> str | None:
        """Bring this copy of the branch up to the git server's tip; return the tip.

        Without an upstream this is :meth:`head`. With one, the git
        server's tip is fetched and the local branch moved forward to it,
        by compare-and-swap, so readers and waits here see it (a ref watch
        wakes them as for a local commit).

        ``exact`` (for a writer holding the host lock) takes a git server
        tip behind this copy's as the git server's branch moved back;
        otherwise it may be a fetch that raced a push from this host.

        Raises:
            SharedUnreachable: the git server did not answer.
            BranchRewound: the git server's branch does not contain this
                copy's tip (it was moved back there).
        """
        if self.upstream is None:
            return self.head()
        if not self.upstream.fetch():
            return self.head()
        with self._mutex:
            tip = self.upstream.tip(self._repo)
        if tip is None:
            return self.head()
        self._fast_forward(tip, ahead=not exact)
        return tip

    def _fast_forward(self, target: str, *, ahead: bool = True) -> None:
        """Move the local branch forward to ``target``, a tip of the git server.

        A compare-and-swap like every other move of the ref: a copy that
        already holds ``target`` or a later commit stays where it is. A copy
        whose tip ``target`` does not contain means the git server's branch
        went back; nothing is written on top of that (:class:`BranchRewound`).
        """
        until = time.monotonic() + self.deadline
        while True:
            with self._mutex:
                try:
                    reflog = "gitstate: the git server's tip"
                    if fast_forward(self._repo, self.ref, target, reflog, ahead=ahead):
                        return
                except Diverged as ex:
                    rewind = Rewind(self.ref, ex.local, ex.shared)
                    self._seen.report(rewind)
                    raise BranchRewound(self.ref, ex.local, ex.shared) from ex
                # Moved meanwhile, or its lock is held (perhaps by the dead).
                self._break_stale_locks()
            if time.monotonic() >= until:
                raise StoreBusy(self.ref, self.deadline, 1, f"{self.ref}.lock stayed locked")
            time.sleep(0.001 + 0.004 * random.random())

    def _break_stale_locks(self) -> None:
        """Remove the ref's lock files left by a dead writer (we hold the host lock)."""
        for lock in break_stale_ref_locks(self.path, self.ref, self.stale_lock_after):
            log.warning("removed %s, left by a writer that died", lock)

    @contextlib.contextmanager
    def _host_lock(self, until: float, started: float) -> Iterator[None]:
        """Hold the per-host writer lock (``flock``, released if we die)."""
        if self._lock is None:
            self._lock = HostLock(self.path / "gitstate-writer.lock", spin=WRITER_SPIN)
        if not self._lock.acquire(max(0.0, until - time.monotonic())):
            raise StoreBusy(
                self.ref, time.monotonic() - started, 0, "other writers held the host lock"
            )
        try:
            yield
        finally:
            self._lock.release()


def _pin_ident(repo: pygit2.Repository) -> None:
    """Give ``repo`` the identity its reflog entries are signed with, read once.

    libgit2 otherwise looks ``user.name`` and ``user.email`` up for every
    ref update, checking three config files for changes first (three
    system calls with the host lock held). The values are those of the
    repository's config when the store opens it; :func:`init_repository`
    sets them. Without them libgit2's own fall-back is left in place.
    """
    config = repo.config
    try:
        name, email = config["user.name"], config["user.email"]
    except KeyError:
        return
    repo.set_ident(name, email)


def _call_if_alive(method: weakref.WeakMethod[Callable[[], None]]) -> None:
    bound = method()
    if bound is not None:
        bound()


def init_repository(path: str | os.PathLike[str]) -> None:
    """Create the bare state repository at ``path`` if it does not exist.

    Sets the options the audit trail depends on: a reflog for every ref
    update, kept forever, a service identity for reflog entries, and a
    refusal of pushes that would rewrite or delete history.
    """
    create_bare(
        Path(path),
        DEFAULT_REF.removeprefix("refs/heads/"),
        {
            "core.logAllRefUpdates": "always",
            "gc.reflogExpire": "never",
            "gc.reflogExpireUnreachable": "never",
            "receive.denyNonFastForwards": True,
            "receive.denyDeletes": True,
            "user.name": SERVICE_NAME,
            "user.email": f"{SERVICE_NAME}@{socket.gethostname()}",
        },
    )


def _message(
    subject: str, body: str, operation: str, identity: Identity, node: str | None = None
) -> str:
    subject = " ".join(subject.split()) or operation
    parts = [subject]
    if body.strip():
        parts.append(body.strip())
    trailers = [f"Actor: {identity.actor}"]
    trailers.extend(f"{key}: {' '.join(value.split())}" for key, value in identity.notes)
    if identity.request_id:
        trailers.append(f"Request-Id: {identity.request_id}")
    trailers.append(f"Operation: {operation}")
    if node:
        trailers.append(f"Node: {node}")
    parts.append("\n".join(trailers))
    return "\n\n".join(parts) + "\n"


def _change(commit: pygit2.Commit, record: dict[str, Any] | None) -> Change:
    trailers = parse_trailers(commit.message)
    return Change(
        commit=str(commit.id),
        time=datetime.fromtimestamp(commit.commit_time, UTC),
        actor=trailers.get("Actor", commit.author.name),
        subject=commit.message.split("\n", 1)[0],
        operation=trailers.get("Operation"),
        request_id=trailers.get("Request-Id"),
        record=record,
    )


def parse_trailers(message: str) -> dict[str, str]:
    """Return the ``Key: value`` trailers of the message's last paragraph."""
    paragraphs = [part for part in message.strip().split("\n\n") if part.strip()]
    if len(paragraphs) < 2:
        return {}
    trailers: dict[str, str] = {}
    for line in paragraphs[-1].splitlines():
        key, sep, value = line.partition(": ")
        if not sep or " " in key:
            return {}
        trailers[key] = value.strip()
    return trailers
