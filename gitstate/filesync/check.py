"""Finding local edits in a version without reading every file.

A version of an environment is the tree it is named after, written once and
never changed by the client again. Edits made behind the client's back show
in one of two places:

* **in a file's inode** (content written in place, mode changed): every
  file is a hard link to an object of :mod:`gitstate.filesync.objects`,
  which are checked there, one per distinct blob;
* **in a directory** (a file or directory added, removed, renamed or
  replaced by another inode): creating or removing an entry sets the
  directory's ctime, which no user can set back. A version's marker file is
  written when the version is complete, so its mtime is a file-system time
  after every change the client made; a directory whose ctime is not older
  than that has changed since (or in the same clock tick, which costs a
  needless look) and is listed and compared with the tree.

So a check costs one ``lstat`` per directory of the version; only the
directories that moved are listed. The trees' shapes are read from git once
per tree id (:class:`Subtrees`): a module shared by a hundred environments
is looked at once.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable

import pygit2
from pygit2.enums import FileMode

_TREE = int(FileMode.TREE)
_LINK = int(FileMode.LINK)
_COMMIT = int(FileMode.COMMIT)
_EXECUTABLE = int(FileMode.BLOB_EXECUTABLE)

#: ``inodes(blob id, executable)`` → inodes of the unedited objects for it.
Inodes = Callable[[str, bool], set[int]]


def safe_name(name: str | None) -> bool:
    """Return whether a tree entry's name can be written inside a version."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


class Subtrees:
    """The subdirectories of each tree, read from git once per tree id."""

    def __init__(self, limit: int = 200_000) -> None:
        self._limit = limit
        self._known: dict[bytes, tuple[tuple[str, pygit2.Oid], ...]] = {}

    def of(self, repo: pygit2.Repository, oid: pygit2.Oid) -> tuple[tuple[str, pygit2.Oid], ...]:
        """Return ``(name, tree id)`` of the directories directly in tree ``oid``."""
        found = self._known.get(oid.raw)
        if found is None:
            found = tuple(
                (entry.name, entry.id)
                for entry in repo[oid]
                if entry.filemode == _TREE and safe_name(entry.name)
            )
            if len(self._known) >= self._limit:
                self._known.clear()
            self._known[oid.raw] = found
        return found


@dataclasses.dataclass
class DirCheck:
    """What :func:`check_dirs` found in one version.

    Attributes:
        edits: ``(path, change)`` with change ``modified``, ``added`` or
            ``removed``.
        listed: directories whose ctime moved, which were listed.
        missing: the version's root directory is gone.
    """

    edits: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    listed: int = 0
    missing: bool = False


def check_dirs(
    repo: pygit2.Repository,
    root: str,
    tree: pygit2.Oid,
    since: int,
    subtrees: Subtrees,
    inodes: Inodes,
) -> DirCheck:
    """Compare the directories of a version with its tree.

    Args:
        repo: holds the tree.
        root: the version's directory.
        tree: the tree it was written from.
        since: file-system time (ns) after which a directory counts as changed.
        subtrees: the trees' shapes.
        inodes: the object store's inodes for a blob.
    """
    result = DirCheck()
    stack: list[tuple[str, pygit2.Oid]] = [("", tree)]
    while stack:
        rel, oid = stack.pop()
        try:
            found = os.lstat(f"{root}/{rel}")
        except FileNotFoundError:
            result.missing = result.missing or not rel
            continue  # its parent changed: reported there
        if not stat.S_ISDIR(found.st_mode):
            continue
        if found.st_ctime_ns >= since:
            result.listed += 1
            result.edits.extend(_compare(repo, root, rel, oid, inodes))
        stack.extend((f"{rel}{name}/", sub) for name, sub in subtrees.of(repo, oid))
    return result


def _compare(
    repo: pygit2.Repository, root: str, rel: str, oid: pygit2.Oid, inodes: Inodes
) -> list[tuple[str, str]]:
    """List one directory and compare it with its tree."""
    directory = os.path.join(root, rel) if rel else root
    present = {entry.name: entry for entry in os.scandir(directory)}
    edits: list[tuple[str, str]] = []
    for entry in repo[oid]:
        name, mode = entry.name, entry.filemode
        if mode == _COMMIT or not safe_name(name):
            continue
        path = rel + name
        item = present.pop(name, None)
        if mode == _TREE:
            if item is None:
                edits.extend((f"{path}/{sub}", "removed") for sub in _files(repo, entry.id))
            elif not item.is_dir(follow_symlinks=False):
                edits.append((path, "modified"))
            continue
        if mode == _LINK:
            # A version holding an unsafe link is never written (livedir).
            target = repo[entry.id].data.decode("utf-8", "surrogateescape")
            if item is None:
                edits.append((path, "removed"))
            elif not item.is_symlink() or os.readlink(item.path) != target:
                edits.append((path, "modified"))
            continue
        if item is None:
            edits.append((path, "removed"))
        elif not item.is_file(follow_symlinks=False) or item.stat(
            follow_symlinks=False
        ).st_ino not in inodes(str(entry.id), mode == _EXECUTABLE):
            edits.append((path, "modified"))
    for name, item in sorted(present.items()):
        inside = _walk(item.path) if item.is_dir(follow_symlinks=False) else []
        edits.extend((f"{rel}{name}/{sub}", "added") for sub in inside)
        if not inside:
            edits.append((rel + name, "added"))
    return edits


def _files(repo: pygit2.Repository, oid: pygit2.Oid) -> list[str]:
    """Return every file and link under a tree, relative to it."""
    found = []
    stack: list[tuple[str, pygit2.Oid]] = [("", oid)]
    while stack:
        prefix, tree = stack.pop()
        for entry in repo[tree]:
            if entry.filemode == _TREE:
                stack.append((f"{prefix}{entry.name}/", entry.id))
            elif entry.filemode != _COMMIT:
                found.append(prefix + entry.name)
    return sorted(found)


def _walk(directory: str) -> list[str]:
    """Return every non-directory under ``directory`` on disk, relative to it."""
    found = []
    for current, dirnames, filenames in os.walk(directory):
        rel = os.path.relpath(current, directory)
        links = [name for name in dirnames if os.path.islink(os.path.join(current, name))]
        for name in filenames + links:
            found.append(name if rel == "." else f"{rel}/{name}")
    return sorted(found)


class BlobSearch:
    """Finds the files of given blobs in trees, searching each subtree once.

    Used when objects were found edited, to find which files of which
    versions show the edit.

    Args:
        repo: holds the trees.
        wanted: ``(blob id, executable)`` of the objects looked for.
    """

    def __init__(self, repo: pygit2.Repository, wanted: set[tuple[str, bool]]) -> None:
        self._repo = repo
        self._wanted = wanted
        self._memo: dict[bytes, list[tuple[str, str, bool]]] = {}

    def paths(self, tree: pygit2.Oid) -> list[tuple[str, str, bool]]:
        """Return ``(path, blob id, executable)`` of every wanted file in ``tree``."""
        found = self._memo.get(tree.raw)
        if found is not None:
            return found
        found = []
        for entry in self._repo[tree]:
            mode = entry.filemode
            if mode == _TREE and safe_name(entry.name):
                inside = self.paths(entry.id)
                found.extend((f"{entry.name}/{path}", *rest) for path, *rest in inside)
            elif mode not in (_TREE, _LINK, _COMMIT):
                key = (str(entry.id), mode == _EXECUTABLE)
                if key in self._wanted:
                    found.append((str(entry.name), *key))
        self._memo[tree.raw] = found
        return found
