"""File sync, client core: materialise code-commits into a live code directory.

A live directory looks like this::

    LIVE/environments/<env>               symlink → ../.versions/<env>/<version>
    LIVE/.versions/<env>/<version>/       one complete environment, every file a
                                          hard link to an object
    LIVE/.versions/<env>/<version>.json   the version's marker, written once the
                                          version is complete
    LIVE/.objects/                        one file per blob (gitstate.filesync.objects)
    LIVE/.trash/                          pruned versions, deleted after the sync
    LIVE/.gitstate-sync.json              the applied code-commit (check-in data)
    LIVE/.gitstate-sync.lock              one client per live directory (flock)

``<version>`` is the environment's tree id (``<tree>~<n>`` when a version of
the same tree had to be rebuilt because of local edits), so git itself says
what a version holds: the client keeps no per-file index.

**A sync costs what changed.** The state file names the code-commit the
live directory shows; the next one is compared with it tree to tree, so
only environments whose tree changed are looked at, and a sync to the
code-commit already shown reads nothing but the state file. A new version
is written complete under a staging name, renamed, marked, and only then
made visible by ``os.replace`` of a fresh symlink over
``environments/<env>``: one atomic step. A reader that resolved the
environment once (``realpath``, ``chdir``) sees one complete version from
start to end. Every file of a version is a hard link to an object, so a
version costs one ``link()`` per file and one write per blob that no
version held yet.

**Local edits** (r10k's "Overwriting local modifications") are found by
:mod:`gitstate.filesync.check`: by the objects, for content written in
place, and by the directories' ctimes, for files added, removed or
replaced. The full check (``verify``) looks at every current version that
way; a version about to be replaced is looked at before it goes, and an
object is checked before it is linked, so an edit is reported once and
never carried into a new version. An environment showing an edit is
rebuilt.

**Interrupted syncs.** The state file says which code-commit a sync was
applying while it runs; a sync that finds that mark (the previous one was
killed or failed) compares every environment with the target instead of
trusting the tree comparison. Leftovers of a killed sync are removed when
the next one takes the lock.

Nothing here talks to a server: :mod:`gitstate.filesync.client` decides
*when* to apply which commit, from a local storage repository or a fetched
copy of a remote one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pygit2
from pygit2.enums import FileMode

from gitstate.engine.links import TreeLinks, UnsafeSymlink
from gitstate.engine.manifest import ENVIRONMENTS_DIR
from gitstate.engine.sources import environment_name_problem
from gitstate.errors import GitStateError
from gitstate.filesync.check import BlobSearch, DirCheck, Subtrees, check_dirs, safe_name
from gitstate.filesync.objects import OBJECTS, ObjectStore

log = logging.getLogger(__name__)

#: The state file and version markers; version 1 was a per-file JSON index.
SCHEMA_VERSION = 2
VERSIONS = ".versions"
TRASH = ".trash"
STATE_FILE = ".gitstate-sync.json"
LOCK_FILE = ".gitstate-sync.lock"
DEFAULT_KEEP_VERSIONS = 3
#: Local edits kept in the state file (and so in check-ins).
MAX_EDITS = 100
#: Failed environments kept in the state file (and so in check-ins), and
#: the longest reason kept for each: with the local edits' budget, a
#: check-in stays under the server's 64 KiB bodies.
MAX_FAILED = 20
MAX_REASON = 300
_NAME_MAX = 255
#: A marker is a few hundred bytes; anything larger is an index of layout 1.
_MARKER_MAX = 1024
_TREE = int(FileMode.TREE)
_LINK = int(FileMode.LINK)
_COMMIT = int(FileMode.COMMIT)
_EXECUTABLE = int(FileMode.BLOB_EXECUTABLE)


class LiveDirBusy(GitStateError, RuntimeError):
    """Another client already syncs this live directory."""

    def __init__(self, live: Path) -> None:
        self.live = live
        super().__init__(f"{live} is already synced by another gitstate sync process")


def environment_trees(repo: pygit2.Repository, code_commit: str) -> dict[str, str]:
    """Return environment → tree id of what a code-commit publishes.

    Read from the code-commit's ``environments/`` tree, which is what a
    client writes; entries with a name no live directory may hold are left
    out (and logged).
    """
    root = repo[code_commit].peel(pygit2.Commit).tree
    return _trees(repo, root[ENVIRONMENTS_DIR].id if ENVIRONMENTS_DIR in root else None)


def _trees(
    repo: pygit2.Repository, oid: pygit2.Oid | None, refused: dict[str, str] | None = None
) -> dict[str, str]:
    """Return environment → tree of an ``environments/`` tree.

    Entries that are not trees or whose names a live directory cannot hold
    are left out, and put in ``refused`` (name → why) when it is given.
    """
    found: dict[str, str] = {}
    for entry in repo[oid] if oid is not None else ():
        name = entry.name or ""
        why = "not a directory" if entry.filemode != _TREE else environment_name_problem(name)
        if why is not None:
            log.warning("code-commit names environment %r; not synced: %s", name, why)
            if refused is not None:
                refused[name] = f"refused name: {why}"
            continue
        found[name] = str(entry.id)
    return found


def _failures(state: Mapping[str, Any]) -> dict[str, str]:
    """Return the environments the last sync failed (env → why)."""
    failed = state.get("failed")
    if not isinstance(failed, Mapping):
        return {}
    return {str(env): str(why) for env, why in failed.items()}


def _bounded(failed: Mapping[str, str]) -> dict[str, str]:
    """Return at most :data:`MAX_FAILED` failures, each reason cut to a readable length."""
    return {env[:_NAME_MAX]: why[:MAX_REASON] for env, why in sorted(failed.items())[:MAX_FAILED]}


def _environments_tree(repo: pygit2.Repository, code_commit: str) -> pygit2.Oid | None:
    root = repo[code_commit].peel(pygit2.Commit).tree
    return root[ENVIRONMENTS_DIR].id if ENVIRONMENTS_DIR in root else None


@dataclasses.dataclass
class LocalEdit:
    """A change made in a live directory behind the client's back."""

    environment: str
    path: str
    change: str  # modified | added | removed

    def to_json(self) -> dict[str, str]:
        """Return the edit as reported in check-ins."""
        return {"environment": self.environment, "path": self.path, "change": self.change}


