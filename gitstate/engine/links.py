"""Symlinks of an environment, resolved the way the file system will resolve them.

Comparing a link's text with its depth is not enough: ``x ->
a/l/../../etc`` climbs only as far as the text says, but if ``a/l`` is
itself a link to the environment's root, the kernel's ``..`` starts from
there and ``x`` lands outside. So every link of an environment's final tree
(branch and modules at their install paths) is resolved against that tree
component by component, as ``namei`` does:

* a component that is a link is replaced by its target, read relative to
  the link's directory; an absolute target leaves the environment;
* ``..`` at the environment's root leaves it (above the root is the live
  directory's ``.versions/<env>/``, never code);
* more than :data:`MAX_HOPS` links followed in one resolution is a loop
  (the kernel's ``ELOOP``);
* a component that does not exist, or is a file, ends the kernel's walk;
  the rest is still read as if it were a directory, so a link is accepted
  only if it could not leave even once the missing part appears (a local
  edit, a generated directory).

The engine refuses an environment holding such a link before it is
published, and every file-sync client checks again before writing one,
trusting nothing storage says. Links are listed once per tree id, so an
environment costs what its *new* trees hold, and one without links costs a
dictionary lookup per new tree.
"""

from __future__ import annotations

import collections
import posixpath

import pygit2
from pygit2.enums import FileMode

from gitstate.errors import GitStateError

#: Links followed in one resolution before it is a loop (Linux's MAXSYMLINKS).
MAX_HOPS = 40
#: Longest symlink target the kernel stores, plus one (Linux's PATH_MAX).
PATH_MAX = 4096
_TREE = int(FileMode.TREE)
_LINK = int(FileMode.LINK)

#: ``(path in the environment, target)`` of every symlink of a tree.
LinkList = tuple[tuple[str, str], ...]


class UnsafeSymlink(GitStateError, ValueError):
    """A symlink of an environment cannot be written safely.

    Attributes:
        link: the link's path, relative to the environment.
        target: its target as stored.
        reason: why it is refused (completes "symlink LINK -> TARGET ...").
    """

    reason = "cannot be written"

    def __init__(self, link: str, target: str) -> None:
        self.link = link
        self.target = target
        super().__init__(f"symlink {link} -> {target} {self.reason}")


class SymlinkEscape(UnsafeSymlink):
    """A symlink resolves outside its environment (absolute, or by ``..`` through links)."""

    reason = "points outside the environment"


class SymlinkLoop(UnsafeSymlink):
    """Resolving a symlink follows more than :data:`MAX_HOPS` links (a cycle)."""

    reason = f"never resolves: more than {MAX_HOPS} links followed (a loop)"


class BadSymlinkTarget(UnsafeSymlink):
    """A symlink's target is empty, holds a NUL byte or is too long: no file system takes it."""

    reason = "has a target no file system accepts"


class _Outside(Exception):
    """Raised inside one resolution: it left the environment."""


class _Loop(Exception):
    """Raised inside one resolution: too many links followed."""


class TreeLinks:
    """Lists the symlinks of trees (once per tree id) and checks environments.

    Args:
        limit: tree ids remembered before the memory is dropped.
    """

    def __init__(self, limit: int = 200_000) -> None:
        self._limit = limit
        self._lists: dict[bytes, LinkList] = {}
        self._checked: dict[bytes, UnsafeSymlink | None] = {}

    def listed(self, repo: pygit2.Repository, tree: pygit2.Oid) -> LinkList:
        """Return every symlink under ``tree``: ``(path, target)``.

        Walks only the subtrees not listed before (without recursion, so a
        hostile tree's depth costs no stack), children before parents.
        """
        found = self._lists.get(tree.raw)
        if found is not None:
            return found
        if len(self._lists) >= self._limit:
            self._lists.clear()
        stack: list[tuple[pygit2.Oid, bool]] = [(tree, False)]
        while stack:
            oid, children_done = stack.pop()
            if oid.raw in self._lists:
                continue
            node = repo[oid]
            if not children_done:
                stack.append((oid, True))
                stack.extend(
                    (entry.id, False)
                    for entry in node
                    if entry.filemode == _TREE and entry.id.raw not in self._lists
                )
                continue
            self._lists[oid.raw] = self._own_links(repo, node)
        return self._lists[tree.raw]

    def _own_links(self, repo: pygit2.Repository, node: pygit2.Tree) -> LinkList:
        """Return one tree's links, its subtrees' lists being known."""
        links: list[tuple[str, str]] = []
        for entry in node:
            name = entry.name or ""
            if entry.filemode == _LINK:
                links.append((name, _target(repo, entry.id)))
            elif entry.filemode == _TREE:
                links.extend(
                    (f"{name}/{path}", target) for path, target in self._lists[entry.id.raw]
                )
        return tuple(links)

    def check(self, repo: pygit2.Repository, tree: pygit2.Oid) -> None:
        """Refuse an environment's tree if one of its links is unsafe.

        The verdict is remembered per tree id: a full check of a client's
        thousand environments resolves nothing twice.

        Raises:
            UnsafeSymlink: the first link (in path order) that escapes, loops
                or has an impossible target.
        """
        if tree.raw in self._checked:
            found = self._checked[tree.raw]
        else:
            found = first_unsafe(repo, tree, self.listed(repo, tree))
            if len(self._checked) >= self._limit:
                self._checked.clear()
            self._checked[tree.raw] = found
        if found is not None:
            raise found


