"""The code-commit's manifest: what it publishes for each environment.

Beside each environment's tree, a code-commit holds one small blob saying
which environment-commit, control-branch signature and deploy key that tree
was published as::

    environments/<env>/       the environment's files
    published/<env>.json      {"commit", "deploy_key", "signature", "tree"}
    environments.json         a stub for readers that predate published/

One blob per environment keeps the manifest's cost proportional to what a
deploy changes: a publish writes one blob per environment it changes, and a
reader of one environment parses one blob, however many environments there
are. Code-commits made before this layout (schema 1) listed every
environment in the single blob ``environments.json``, which every publish
rewrote and every reader parsed whole; they are still read, and the first
publish on top of one converts it.

``environments.json`` stays as a stub whose ``environments`` is null: a
file-sync client or server older than this layout fails on it with an
error, where a missing file would have read as "no environments" and made
an old client empty its live directory.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Mapping
from typing import Any

import pygit2
from pygit2.enums import FileMode

ENVIRONMENTS_DIR = "environments"
PUBLISHED_DIR = "published"
#: The single-blob manifest of schema 1; a stub from schema 2 on.
LEGACY_MANIFEST = "environments.json"
SCHEMA_VERSION = 2
_SUFFIX = ".json"
_STUB = (
    json.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "environments": None,
            "moved-to": f"{PUBLISHED_DIR}/<environment>{_SUFFIX}",
        },
        indent=2,
        sort_keys=True,
    )
    + "\n"
).encode()
_TREE = int(FileMode.TREE)


@dataclasses.dataclass(frozen=True)
class Published:
    """What the code-commit says about one environment."""

    environment: str
    commit: str
    tree: str
    signature: str
    deploy_key: str


def entry_bytes(item: Published) -> bytes:
    """Return the bytes of an environment's ``published/<env>.json`` blob."""
    data = {
        "commit": item.commit,
        "deploy_key": item.deploy_key,
        "signature": item.signature,
        "tree": item.tree,
    }
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


class ManifestReader:
    """Reads manifests, remembering every blob it parsed by its id.

    A blob id names its bytes forever, so a parsed entry never goes stale;
    reading every environment of a code-commit again after a publish parses
    only the blobs that publish wrote. Safe to share between threads (a race
    at worst parses a blob twice).

    Args:
        limit: how many parsed blobs to keep before starting afresh.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._entries: dict[bytes, tuple[str, str, str, str]] = {}
        self._legacy: dict[bytes, dict[str, Published]] = {}
        self._lock = threading.Lock()

    def one(self, repo: pygit2.Repository, root: pygit2.Tree, env: str) -> Published | None:
        """Return what ``root`` (a code-commit's tree) publishes for ``env``."""
        if PUBLISHED_DIR in root:
            try:
                entry = root[f"{PUBLISHED_DIR}/{env}{_SUFFIX}"]
            except KeyError:
                return None
            return self._entry(repo, env, entry.id)
        return self._read_legacy(repo, root).get(env)

    def all(self, repo: pygit2.Repository, root: pygit2.Tree) -> dict[str, Published]:
        """Return every environment ``root`` (a code-commit's tree) publishes."""
        if PUBLISHED_DIR in root:
            found = {}
            for entry in repo[root[PUBLISHED_DIR].id]:
                name = entry.name or ""
                if name.endswith(_SUFFIX):
                    env = name[: -len(_SUFFIX)]
                    found[env] = self._entry(repo, env, entry.id)
            return found
        return dict(self._read_legacy(repo, root))

    def _entry(self, repo: pygit2.Repository, env: str, oid: pygit2.Oid) -> Published:
        fields = self._entries.get(oid.raw)
        if fields is None:
            data = json.loads(repo[oid].data)
            fields = (
                str(data.get("commit", "")),
                str(data.get("tree", "")),
                str(data.get("signature", "")),
                str(data.get("deploy_key", "")),
            )
            with self._lock:
                if len(self._entries) >= self._limit:
                    self._entries.clear()
                self._entries[oid.raw] = fields
        return Published(env, *fields)

    def _read_legacy(self, repo: pygit2.Repository, root: pygit2.Tree) -> dict[str, Published]:
        """Return the environments of a schema-1 ``environments.json`` (empty if none)."""
        if LEGACY_MANIFEST not in root:
            return {}
        oid = root[LEGACY_MANIFEST].id
        found = self._legacy.get(oid.raw)
        if found is None:
            listed = json.loads(repo[oid].data).get("environments") or {}
            found = {
                env: Published(
                    environment=env,
                    commit=str(item["commit"]),
                    tree=str(item["tree"]),
                    signature=str(item.get("signature", "")),
                    deploy_key=str(item.get("deploy_key", "")),
                )
                for env, item in listed.items()
            }
            with self._lock:
                if len(self._legacy) >= 16:
                    self._legacy.clear()
                self._legacy[oid.raw] = found
        return found


def publish_tree(
    repo: pygit2.Repository,
    base: pygit2.Tree | None,
    updates: Mapping[str, Published | None],
    reader: ManifestReader,
) -> pygit2.Oid:
    """Write the root tree of a code-commit: ``base`` with ``updates`` applied.

    Only the trees on the paths to what changed are written (the root,
    ``environments/`` and ``published/``) plus one blob per environment
    updated. A ``base`` in the schema-1 layout is converted on the way.

    Args:
        repo: the storage repository.
        base: the current code-commit's tree (None before the first).
        updates: environment → what to publish, or None to remove it.
        reader: parses a schema-1 base.
    """
    envs = _builder(repo, base, ENVIRONMENTS_DIR)
    if base is not None and PUBLISHED_DIR not in base:
        published = repo.TreeBuilder()
        for env, item in reader.all(repo, base).items():
            published.insert(env + _SUFFIX, repo.create_blob(entry_bytes(item)), FileMode.BLOB)
    else:
        published = _builder(repo, base, PUBLISHED_DIR)
    for env, item in updates.items():
        name = env + _SUFFIX
        if item is None:
            if envs.get(env) is not None:
                envs.remove(env)
            if published.get(name) is not None:
                published.remove(name)
            continue
        envs.insert(env, pygit2.Oid(hex=item.tree), FileMode.TREE)
        published.insert(name, repo.create_blob(entry_bytes(item)), FileMode.BLOB)
    root = repo.TreeBuilder(base) if base is not None else repo.TreeBuilder()
    root.insert(ENVIRONMENTS_DIR, envs.write(), FileMode.TREE)
    root.insert(PUBLISHED_DIR, published.write(), FileMode.TREE)
    root.insert(LEGACY_MANIFEST, repo.create_blob(_STUB), FileMode.BLOB)
    return root.write()


def _builder(repo: pygit2.Repository, base: pygit2.Tree | None, name: str) -> Any:
    if base is not None and name in base and base[name].filemode == _TREE:
        return repo.TreeBuilder(repo[base[name].id])
    return repo.TreeBuilder()