@dataclasses.dataclass
class SyncReport:
    """What one :meth:`LiveDir.apply` did.

    Attributes:
        code_commit: the code-commit applied.
        updated: environments whose visible version changed.
        removed: environments taken out.
        local_edits: edits found (and overwritten).
        written: files whose bytes were written (blobs no object held).
        linked: files hard-linked to an object already on disk.
        examined: environments whose version on disk was looked at; a sync
            examines only those whose tree changed (all of them when it
            verifies, or after an interrupted sync).
        hashed: files whose content was hashed because their metadata moved.
        failed: environments not brought to their tree, and why (a symlink
            refused, a name or a write the file system refused); the others
            are synced all the same.
    """

    code_commit: str
    updated: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    local_edits: list[LocalEdit] = dataclasses.field(default_factory=list)
    written: int = 0
    linked: int = 0
    examined: int = 0
    hashed: int = 0
    failed: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Run:
    """Bookkeeping of one apply."""

    report: SyncReport
    #: env → the version it showed before this apply replaced it.
    replaced: dict[str, str] = dataclasses.field(default_factory=dict)
    #: environments built (or swapped) by this apply.
    built: set[str] = dataclasses.field(default_factory=set)
    #: environments whose current version shows an edit: rebuilt at the end.
    edited: set[str] = dataclasses.field(default_factory=set)
    _seen: set[tuple[str, str, str]] = dataclasses.field(default_factory=set)

    def edits(self, found: list[LocalEdit], *, rebuild: bool) -> None:
        """Report edits (once each); with ``rebuild``, their environments are rebuilt."""
        for edit in found:
            key = (edit.environment, edit.path, edit.change)
            if key not in self._seen:
                self._seen.add(key)
                self.report.local_edits.append(edit)
            if rebuild:
                self.edited.add(edit.environment)


