"""The storage repository: environments composed and published as git objects.

``DATADIR/storage.git`` is a bare repository that file-sync clients fetch
from. Nothing in it is ever checked out; environments are built from tree
objects, which is why a deploy costs what *changed* rather than what the
environment holds.

Layout:

``refs/environments/<env>``
    The *environment-commit*: the environment's tree (control branch +
    modules + ``.r10k-deploy.json``) committed on top of its previous
    version, so ``git log refs/environments/production`` is its deploy
    history.
``refs/heads/code``
    The *code-commit*: one commit over every published environment, so a
    client fetches one ref and gets them all. Its tree is::

        environments/<env>/...    each environment's tree (same tree id as
                                  its environment-commit's tree)
        published/<env>.json      its environment-commit, signature and the
                                  deploy key used to skip no-op deploys
        environments.json         a stub (see :mod:`gitstate.engine.manifest`)

    Every publish or removal is a new commit whose first parent is the
    previous tip, made by compare-and-swap on the ref with retries, so
    workers publishing different environments at once never lose each
    other's work. ``force=True`` is never used.

Objects are *copied* from the mirrors into this repository's object
database rather than borrowed through an alternate: a mirror is pruned when
its remote rewrites history, and storage must still hold every object of
every version it published. Copying is cheap because a tree already present
here is never walked again for writing (trees are written after their
children, so a present tree implies a complete one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import os
import posixpath
import random
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pygit2
from pygit2.enums import FileMode

from gitstate.base import durable
from gitstate.base.bare import create_bare
from gitstate.base.hostlock import LockTimeout, break_stale_ref_locks, flocked
from gitstate.engine.links import TreeLinks
from gitstate.engine.manifest import ManifestReader, Published, publish_tree
from gitstate.errors import GitStateError
from gitstate.store.upstream import TRACKING_PREFIX, SharedRef, fast_forward

log = logging.getLogger(__name__)

REFS = "refs/"
CODE_REF = "refs/heads/code"
ENVIRONMENT_REF_PREFIX = "refs/environments/"
SERVICE = "gitstate"
PACK_THRESHOLD = 64  # copy this many objects or more as one pack
_TREE = int(FileMode.TREE)
_LINK = int(FileMode.LINK)
_COMMIT = int(FileMode.COMMIT)


class UnsafeEntry(GitStateError, ValueError):
    """A tree holds a name no checkout may write (``..``, ``.git``, ``a/b``).

    git itself never makes such trees, but a hostile remote can; copied raw
    into storage they would let a file-sync client write outside its
    directory.

    Attributes:
        name: the entry's name as stored.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"tree entry {name!r} cannot be deployed")


class PublishConflict(GitStateError, TimeoutError):
    """The code ref could not be advanced before the deadline."""

    def __init__(self, ref: str, attempts: int, reason: str | None = None) -> None:
        self.ref = ref
        self.attempts = attempts
        self.reason = reason
        detail = f"could not update {ref} after {attempts} attempts"
        super().__init__(f"{detail}: {reason}" if reason else detail)


@dataclasses.dataclass(frozen=True)
class Imported:
    """A tree copied into storage.

    Attributes:
        oid: the tree's id in storage (differs from the source's when
            gitlinks or ``spec`` were dropped).
    """

    oid: pygit2.Oid


@dataclasses.dataclass(frozen=True)
class _Scan:
    changed: bool