def first_unsafe(
    repo: pygit2.Repository, tree: pygit2.Oid, links: LinkList
) -> UnsafeSymlink | None:
    """Return the first unsafe link of an environment's tree, or None."""
    if not links:
        return None
    lookup = _Lookup(repo, repo[tree])
    for path, target in sorted(links):
        if (
            not target
            or "\0" in target
            or len(target.encode("utf-8", "surrogateescape")) >= PATH_MAX
        ):
            return BadSymlinkTarget(path, target)
        try:
            resolve(lookup, path)
        except _Outside:
            return SymlinkEscape(path, target)
        except _Loop:
            return SymlinkLoop(path, target)
    return None


class _Lookup:
    """What is at a path of one tree (mode and id), remembered per path."""

    def __init__(self, repo: pygit2.Repository, root: pygit2.Tree) -> None:
        self.repo = repo
        self.root = root
        self._known: dict[tuple[str, ...], tuple[int, pygit2.Oid] | None] = {}

    def at(self, parts: tuple[str, ...]) -> tuple[int, pygit2.Oid] | None:
        """Return ``(mode, id)`` of the entry at ``parts``, or None if there is none."""
        if parts in self._known:
            return self._known[parts]
        found: tuple[int, pygit2.Oid] | None = (_TREE, self.root.id)
        for depth in range(1, len(parts) + 1):
            prefix = parts[:depth]
            if prefix in self._known:
                found = self._known[prefix]
                continue
            if found is None or found[0] != _TREE:
                found = None
            else:
                found = _entry(self.repo[found[1]], prefix[-1])
            self._known[prefix] = found
        return found

    def target(self, oid: pygit2.Oid) -> str:
        """Return a link's target."""
        return _target(self.repo, oid)


def resolve(lookup: _Lookup, path: str) -> tuple[str, ...]:
    """Resolve the link at ``path`` as the kernel would; return where it lands.

    Raises:
        _Outside: it leaves the environment.
        _Loop: more than :data:`MAX_HOPS` links are followed.
    """
    directory = [part for part in posixpath.dirname(path).split("/") if part]
    pending = collections.deque([posixpath.basename(path)])
    return tuple(_walk(lookup, directory, pending))


def _walk(lookup: _Lookup, current: list[str], pending: collections.deque[str]) -> list[str]:
    """Consume ``pending`` components from the directory ``current``.

    Below a component that is missing or a file nothing exists, so nothing
    there is looked up: ``absent`` is the depth from which ``current`` is
    only text.
    """
    hops = 0
    absent: int | None = None
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not current:
                raise _Outside
            current.pop()
            if absent is not None and len(current) < absent:
                absent = None
            continue
        found = lookup.at((*current, part)) if absent is None else None
        if found is not None and found[0] == _LINK:
            hops += 1
            if hops > MAX_HOPS:
                raise _Loop
            target = lookup.target(found[1])
            if target.startswith("/"):
                raise _Outside
            # Read from the link's directory: ``current`` stays as it is.
            pending.extendleft(reversed(target.split("/")))
            continue
        if absent is None and (found is None or found[0] != _TREE):
            # Missing, or a file: a later edit could make it a directory,
            # so the rest is still read below it, as text.
            absent = len(current) + 1
        current.append(part)
    return current


def _entry(node: pygit2.Tree, name: str) -> tuple[int, pygit2.Oid] | None:
    """Return ``(mode, id)`` of one entry of a tree, or None."""
    try:
        entry = node[name]
    except KeyError:
        return None
    return entry.filemode, entry.id


def _target(repo: pygit2.Repository, oid: pygit2.Oid) -> str:
    return repo.odb.read(oid)[1].decode("utf-8", "surrogateescape")
