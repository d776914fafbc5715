"""File sync, client core: materialise code-commits into a live code directory.

A live directory looks like this::

    LIVE/environments/<env>          symlink → ../.versions/<env>/<version>
    LIVE/.versions/<env>/<version>/  one complete environment (files only)
    LIVE/.versions/<env>/<version>.json   what was written there (the index)
    LIVE/.gitstate-sync.json         the last applied code-commit (check-in data)
    LIVE/.gitstate-sync.lock         one client per live directory (flock)

``<version>`` is the environment's tree id (``<tree>~<n>`` when a version
of the same tree had to be rebuilt because of local edits). A version is
written completely, its index is written, the directory is renamed into
place and only then does the environment's symlink change, by
``os.replace`` of a fresh symlink over the old one: one atomic step. A
reader that resolves ``environments/<env>`` once (``realpath``, ``chdir``)
sees one complete version from start to end, even while newer ones arrive.

Writing is cheap because versions share files: a blob whose id and mode
match a file already on disk (the environment's previous version, or any
version written in the same run) is hard-linked, not written. The index
records each file's blob id, mode and stat fingerprint (inode, size,
mtime); a file whose fingerprint no longer matches was edited in place and
is neither linked again nor trusted: the environment is rebuilt and the edit
reported (r10k's "Overwriting local modifications").

Nothing here talks to a server: :mod:`gitstate.filesync_client` decides
*when* to apply which commit, from a local storage repository or a fetched
copy of a remote one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pygit2
from pygit2.enums import FileMode

from gitstate.deploys import duration
from gitstate.errors import GitStateError
from gitstate.manifest import ENVIRONMENTS_DIR, ManifestReader
from gitstate.storage import link_escape

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
VERSIONS = ".versions"
STATE_FILE = ".gitstate-sync.json"
LOCK_FILE = ".gitstate-sync.lock"
DEFAULT_KEEP_VERSIONS = 3
_TREE = int(FileMode.TREE)
_LINK = int(FileMode.LINK)
_COMMIT = int(FileMode.COMMIT)
_EXECUTABLE = int(FileMode.BLOB_EXECUTABLE)
#: Environment names a client will materialise (storage uses the same rule).
_ENV_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
#: Client names: they become file names on the server.
CLIENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,99}$")


class FileSyncConfigError(GitStateError, ValueError):
    """The ``file_sync`` config section has a bad value."""

    def __init__(self, key: str, detail: str) -> None:
        self.key = key
        self.detail = detail
        super().__init__(f"file_sync.{key}: {detail}")


class LiveDirBusy(GitStateError, RuntimeError):
    """Another client already syncs this live directory."""

    def __init__(self, live: Path) -> None:
        self.live = live
        super().__init__(f"{live} is already synced by another gitstate sync process")


@dataclasses.dataclass(frozen=True)
class ClientSpec:
    """One configured file-sync client.

    Attributes:
        name: how the client reports itself (a certname in PE).
        live: its live code directory.
        storage: where it syncs from: None for the server's own storage
            repository (same host), or the server's base URL
            (``http://host:8170``) for the network transport.
    """

    name: str
    live: Path
    storage: str | None = None


@dataclasses.dataclass(frozen=True)
class FileSyncSettings:
    """The ``file_sync`` config section.

    Attributes:
        token: the shared secret clients present to the network endpoints
            (``X-Authentication`` or ``?token=``); None disables them.
        clients: the clients ``gitstate serve`` runs and ``wait`` waits for.
        keep_versions: versions of each environment kept in a live dir.
        reconcile_interval: seconds between full checks of a live dir
            (local edits, missed events).
        long_poll_timeout: longest a ``latest-commit`` request is held.
        check_in_interval: seconds between heartbeats of an idle client.
        sync_timeout: longest ``wait: true`` waits for the clients
            (``deploy.timeouts.sync``).
    """

    token: str | None = None
    clients: tuple[ClientSpec, ...] = ()
    keep_versions: int = DEFAULT_KEEP_VERSIONS
    reconcile_interval: float = 60.0
    long_poll_timeout: float = 30.0
    check_in_interval: float = 30.0
    sync_timeout: float = 60.0

    @classmethod
    def from_config(cls, raw: Mapping[str, Any] | None) -> FileSyncSettings:
        """Read ``file_sync`` (and ``deploy.timeouts.sync``) from a raw config.

        Raises:
            FileSyncConfigError: a key has a bad value.
        """
        raw = raw or {}
        section = raw.get("file_sync") or {}
        if not isinstance(section, Mapping):
            raise FileSyncConfigError("", "must be a mapping")
        clients = []
        for index, item in enumerate(section.get("clients") or []):
            if not isinstance(item, Mapping) or not item.get("name") or not item.get("live"):
                raise FileSyncConfigError(f"clients[{index}]", "needs a name and a live dir")
            name = str(item["name"])
            if not CLIENT_NAME.match(name):
                raise FileSyncConfigError(f"clients[{index}].name", f"{name!r} is not a name")
            storage = item.get("storage")
            clients.append(
                ClientSpec(name, Path(str(item["live"])).expanduser(), storage and str(storage))
            )
        if len({client.name for client in clients}) != len(clients):
            raise FileSyncConfigError("clients", "client names must be unique")
        deploy = raw.get("deploy") or {}
        timeouts = deploy.get("timeouts") or {} if isinstance(deploy, Mapping) else {}
        try:
            keep = int(section.get("keep_versions", cls.keep_versions))
            settings = cls(
                token=str(section["token"]) if section.get("token") else None,
                clients=tuple(clients),
                keep_versions=keep,
                reconcile_interval=duration(
                    section.get("reconcile_interval", cls.reconcile_interval)
                ),
                long_poll_timeout=duration(section.get("long_poll_timeout", cls.long_poll_timeout)),
                check_in_interval=duration(section.get("check_in_interval", cls.check_in_interval)),
                sync_timeout=duration(timeouts.get("sync", cls.sync_timeout)),
            )
        except (TypeError, ValueError) as ex:
            raise FileSyncConfigError("", str(ex)) from ex
        if keep < 1:
            raise FileSyncConfigError("keep_versions", "must be at least 1")
        return settings


@dataclasses.dataclass(frozen=True)
class Target:
    """What a code-commit publishes for one environment."""

    environment: str
    tree: str
    commit: str
    signature: str


def read_targets(repo: pygit2.Repository, code_commit: str) -> dict[str, Target]:
    """Return the environments a code-commit publishes, from its manifest.

    Environments named in the manifest but absent from the tree, or with a
    name no live directory may hold, are left out (and logged).
    """
    tree = repo[code_commit].peel(pygit2.Commit).tree
    manifest = {
        env: {"tree": item.tree, "commit": item.commit, "signature": item.signature}
        for env, item in ManifestReader().all(repo, tree).items()
    }
    names: dict[str, str] = {}
    if ENVIRONMENTS_DIR in tree:
        names = {entry.name: str(entry.id) for entry in repo[tree[ENVIRONMENTS_DIR].id]}
    targets = {}
    for env, item in manifest.items():
        if not _ENV_NAME.match(env) or env in (".", ".."):
            log.warning("code-commit %s names environment %r; not a safe name", code_commit, env)
            continue
        tree_id = names.get(env, item.get("tree"))
        targets[env] = Target(env, tree_id, item.get("commit", ""), item.get("signature", ""))
    return targets


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
    """What one :meth:`LiveDir.apply` did."""

    code_commit: str
    updated: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    local_edits: list[LocalEdit] = dataclasses.field(default_factory=list)
    written: int = 0
    linked: int = 0
    refused_links: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Dir:
    """A version directory; its path changes once, when staging is renamed."""

    path: str


@dataclasses.dataclass
class _Source:
    """A file on disk that can be hard-linked for ``(blob id, mode)``."""

    directory: _Dir
    rel: str
    fingerprint: tuple[int, int, int]
    owner: tuple[str, str] | None = None  # (env, path) when in the env's current version

    @property
    def path(self) -> str:
        """Where the file is now."""
        return os.path.join(self.directory.path, self.rel)


@dataclasses.dataclass
class _Run:
    """Bookkeeping shared by every environment built in one apply."""

    report: SyncReport
    pool: dict[tuple[str, int], _Source] = dataclasses.field(default_factory=dict)
    seeded: bool = False


def _fingerprint(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


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
        """Return the version ``environments/<env>`` points at, if any."""
        try:
            target = os.readlink(self.environments / env)
        except OSError:
            return None
        return os.path.basename(target)

    def version_path(self, env: str, version: str) -> Path:
        """Return the directory of one version of an environment."""
        return self.versions / env / version

    def live_environments(self) -> list[str]:
        """Return the environments visible in the live directory."""
        try:
            return sorted(name for name in os.listdir(self.environments) if _ENV_NAME.match(name))
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

        Environments whose current version already holds the published tree
        are left alone (and, with ``verify``, checked for local edits, which
        makes them be rebuilt). The caller holds :meth:`locked`.

        Args:
            repo: a repository holding the code-commit and its objects.
            code_commit: the code-commit to show.
            verify: check unchanged environments for local edits too.
        """
        targets = read_targets(repo, code_commit)
        run = _Run(SyncReport(code_commit))
        envs_state: dict[str, Any] = {}
        for env, target in sorted(targets.items()):
            current = self.current(env)
            index = self._read_index(env, current) if current else None
            if current is not None and index is not None and _tree_of(current) == target.tree:
                edits = self._check(env, current, index) if verify else []
                run.report.local_edits.extend(edits)
                if edits:
                    current = self._build(repo, env, target, current, index, run, edits_known=True)
                    run.report.updated.append(env)
            else:
                current = self._build(repo, env, target, current, index, run)
                run.report.updated.append(env)
            envs_state[env] = {
                "environment-commit": target.commit,
                "deploy-signature": target.signature,
                "tree": target.tree,
                "version": current,
            }
        for env in self.live_environments():
            if env not in targets:
                self._remove(env)
                run.report.removed.append(env)
        for edit in run.report.local_edits:
            log.warning(
                "Overwriting local modification in %s: %s (%s)",
                edit.environment,
                edit.path,
                edit.change,
            )
        previous = self.state()
        edits = previous.get("local_edits") or []
        edits_at = previous.get("local_edits_at")
        if run.report.local_edits:
            edits = [edit.to_json() for edit in run.report.local_edits][:100]
            edits_at = time.time()
        self._write_state(
            {
                "schema_version": SCHEMA_VERSION,
                "code_commit": code_commit,
                "synced_at": time.time(),
                "environments": envs_state,
                "local_edits": edits,
                "local_edits_at": edits_at,
            }
        )
        return run.report

    # -- building one version -------------------------------------------------------

    def _build(
        self,
        repo: pygit2.Repository,
        env: str,
        target: Target,
        current: str | None,
        index: Mapping[str, Any] | None,
        run: _Run,
        *,
        edits_known: bool = False,
    ) -> str:
        """Write ``target`` as a new version of ``env`` and swap it in; return its name.

        Files of the current version that were edited are not linked; they
        are reported as local edits unless ``edits_known`` (already reported).
        """
        env_versions = self.versions / env
        env_versions.mkdir(parents=True, exist_ok=True)
        if index is not None and current is not None:
            self._seed(run, env, current, index, own=not edits_known)
        elif not run.seeded:
            # A new environment: it most likely shares modules with the others.
            run.seeded = True
            for other in self.live_environments():
                version = self.current(other)
                other_index = self._read_index(other, version) if version else None
                if version and other_index is not None:
                    self._seed(run, other, version, other_index)
        kept = self._kept_version(env, target.tree) if not edits_known else None
        if kept is not None:
            # A version of this tree is still on disk, unedited (a rollback,
            # or a branch reverted): swapping back to it costs nothing.
            os.utime(env_versions / f"{kept}.json")
            self._swap(env, kept)
            self._prune(env, keep=kept)
            return kept
        version = target.tree
        if (env_versions / version).exists() or (env_versions / f"{version}.json").exists():
            version = f"{target.tree}~{time.time_ns()}"
        staging = _Dir(str(env_versions / f".tmp-{version}"))
        files, links = self._write_tree(repo, target.tree, staging, run)
        index_data = {
            "schema_version": SCHEMA_VERSION,
            "environment": env,
            "tree": target.tree,
            "environment-commit": target.commit,
            "deploy-signature": target.signature,
            "files": files,
            "links": links,
        }
        _write_json_atomically(env_versions / f"{version}.json", index_data)
        os.rename(staging.path, env_versions / version)
        staging.path = str(env_versions / version)
        self._swap(env, version)
        self._prune(env, keep=version)
        return version

    def _kept_version(self, env: str, tree: str) -> str | None:
        """Return a retained, unedited version of ``tree``, if there is one."""
        try:
            names = sorted(os.listdir(self.versions / env))
        except FileNotFoundError:
            return None
        for name in names:
            if name.startswith(".") or name.endswith(".json") or _tree_of(name) != tree:
                continue
            index = self._read_index(env, name)
            if index is not None and not self._check(env, name, index):
                return name
        return None

    def _seed(
        self, run: _Run, env: str, version: str, index: Mapping[str, Any], *, own: bool = False
    ) -> None:
        base = _Dir(str(self.version_path(env, version)))
        for rel, (oid, mode, ino, size, mtime) in index.get("files", {}).items():
            owner = (env, rel) if own else None
            run.pool.setdefault((oid, mode), _Source(base, rel, (ino, size, mtime), owner))

    def _write_tree(
        self, repo: pygit2.Repository, tree_id: str, staging: _Dir, run: _Run
    ) -> tuple[dict[str, list[Any]], dict[str, str]]:
        """Write a tree under ``staging``; return the index of its files and links."""
        files: dict[str, list[Any]] = {}
        links: dict[str, str] = {}
        report = run.report
        os.mkdir(staging.path)
        stack: list[tuple[str, pygit2.Oid]] = [("", pygit2.Oid(hex=tree_id))]
        odb = repo.odb
        while stack:
            prefix, oid = stack.pop()
            for entry in repo[oid]:
                mode = entry.filemode
                rel = prefix + entry.name
                path = os.path.join(staging.path, rel)
                if mode == _TREE:
                    os.mkdir(path)
                    stack.append((rel + "/", entry.id))
                elif mode == _LINK:
                    target = odb.read(entry.id)[1].decode("utf-8", "surrogateescape")
                    if link_escape(prefix, target) > 0:
                        # Storage refuses such trees; a client never trusts that alone.
                        log.warning(
                            "not writing symlink %s -> %s: leaves the environment", rel, target
                        )
                        report.refused_links.append(rel)
                        continue
                    os.symlink(target, path)
                    links[rel] = target
                elif mode != _COMMIT:
                    key = (str(entry.id), mode)
                    stat = self._link(run, run.pool.get(key), path)
                    if stat is None:
                        stat = _write_file(path, odb.read(entry.id)[1], mode)
                        report.written += 1
                        run.pool[key] = _Source(staging, rel, _fingerprint(stat))
                    else:
                        report.linked += 1
                    files[rel] = [key[0], mode, *_fingerprint(stat)]
        return files, links

    def _link(self, run: _Run, source: _Source | None, path: str) -> os.stat_result | None:
        """Hard-link ``source`` at ``path`` if it is still as written."""
        if source is None:
            return None
        try:
            stat = os.lstat(source.path)
        except OSError:
            stat = None
        if stat is None or _fingerprint(stat) != source.fingerprint:
            if source.owner is not None:
                run.report.local_edits.append(
                    LocalEdit(*source.owner, "modified" if stat else "removed")
                )
                source.owner = None
            return None
        try:
            os.link(source.path, path)
        except OSError as ex:
            if ex.errno in (errno.EMLINK, errno.EXDEV, errno.EPERM):
                return None
            raise
        return stat

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

    def _check(self, env: str, version: str, index: Mapping[str, Any]) -> list[LocalEdit]:
        """Compare a version on disk with its index; return what was edited."""
        base = self.version_path(env, version)
        files: dict[str, list[Any]] = dict(index.get("files", {}))
        links: dict[str, str] = dict(index.get("links", {}))
        edits: list[LocalEdit] = []
        for directory, dirnames, filenames in os.walk(base):
            rel_dir = os.path.relpath(directory, base)
            linked_dirs = [d for d in dirnames if os.path.islink(os.path.join(directory, d))]
            for name in filenames + linked_dirs:
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                full = os.path.join(directory, name)
                if os.path.islink(full):
                    target = links.pop(rel, None)
                    if target is None:
                        edits.append(LocalEdit(env, rel, "added"))
                    elif os.readlink(full) != target:
                        edits.append(LocalEdit(env, rel, "modified"))
                    continue
                item = files.pop(rel, None)
                if item is None:
                    edits.append(LocalEdit(env, rel, "added"))
                elif _fingerprint(os.lstat(full)) != tuple(item[2:5]):
                    edits.append(LocalEdit(env, rel, "modified"))
        edits.extend(LocalEdit(env, rel, "removed") for rel in sorted({*files, *links}))
        return edits

    # -- removing and pruning -------------------------------------------------------

    def _remove(self, env: str) -> None:
        """Take a deleted environment out of the live directory."""
        link = self.environments / env
        if link.is_symlink() or link.is_file():
            os.unlink(link)
        elif link.is_dir():
            shutil.rmtree(link)
        shutil.rmtree(self.versions / env, ignore_errors=True)
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
                shutil.rmtree(env_versions / name, ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(env_versions / f"{name}.json")

    def _remove_leftovers(self) -> None:
        """Remove what a killed client left half-written (we hold the lock)."""
        for item in os.scandir(self.environments):
            if item.name.startswith(".") and ".swap-" in item.name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(item.path)
        for env_dir in os.scandir(self.versions):
            if not env_dir.is_dir(follow_symlinks=False):
                continue
            for item in os.scandir(env_dir.path):
                if item.name.startswith(".tmp-") or item.name.startswith(".json-"):
                    if item.is_dir(follow_symlinks=False):
                        shutil.rmtree(item.path, ignore_errors=True)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(item.path)
                elif item.name.endswith(".json") and not os.path.isdir(
                    item.path.removesuffix(".json")
                ):
                    # The index of a version whose rename never happened.
                    os.unlink(item.path)

    def _read_index(self, env: str, version: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.versions / env / f"{version}.json").read_text("utf-8"))
        except (OSError, ValueError):
            return None
        if not (self.versions / env / version).is_dir():
            return None
        return dict(data)


def _tree_of(version: str) -> str:
    return version.split("~", 1)[0]


def _write_file(path: str, data: bytes, mode: int) -> os.stat_result:
    """Create ``path`` with ``data``; return its stat."""
    fd = os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755 if mode == _EXECUTABLE else 0o644
    )
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        return os.fstat(fd)
    finally:
        os.close(fd)


def _write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON to ``path`` by writing a temporary file and renaming it."""
    temporary = path.with_name(f".json-{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)