class Storage:
    """The storage repository of one data directory.

    Safe to share between threads (each thread gets its own repository
    handle) and across forks.
    """

    #: Longest wait for another publisher (or maintenance, whose ``git gc``
    #: holds the publishers' lock throughout) before a publish gives up.
    LOCK_TIMEOUT = 600.0

    def __init__(
        self,
        path: Path,
        *,
        deadline: float = 30.0,
        lock_timeout: float = LOCK_TIMEOUT,
        fsync: bool = False,
        remote: str | None = None,
        remote_timeout: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.remote = remote
        self.remote_timeout = remote_timeout
        self.deadline = deadline
        self.lock_timeout = lock_timeout
        init_storage(self.path)
        self._local = threading.local()
        self._memo: dict[tuple[bytes, bool], Imported] = {}
        self._scans: dict[bytes, _Scan] = {}
        self._memo_lock = threading.Lock()
        self._manifests = ManifestReader()
        self.links = TreeLinks()

    @property
    def repo(self) -> pygit2.Repository:
        """This thread's handle on the repository."""
        if getattr(self._local, "pid", None) != os.getpid():
            self._local.pid = os.getpid()
            self._local.repo = pygit2.Repository(str(self.path))
        return self._local.repo

    # -- several servers: the git server's refs ------------------------------------------

    def shared(self, ref: str) -> SharedRef | None:
        """The git server's copy of ``ref``, or None when this host alone holds storage."""
        if self.remote is None:
            return None
        return SharedRef(self.path, self.remote, ref, timeout=self.remote_timeout)

    def refresh(self) -> str | None:
        """Bring the code-commit and every environment's ref up to the git server's.

        What a node's file-sync clients and rollbacks then read locally.
        Without a remote, nothing to do. Returns the code-commit.

        Raises:
            SharedUnreachable: the git server did not answer.
            Diverged: a ref on the git server went back.
        """
        for ref in (ENVIRONMENT_REF_PREFIX + "*", CODE_REF):
            shared = self.shared(ref)
            if shared is None:
                break
            shared.fetch()
            for tracked in self.repo.references.iterator():
                name = tracked.name
                if fnmatch.fnmatchcase(name, shared.tracking):
                    local = REFS + name.removeprefix(TRACKING_PREFIX)
                    self._follow(local, str(tracked.target))
        return self.code_commit()

    def _catch_up(self, shared: SharedRef) -> str | None:
        """Fetch one ref from the git server and follow it here; return its tip there."""
        shared.fetch()
        tip = shared.tip(self.repo)
        if tip is not None:
            self._follow(shared.ref, tip)
        return tip

    def _follow(self, ref: str, target: str) -> None:
        until = time.monotonic() + self.deadline
        while not fast_forward(self.repo, ref, target, "gitstate: the git server's tip"):
            if time.monotonic() > until:
                raise PublishConflict(ref, 0, "the local ref stayed locked")
            break_stale_ref_locks(self.path, ref)
            time.sleep(0.01 * random.random())

    # -- copying objects in --------------------------------------------------------------

    def import_tree(
        self, source: pygit2.Repository, tree_id: pygit2.Oid, *, exclude_spec: bool = False
    ) -> Imported:
        """Copy a tree and everything under it from ``source`` into storage.

        Gitlinks (submodules) are dropped, as is the root's ``spec``
        directory when ``exclude_spec``. Three steps: scan the source trees
        for what storage lacks (and for symlinks), copy those objects (as
        one pack when there are many, which costs a fraction of writing
        loose objects one by one), then rebuild the few trees that lost an
        entry. Scans are remembered by tree id, so a module shared by twenty
        environments is walked once per process. Symlinks are judged on the
        environment's final tree (:meth:`check_links`), not here: where a
        link lands depends on the links around it.
        """
        key = (tree_id.raw, exclude_spec)
        with self._memo_lock:
            found = self._memo.get(key)
        if found is not None:
            return found
        missing: list[pygit2.Oid] = []
        self._scan(source, tree_id, missing, set())
        self._copy(source, missing)
        result = Imported(self._rebuild(source, tree_id, exclude_spec))
        with self._memo_lock:
            if len(self._memo) > 200_000:
                self._memo.clear()
            self._memo[key] = result
        return result

    def _scan(
        self,
        source: pygit2.Repository,
        tree_id: pygit2.Oid,
        missing: list[pygit2.Oid],
        seen: set[bytes],
    ) -> _Scan:
        """Walk a source tree: what storage lacks, its gitlinks, its unsafe names."""
        found = self._scans.get(tree_id.raw)
        if found is not None and tree_id in self.repo.odb:
            return found
        odb = self.repo.odb
        present = tree_id in odb
        tree = source[tree_id]
        changed = False
        for entry in tree:
            mode = entry.filemode
            if mode == _COMMIT:
                changed = True
                continue
            _check_name(entry.name)
            if mode == _TREE:
                sub = self._scan(source, entry.id, missing, seen)
                changed = changed or sub.changed
            elif not present and entry.id.raw not in seen and entry.id not in odb:
                seen.add(entry.id.raw)
                missing.append(entry.id)
        if not present and tree_id.raw not in seen:
            seen.add(tree_id.raw)
            missing.append(tree_id)
        result = _Scan(changed)
        if len(self._scans) > 200_000:
            self._scans.clear()
        self._scans[tree_id.raw] = result
        return result

    def _copy(self, source: pygit2.Repository, missing: list[pygit2.Oid]) -> None:
        """Copy objects into storage: children before the trees naming them."""
        if not missing:
            return
        if len(missing) >= PACK_THRESHOLD:
            packer = pygit2.PackBuilder(source)
            for oid in missing:
                packer.add(oid)
            packer.write(self.path / "objects" / "pack")
            return
        odb = self.repo.odb
        for oid in missing:
            kind, data = source.odb.read(oid)
            odb.write(kind, data)

    def _rebuild(
        self, source: pygit2.Repository, tree_id: pygit2.Oid, exclude_spec: bool
    ) -> pygit2.Oid:
        """Return the storage tree for a source tree, minus gitlinks (and spec)."""
        tree = source[tree_id]
        if not self._scans[tree_id.raw].changed and not (exclude_spec and "spec" in tree):
            return tree_id
        builder = self.repo.TreeBuilder()
        for entry in tree:
            if entry.filemode == _COMMIT or (exclude_spec and entry.name == "spec"):
                continue
            oid = entry.id
            if entry.filemode == _TREE:
                oid = self._rebuild(source, oid, False)
            builder.insert(entry.name, oid, entry.filemode)
        return builder.write()

    def write_blob(self, data: bytes) -> pygit2.Oid:
        """Store bytes as a blob and return its id."""
        return self.repo.create_blob(data)

    def write_tree(self, files: Mapping[str, tuple[pygit2.Oid, int]]) -> pygit2.Oid:
        """Write a tree from ``path → (oid, mode)`` of blobs already stored."""
        nested: dict[str, Any] = {}
        for path, value in files.items():
            parts = path.split("/")
            node = nested
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ValueError(f"{path}: a file is in the way")
            node[parts[-1]] = value
        return self._write_nested(nested)

    def _write_nested(self, nested: Mapping[str, Any]) -> pygit2.Oid:
        builder = self.repo.TreeBuilder()
        for name, value in nested.items():
            if isinstance(value, dict):
                builder.insert(name, self._write_nested(value), FileMode.TREE)
            else:
                builder.insert(name, value[0], value[1])
        return builder.write()

    # -- composing -----------------------------------------------------------------------

    def compose(
        self,
        base: pygit2.Oid,
        placements: Mapping[str, pygit2.Oid],
        files: Mapping[str, pygit2.Oid],
    ) -> pygit2.Oid:
        """Build a tree: ``base`` with trees placed and blobs added.

        Only the trees on the paths to what is placed are rewritten; the
        rest of ``base`` is shared as it is.

        Args:
            base: the control branch's tree (in storage).
            placements: path → tree id; replaces whatever is at the path.
            files: path → blob id, added as regular files.

        Raises:
            ValueError: one placement would be inside another.
        """
        nested: dict[str, Any] = {}
        for path, oid in placements.items():
            _place(nested, path, (oid, FileMode.TREE))
        for path, oid in files.items():
            _place(nested, path, (oid, FileMode.BLOB))
        return self._overlay(self.repo[base], nested)

    def _overlay(self, base: pygit2.Tree | None, nested: Mapping[str, Any]) -> pygit2.Oid:
        repo = self.repo
        builder = repo.TreeBuilder(base) if base is not None else repo.TreeBuilder()
        for name, value in nested.items():
            if isinstance(value, tuple):
                builder.insert(name, value[0], value[1])
                continue
            existing = base[name] if base is not None and name in base else None
            sub_base = (
                repo[existing.id] if existing is not None and existing.filemode == _TREE else None
            )
            builder.insert(name, self._overlay(sub_base, value), FileMode.TREE)
        return builder.write()

    def check_links(self, tree: pygit2.Oid) -> None:
        """Refuse an environment's final tree if a symlink in it is unsafe.

        Each link is resolved against the whole tree, as the file system
        will (:mod:`gitstate.engine.links`); trees already listed or judged
        cost nothing.

        Raises:
            UnsafeSymlink: a link leaves the environment, loops, or has a
                target no file system takes.
        """
        self.links.check(self.repo, tree)

    # -- commits and refs ----------------------------------------------------------------

    def signature(self) -> pygit2.Signature:
        """The service's identity for commits made now."""
        return pygit2.Signature(SERVICE, f"{SERVICE}@{socket.gethostname()}", int(time.time()), 0)

    def environment_tip(self, environment: str) -> str | None:
        """Return the environment-commit the env's ref points to, if any."""
        try:
            return str(self.repo.lookup_reference(ENVIRONMENT_REF_PREFIX + environment).target)
        except (KeyError, pygit2.InvalidSpecError):
            return None

    def commit_environment(self, environment: str, tree: pygit2.Oid, message: str) -> str:
        """Commit ``tree`` as the environment's next version and move its ref.

        The caller holds the environment's lock, so the CAS only guards
        against writers outside gitstate.
        """
        repo = self.repo
        name = ENVIRONMENT_REF_PREFIX + environment
        shared = self.shared(name)
        sig = self.signature()
        until = time.monotonic() + self.deadline
        attempts = 0
        while attempts == 0 or time.monotonic() < until:
            attempts += 1
            there = self._catch_up(shared) if shared is not None else None
            parent = self.environment_tip(environment)
            parents = [pygit2.Oid(hex=parent)] if parent else []
            commit = repo.create_commit(None, sig, sig, message, tree, parents)
            if self.fsync:
                durable.flush(self.path)
            if shared is not None:
                # The git server's ref is the one that counts; this one follows.
                if not shared.push(str(commit), there):
                    continue
                self._follow(name, str(commit))
                return str(commit)
            try:
                if parent is None:
                    repo.references.create(name, commit, force=False)
                else:
                    ref = repo.lookup_reference(name)
                    if str(ref.target) != parent:
                        continue
                    ref.set_target(commit, f"gitstate: {message.splitlines()[0]}")
                return str(commit)
            except (pygit2.AlreadyExistsError, pygit2.GitError, OSError):
                # We hold the environment's lock: an old .lock is a dead writer's.
                break_stale_ref_locks(self.path, name)
                time.sleep(0.01 + 0.04 * random.random())
        raise PublishConflict(name, attempts)

    def delete_environment_ref(self, environment: str) -> None:
        """Drop the environment's ref once it is no longer published."""
        with contextlib.suppress(KeyError, pygit2.GitError):
            self.repo.references.delete(ENVIRONMENT_REF_PREFIX + environment)

    def code_commit(self) -> str | None:
        """Return the current code-commit, or None before the first publish."""
        try:
            return str(self.repo.lookup_reference(CODE_REF).target)
        except KeyError:
            return None

    def published(self, commit: str | None = None) -> dict[str, Published]:
        """Return every environment the code-commit (tip by default) publishes.

        O(environments); a caller after one environment uses
        :meth:`published_one`.
        """
        root = self._code_tree(commit)
        return self._manifests.all(self.repo, root) if root is not None else {}

    def published_one(self, environment: str, commit: str | None = None) -> Published | None:
        """Return what the code-commit (tip by default) publishes for one environment.

        Reads one small blob (a code-commit older than the per-environment
        manifest is parsed whole, once per process).
        """
        root = self._code_tree(commit)
        if root is None:
            return None
        return self._manifests.one(self.repo, root, environment)

    def _code_tree(self, commit: str | None) -> pygit2.Tree | None:
        commit = commit or self.code_commit()
        if commit is None:
            return None
        return self.repo[commit].peel(pygit2.Commit).tree

    def publish(self, updates: Mapping[str, Published | None], message: str) -> str | None:
        """Add, replace or (with None) remove environments in the code-commit.

        Compare-and-swap on :data:`CODE_REF` with retries: each attempt
        re-reads the tip and re-applies ``updates`` to it, so concurrent
        publishes of other environments are kept.

        Returns:
            the new code-commit, or the current one when nothing changed
            (None if there has never been one).

        Raises:
            PublishConflict: the ref could not be advanced before the deadline.
        """
        try:
            with self._host_lock(self.lock_timeout):
                until = time.monotonic() + self.deadline
                published = self._publish_locked(updates, message, until)
            if self.fsync:
                durable.flush(self.path)  # the ref, before clients are told
            return published
        except LockTimeout as ex:
            raise PublishConflict(
                CODE_REF, 0, f"another publisher held {ex.path.name} for {ex.waited:.1f}s"
            ) from ex

    def _publish_locked(
        self, updates: Mapping[str, Published | None], message: str, until: float
    ) -> str | None:
        attempts = 0
        delay = 0.001
        shared = self.shared(CODE_REF)
        while True:
            attempts += 1
            repo = self.repo
            there = self._catch_up(shared) if shared is not None else None
            tip = self.code_commit()
            base = repo[tip].peel(pygit2.Commit).tree if tip else None
            try:
                tree = publish_tree(repo, base, updates, self._manifests)
                if base is not None and tree == base.id:
                    return tip
                sig = self.signature()
                parents = [pygit2.Oid(hex=tip)] if tip else []
                commit = repo.create_commit(None, sig, sig, message, tree, parents)
            except (pygit2.GitError, OSError) as ex:
                # NOTE: git's prune-packed (maintenance) may remove an empty
                # objects/xx folder between libgit2 making it and renaming
                # an object into it; writing the objects again is harmless.
                if time.monotonic() > until:
                    raise PublishConflict(CODE_REF, attempts, f"objects not written: {ex}") from ex
                log.warning("writing the code-commit failed (%s); retrying", ex)
                time.sleep(0.005)
                continue
            if self.fsync:
                # Every object of this version (copied packs included) is on
                # disk before the code ref names it.
                durable.flush(self.path)
            if shared is not None:
                if shared.push(str(commit), there):
                    self._follow(CODE_REF, str(commit))
                    return str(commit)
            elif self._advance(tip, commit, message):
                return str(commit)
            # We hold the publishers' host lock: an old .lock is a dead writer's.
            break_stale_ref_locks(self.path, CODE_REF)
            if time.monotonic() > until:
                raise PublishConflict(CODE_REF, attempts)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.05)

    def _advance(self, tip: str | None, commit: pygit2.Oid, message: str) -> bool:
        repo = self.repo
        reflog = f"gitstate: {message.splitlines()[0]}"[:200]
        try:
            if tip is None:
                repo.create_reference_direct(CODE_REF, commit, False, message=reflog)
            else:
                ref = repo.lookup_reference(CODE_REF)
                if str(ref.target) != tip:
                    return False
                ref.set_target(commit, reflog)
            return True
        except (pygit2.AlreadyExistsError, pygit2.GitError, OSError):
            return False

    def _host_lock(self, timeout: float) -> contextlib.AbstractContextManager[None]:
        """Serialise this host's publishers so they do not storm the ref."""
        return flocked(self.path / "gitstate-code.lock", timeout)

    # -- reading trees back ---------------------------------------------------------------

    def files(self, tree: str | pygit2.Oid) -> dict[str, bytes]:
        """Return path → content of every blob under ``tree`` (for tests and tools).

        Symlinks are returned as their target prefixed with ``-> ``.
        """
        repo = self.repo
        out: dict[str, bytes] = {}
        stack: list[tuple[str, pygit2.Tree]] = [("", repo[tree].peel(pygit2.Tree))]
        while stack:
            prefix, node = stack.pop()
            for entry in node:
                path = prefix + entry.name
                if entry.filemode == _TREE:
                    stack.append((path + "/", repo[entry.id]))
                elif entry.filemode == _LINK:
                    out[path] = b"-> " + repo[entry.id].data
                elif entry.filemode != _COMMIT:
                    out[path] = repo[entry.id].data
        return out

    def export(
        self,
        tree: str | pygit2.Oid,
        target: Path,
        links: dict[tuple[pygit2.Oid, int], Path] | None = None,
    ) -> int:
        """Write ``tree`` as files under ``target`` (like ``git archive | tar x``).

        Args:
            tree: a tree or commit id.
            target: the directory to create.
            links: pass the same dict to several calls to hard-link every
                further copy of a blob to the first one written (g10k's trick
                for modules shared by environments); the files must then be
                treated as read-only.

        Returns:
            the number of files written.
        """
        repo = self.repo
        count = 0
        stack: list[tuple[Path, pygit2.Tree]] = [(Path(target), repo[tree].peel(pygit2.Tree))]
        while stack:
            directory, node = stack.pop()
            directory.mkdir(parents=True, exist_ok=True)
            for entry in node:
                path = directory / entry.name
                mode = entry.filemode
                if mode == _TREE:
                    stack.append((path, repo[entry.id]))
                    continue
                if mode == _COMMIT:
                    continue
                count += 1
                if mode == _LINK:
                    os.symlink(repo[entry.id].data, path)
                    continue
                first = links.get((entry.id, mode)) if links is not None else None
                if first is not None:
                    os.link(first, path)
                    continue
                path.write_bytes(repo[entry.id].data)
                if mode == FileMode.BLOB_EXECUTABLE:
                    path.chmod(0o755)
                if links is not None:
                    links[(entry.id, mode)] = path
        return count


def _check_name(name: str | None) -> None:
    """Refuse entry names a checkout must never write."""
    if not name or name in (".", "..") or name.lower() == ".git" or "/" in name or "\0" in name:
        raise UnsafeEntry(str(name))


def _place(nested: dict[str, Any], path: str, value: Any) -> None:
    parts = [part for part in path.split("/") if part]
    node = nested
    for index, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"{path} is inside {'/'.join(parts[: index + 1])}, placed already")
        node = child
    if isinstance(node.get(parts[-1]), dict) and not (
        isinstance(value, tuple) and value[0] == "keep"
    ):
        raise ValueError(f"{path} would hide content placed inside it")
    node[parts[-1]] = value


def init_storage(path: Path) -> None:
    """Create the bare storage repository if it does not exist."""
    create_bare(
        Path(path),
        "code",
        {
            "core.logAllRefUpdates": "always",
            "user.name": SERVICE,
            "user.email": f"{SERVICE}@{socket.gethostname()}",
            "receive.denyNonFastForwards": True,
        },
    )


def normalise(path: str) -> str:
    """Return ``path`` normalised, relative to the environment root."""
    return posixpath.normpath(path).lstrip("/")