class LiveDir:
    """One live code directory and its environment versions.

    Args:
        root: the live directory (``--live``); ``root/environments`` is what
            Puppet's ``environmentpath`` points at.
        keep_versions: how many versions of each environment to keep
            (the current one included).
    """

    def __init__(self, root: Path, *, keep_versions: int = DEFAULT_KEEP_VERSIONS) -> None:
        self.root = Path(root).absolute()
        self.keep_versions = max(1, keep_versions)
        self.environments = self.root / "environments"
        self.versions = self.root / VERSIONS
        self.objects = ObjectStore(self.root / OBJECTS)
        self.trash = self.root / TRASH
        self._subtrees = Subtrees()
        self._links = TreeLinks()
        self._refused: tuple[bytes, dict[str, str]] | None = None

    # -- locking and state ----------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the live directory for this process (non-blocking).

        Raises:
            LiveDirBusy: another process holds it.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as ex:
                raise LiveDirBusy(self.root) from ex
            self.environments.mkdir(exist_ok=True)
            self.versions.mkdir(exist_ok=True)
            self.objects.root.mkdir(exist_ok=True)
            self.trash.mkdir(exist_ok=True)
            self._remove_leftovers()
            yield
        finally:
            os.close(fd)

    def state(self) -> dict[str, Any]:
        """Return the last state written by :meth:`apply` (empty if none)."""
        try:
            return dict(json.loads((self.root / STATE_FILE).read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return {}

    def _write_state(self, state: Mapping[str, Any]) -> None:
        _write_json_atomically(self.root / STATE_FILE, state)

    def current(self, env: str) -> str | None:
        """Return the version ``environments/<env>`` points at, if it points at one."""
        try:
            target = os.readlink(self.environments / env)
        except OSError:
            return None
        version = os.path.basename(target)
        return version if target == f"../{VERSIONS}/{env}/{version}" else None

    def version_path(self, env: str, version: str) -> Path:
        """Return the directory of one version of an environment."""
        return self.versions / env / version

    def live_environments(self) -> list[str]:
        """Return the environments visible in the live directory."""
        try:
            return sorted(
                name
                for name in os.listdir(self.environments)
                if environment_name_problem(name) is None
            )
        except FileNotFoundError:
            return []

    # -- applying a code-commit -----------------------------------------------------

    def apply(
        self,
        repo: pygit2.Repository,
        code_commit: str,
        *,
        verify: bool = False,
    ) -> SyncReport:
        """Make the live directory show ``code_commit``.

        Only environments whose tree differs between the code-commit shown
        and ``code_commit`` are looked at. With ``verify`` (the full check)
        every environment is compared with the code-commit and every
        current version checked for local edits, which makes it be rebuilt.
        The caller holds :meth:`locked`.

        Args:
            repo: a repository holding the code-commit and its objects.
            code_commit: the code-commit to show.
            verify: compare every environment and check for local edits.
        """
        report = SyncReport(code_commit)
        state = self.state()
        layout = state.get("schema_version") == SCHEMA_VERSION
        shown = state.get("code_commit") if layout and not state.get("applying") else None
        if shown == code_commit and not verify:
            return report
        self.objects.trusted_before = int(state.get("objects_checked") or 0) if layout else 0
        self.objects.start_run()
        hashed = self.objects.hashed
        target = _environments_tree(repo, code_commit)
        changed, removed = self._changes(repo, shown, target, full=verify)
        failed_before = _failures(state) if layout else {}
        changed.update(self._retried(repo, target, failed_before, changed))
        report.failed.update(self._refused_names(repo, target))
        if changed or removed:
            # Until this sync ends, the tree comparison cannot be trusted.
            self._write_state({**state, "applying": code_commit})
        run = _Run(report)
        for env, tree in sorted(changed.items()):
            report.examined += 1
            with self._isolated(env, run):
                self._converge(repo, env, tree, run)
        for env in removed:
            with self._isolated(env, run):
                self._remove(env)
                report.removed.append(env)
        if verify:
            self._check(repo, run)
        self._repair(repo, run)
        report.hashed = self.objects.hashed - hashed
        for edit in report.local_edits:
            log.warning(
                "Overwriting local modification in %s: %s (%s)",
                edit.environment,
                edit.path,
                edit.change,
            )
        edits = state.get("local_edits") if layout else []
        edits_at = state.get("local_edits_at") if layout else None
        if report.local_edits:
            edits = [edit.to_json() for edit in report.local_edits][:MAX_EDITS]
            edits_at = time.time()
        synced_at = state.get("synced_at")
        if shown != code_commit or report.updated or report.removed or not synced_at:
            synced_at = time.time()
        self._write_state(
            {
                "schema_version": SCHEMA_VERSION,
                "code_commit": code_commit,
                "applying": None,
                "synced_at": synced_at,
                "local_edits": edits or [],
                "local_edits_at": edits_at,
                "objects_checked": self.objects.trusted_before,
                "failed": _bounded(report.failed),
            }
        )
        return report

    def _retried(
        self,
        repo: pygit2.Repository,
        target: pygit2.Oid | None,
        failed_before: Mapping[str, str],
        changed: Mapping[str, str],
    ) -> dict[str, str]:
        """Return env → tree of environments the last sync failed, to try again.

        Their trees may not have changed since, so the tree comparison alone
        would leave them as they are.
        """
        if not failed_before:
            return {}
        wanted = _trees(repo, target)
        return {env: wanted[env] for env in failed_before if env in wanted and env not in changed}

    def _refused_names(self, repo: pygit2.Repository, target: pygit2.Oid | None) -> dict[str, str]:
        """Return the environments of ``target`` whose names no live directory takes.

        Listed once per ``environments/`` tree: a sync that changes nothing
        there pays nothing.
        """
        if target is None:
            return {}
        if self._refused is None or self._refused[0] != target.raw:
            refused: dict[str, str] = {}
            _trees(repo, target, refused)
            self._refused = (target.raw, refused)
        return dict(self._refused[1])

    def _changes(
        self, repo: pygit2.Repository, shown: str | None, target: pygit2.Oid | None, *, full: bool
    ) -> tuple[dict[str, str], list[str]]:
        """Return environments to converge (env → tree) and environments to remove.

        Compared with the code-commit shown when that can be trusted:
        identical ``environments/`` trees cost nothing, and otherwise only
        the entries of two trees are compared. Else every environment.
        """
        if not full and shown is not None:
            try:
                before = _environments_tree(repo, shown)
            except (KeyError, ValueError):
                before = None  # not in this repository: compare everything
            else:
                if before == target:
                    return {}, []
                old, wanted = _trees(repo, before), _trees(repo, target)
                changed = {env: tree for env, tree in wanted.items() if old.get(env) != tree}
                return changed, sorted(env for env in old if env not in wanted)
        wanted = _trees(repo, target)
        return wanted, [env for env in self.live_environments() if env not in wanted]

    @contextlib.contextmanager
    def _isolated(self, env: str, run: _Run) -> Iterator[None]:
        """Confine a failure to its environment: report it, and go on with the others.

        A symlink that would leave the environment, a name or a write the
        file system refuses (``ENAMETOOLONG``, ``EACCES``, ``ENOSPC``) stop
        this environment only; it keeps whatever version it showed.
        """
        try:
            yield
        except (UnsafeSymlink, OSError) as ex:
            reason = f"{type(ex).__name__}: {ex}"
            log.error("environment %s not synced: %s", env, reason)
            run.report.failed[env] = reason

    def _converge(self, repo: pygit2.Repository, env: str, tree: str, run: _Run) -> None:
        """Make ``env`` show ``tree``, unless it already does.

        A tree whose links are unsafe is never written; if it is what the
        environment shows (written by a client that judged links by their
        text), the environment is taken out.
        """
        version = self.current(env)
        try:
            self._links.check(repo, pygit2.Oid(hex=tree))
        except UnsafeSymlink:
            if version is not None and _tree_of(version) == tree:
                self._remove(env)
            raise
        since = self._since(env, version) if version is not None else None
        if since is not None and version is not None:
            if _tree_of(version) == tree:
                return
            # Replaced: whatever was edited in it is overwritten now.
            run.replaced[env] = version
            run.edits(self._check_version(repo, env, version, since), rebuild=False)
        self._build(repo, env, tree, run)
        run.report.updated.append(env)

    # -- building one version -------------------------------------------------------

    def _build(
        self,
        repo: pygit2.Repository,
        env: str,
        tree: str,
        run: _Run,
        *,
        reuse: bool = True,
    ) -> str:
        """Write ``tree`` as a new version of ``env`` and swap it in; return its name.

        With ``reuse``, an intact version of the same tree still kept (a
        rollback, a reverted branch) is swapped back instead.
        """
        self._links.check(repo, pygit2.Oid(hex=tree))
        env_versions = self.versions / env
        env_versions.mkdir(parents=True, exist_ok=True)
        run.built.add(env)
        kept = self._kept_version(repo, env, tree) if reuse else None
        if kept is not None:
            self._swap(env, kept)
            self._prune(env, keep=kept)
            return kept
        version = tree
        if (env_versions / version).exists() or (env_versions / f"{version}.json").exists():
            version = f"{tree}~{time.time_ns()}"
        staging = env_versions / f".tmp-{version}"
        try:
            self._write_tree(repo, tree, str(staging), run.report)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        os.rename(staging, env_versions / version)
        # Written after the rename (which sets the directory's ctime): the
        # marker's mtime is the baseline of the version's directories.
        _write_json_atomically(
            env_versions / f"{version}.json",
            {"schema_version": SCHEMA_VERSION, "environment": env, "tree": tree},
        )
        self._swap(env, version)
        self._prune(env, keep=version)
        return version

    def _write_tree(
        self, repo: pygit2.Repository, tree: str, staging: str, report: SyncReport
    ) -> None:
        """Write a tree under ``staging``: directories, symlinks, links to objects.

        Its symlinks were resolved against the tree first (:meth:`_build`).
        """
        os.mkdir(staging)
        objects = self.objects
        stack: list[tuple[str, pygit2.Oid]] = [(staging, pygit2.Oid(hex=tree))]
        while stack:
            directory, oid = stack.pop()
            for entry in repo[oid]:
                mode = entry.filemode
                name = entry.name
                if mode == _COMMIT or not safe_name(name):
                    continue
                path = f"{directory}/{name}"
                if mode == _TREE:
                    os.mkdir(path)
                    stack.append((path, entry.id))
                elif mode == _LINK:
                    os.symlink(repo[entry.id].data.decode("utf-8", "surrogateescape"), path)
                elif objects.place(repo, entry.id, mode == _EXECUTABLE, path):
                    report.written += 1
                else:
                    report.linked += 1

    def _kept_version(self, repo: pygit2.Repository, env: str, tree: str) -> str | None:
        """Return a retained, intact version of ``tree``, if there is one."""
        try:
            names = sorted(os.listdir(self.versions / env))
        except FileNotFoundError:
            return None
        current = self.current(env)
        for name in names:
            if name.startswith(".") or name.endswith(".json") or name == current:
                continue
            if _tree_of(name) != tree:
                continue
            since = self._since(env, name)
            if since is None:
                continue
            check = functools.partial(self._intact, repo, env, name, since)
            if self._rebaseline(env, name, since, check):
                return name
        return None

    def _intact(self, repo: pygit2.Repository, env: str, version: str, since: int) -> bool:
        """Return whether a kept version still holds exactly its tree.

        Its directories are checked as in the full check; and, since it may
        link an object found edited after it stopped being current, every
        file is compared with the store's unedited objects (one ``lstat``
        per file: this is a rollback, not a sync).
        """
        found = self._check_dirs(repo, env, version, since)
        if found.edits or found.missing:
            return False
        root = str(self.version_path(env, version))
        inodes: dict[tuple[str, bool], set[int]] = {}
        stack: list[tuple[str, pygit2.Oid]] = [("", pygit2.Oid(hex=_tree_of(version)))]
        while stack:
            prefix, oid = stack.pop()
            for entry in repo[oid]:
                mode = entry.filemode
                if mode == _TREE:
                    stack.append((f"{prefix}{entry.name}/", entry.id))
                elif mode not in (_LINK, _COMMIT):
                    key = (str(entry.id), mode == _EXECUTABLE)
                    if key not in inodes:
                        inodes[key] = self.objects.inodes(repo, *key)
                    try:
                        inode = os.lstat(f"{root}/{prefix}{entry.name}").st_ino
                    except OSError:
                        return False
                    if inode not in inodes[key]:
                        return False
        return True

    def _swap(self, env: str, version: str) -> None:
        """Point ``environments/<env>`` at ``version`` in one atomic step."""
        link = self.environments / env
        temporary = self.environments / f".{env}.swap-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        os.symlink(f"../{VERSIONS}/{env}/{version}", temporary)
        if link.is_dir() and not link.is_symlink():
            # A real directory where the symlink belongs (made by hand or by
            # another tool): move it aside, it cannot be replaced atomically.
            aside = self.versions / env / f".replaced-{time.time_ns()}"
            os.rename(link, aside)
            log.warning("moved %s aside to %s", link, aside)
        os.replace(temporary, link)

    # -- checking for local edits ---------------------------------------------------

    def _since(self, env: str, version: str) -> int | None:
        """Return the baseline of a complete version of this layout (None if it is not one).

        The baseline is the mtime of the version's marker: a file-system
        time after every change the client made to the version.
        """
        marker = self.versions / env / f"{version}.json"
        try:
            found = os.stat(marker)
            if found.st_size > _MARKER_MAX:
                return None
            data = json.loads(marker.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
            return None
        if not (self.versions / env / version).is_dir():
            return None
        return found.st_mtime_ns

    def _check(self, repo: pygit2.Repository, run: _Run) -> None:
        """The full check: every object, then every current version's directories."""
        self.objects.scan(repo)
        for env in self.live_environments():
            if env in run.built:
                continue
            version = self.current(env)
            since = self._since(env, version) if version is not None else None
            if version is None or since is None:
                continue
            with self._isolated(env, run):
                run.edits(self._check_version(repo, env, version, since), rebuild=True)

    def _check_version(
        self, repo: pygit2.Repository, env: str, version: str, since: int
    ) -> list[LocalEdit]:
        """Return the edits made in one version's directories."""
        found = self._check_dirs(repo, env, version, since)
        if found.listed and not found.edits and not found.missing:
            # Directories written in the tick the marker was (or touched and
            # put back): move the baseline past them, so they are not listed
            # at every check.
            self._rebaseline(
                env, version, since, lambda: not self._check_dirs(repo, env, version, since).edits
            )
        if found.missing:
            return [LocalEdit(env, ".", "removed")]
        return [LocalEdit(env, path, change) for path, change in found.edits]

    def _check_dirs(self, repo: pygit2.Repository, env: str, version: str, since: int) -> DirCheck:
        inodes: dict[tuple[str, bool], set[int]] = {}

        def objects(oid: str, executable: bool) -> set[int]:
            key = (oid, executable)
            if key not in inodes:
                inodes[key] = self.objects.inodes(repo, oid, executable)
            return inodes[key]

        return check_dirs(
            repo,
            str(self.version_path(env, version)),
            pygit2.Oid(hex=_tree_of(version)),
            since,
            self._subtrees,
            objects,
        )

    def _rebaseline(self, env: str, version: str, since: int, clean: Callable[[], bool]) -> bool:
        """Move a version's baseline to now if ``clean()`` holds after the move.

        The marker is touched *before* looking again (with the old
        baseline), so a change made while looking is after the new one; if
        the version is not clean the old baseline is put back.
        """
        marker = self.versions / env / f"{version}.json"
        os.utime(marker)
        if clean():
            return True
        with contextlib.suppress(OSError):
            os.utime(marker, ns=(since, since))
        return False

    def _repair(self, repo: pygit2.Repository, run: _Run) -> None:
        """Report objects found edited and rebuild every environment showing an edit."""
        for _round in range(3):
            if self.objects.bad:
                bad, self.objects.bad = self.objects.bad, {}
                search = BlobSearch(repo, set(bad.values()))
                shown = [(env, self.current(env)) for env in self.live_environments()]
                for env, version in shown:
                    if version is not None:
                        run.edits(self._showing(search, bad, env, version), rebuild=True)
                for env, version in run.replaced.items():
                    run.edits(self._showing(search, bad, env, version), rebuild=False)
            pending = sorted(run.edited)
            run.edited = set()
            if not pending:
                return
            for env in pending:
                version = self.current(env)
                if version is None:
                    continue
                with self._isolated(env, run):
                    self._build(repo, env, _tree_of(version), run, reuse=False)
                    if env not in run.report.updated:
                        run.report.updated.append(env)

    def _showing(
        self,
        search: BlobSearch,
        bad: Mapping[int, tuple[str, bool]],
        env: str,
        version: str,
    ) -> list[LocalEdit]:
        """Return the files of a version that link one of the ``bad`` inodes."""
        root = self.version_path(env, version)
        edits = []
        for path, _oid, _executable in search.paths(pygit2.Oid(hex=_tree_of(version))):
            try:
                inode = os.lstat(root / path).st_ino
            except OSError:
                continue
            if inode in bad:
                edits.append(LocalEdit(env, path, "modified"))
        return edits

    # -- removing and pruning -------------------------------------------------------

    def _remove(self, env: str) -> None:
        """Take a deleted environment out of the live directory."""
        link = self.environments / env
        if link.is_symlink() or link.is_file():
            os.unlink(link)
        elif link.is_dir():
            self._discard(link)
        self._discard(self.versions / env)
        log.info("Environment %s removed", env)

    def _prune(self, env: str, keep: str) -> None:
        """Keep the newest ``keep_versions`` versions of ``env``, ``keep`` among them."""
        env_versions = self.versions / env
        found = []
        for item in os.scandir(env_versions):
            if item.name.endswith(".json") and not item.name.startswith("."):
                found.append((item.stat().st_mtime_ns, item.name.removesuffix(".json")))
        found.sort(reverse=True)
        kept = {keep}
        for _stamp, name in found:
            if len(kept) >= self.keep_versions:
                break
            kept.add(name)
        for _stamp, name in found:
            if name not in kept:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(env_versions / f"{name}.json")
                self._discard(env_versions / name)

    def _discard(self, path: Path) -> None:
        """Move a directory to the trash: one rename now, deleted by :meth:`empty_trash`."""
        try:
            os.rename(path, self.trash / f"{time.time_ns()}-{path.name}")
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(path, ignore_errors=True)

    def empty_trash(self) -> int:
        """Delete pruned versions and removed environments; return how many.

        Kept out of :meth:`apply` so that a sync's new versions are visible
        and checked in before the old ones' files are unlinked.
        """
        try:
            doomed = list(os.scandir(self.trash))
        except FileNotFoundError:
            return 0
        for item in doomed:
            if item.is_dir(follow_symlinks=False):
                shutil.rmtree(item.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(item.path)
        return len(doomed)

    def _remove_leftovers(self) -> None:
        """Remove what a killed client left half-written (we hold the lock)."""
        for item in os.scandir(self.environments):
            if item.name.startswith(".") and ".swap-" in item.name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(item.path)
        self.objects.remove_leftovers()
        for env_dir in os.scandir(self.versions):
            if not env_dir.is_dir(follow_symlinks=False):
                continue
            current = self.current(env_dir.name)
            names = set(os.listdir(env_dir.path))
            for name in names:
                path = os.path.join(env_dir.path, name)
                if name.startswith((".tmp-", ".json-")):
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(path)
                elif name.startswith("."):
                    continue
                elif name.endswith(".json"):
                    if name.removesuffix(".json") not in names:
                        # The marker of a version whose directory is gone.
                        os.unlink(path)
                elif f"{name}.json" not in names and name != current:
                    # Renamed into place, killed before its marker was written.
                    shutil.rmtree(path, ignore_errors=True)


def _tree_of(version: str) -> str:
    return version.split("~", 1)[0]


def _write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON to ``path`` by writing a temporary file and renaming it."""
    temporary = path.with_name(f".json-{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)
