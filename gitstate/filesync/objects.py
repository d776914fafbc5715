"""A live directory's object store: one file per blob, hard-linked into versions.

::

    LIVE/.objects/<2 hex>/<38 hex>      a blob's bytes, mode 0644
    LIVE/.objects/<2 hex>/<38 hex>.x    the same bytes, executable (0755)
    ... +<n>                            another copy, once one reached the
                                        file system's limit of hard links

Every file of every version in the live directory is a hard link to one of
these objects. That makes three things cheap:

* **Writing a version.** A file whose blob an object holds is one
  ``link()``; only blobs that no version on disk holds are written, once,
  however many environments share them.
* **Finding in-place edits.** An edit through any path of a version writes
  the shared inode, so it shows on the object: checking every object (one
  ``lstat`` each, content hashed only when the size or mtime moved) covers
  every file of every environment with one stat per distinct blob instead
  of one per file. Files added, removed or replaced change their directory
  instead (:mod:`gitstate.filesync.check`).
* **Collecting garbage.** An object no version links any more has a link
  count of 1 and is removed by the check.

An object found edited is taken out of the store (the versions that link it
keep the edited inode until they are rebuilt or pruned) and its inode is
remembered in :attr:`ObjectStore.bad`, so that the live directory can find
and rebuild every environment showing the edit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import os
import shutil
import stat
from pathlib import Path

import pygit2

OBJECTS = ".objects"
_EXECUTABLE = ".x"
_GENERATION = "+"
_STAMP = "stamp"
_TEMPORARY = "tmp-"
_HEX = frozenset("0123456789abcdef")


def object_name(oid: str, executable: bool) -> str:
    """Return the base name of the object holding blob ``oid`` with that mode."""
    return oid + _EXECUTABLE if executable else oid


def parse_name(name: str) -> tuple[str, bool] | None:
    """Return ``(blob id, executable)`` of an object's file name (without fan-out)."""
    base = name.split(_GENERATION, 1)[0]
    executable = base.endswith(_EXECUTABLE)
    oid = base.removesuffix(_EXECUTABLE)
    if len(oid) not in (40, 64) or not set(oid) <= _HEX:
        return None
    return oid, executable


@dataclasses.dataclass
class ScanResult:
    """What one :meth:`ObjectStore.scan` found.

    Attributes:
        objects: objects looked at.
        hashed: objects whose content had to be hashed (metadata moved).
        collected: objects no version linked any more, removed.
        bad: objects found edited this scan (inode → blob id, executable).
    """

    objects: int = 0
    hashed: int = 0
    collected: int = 0
    bad: dict[int, tuple[str, bool]] = dataclasses.field(default_factory=dict)


class ObjectStore:
    """``LIVE/.objects``; used by one process at a time (the live dir's lock).

    Args:
        root: the ``.objects`` directory.

    Attributes:
        trusted_before: file-system time (ns) of the last complete check: an
            object whose mtime is older and whose size is its blob's has not
            been written since, so its content need not be hashed.
        bad: every object found edited so far (inode → blob id, executable),
            until the caller has dealt with it and clears it.
        hashed: how many objects had their content hashed so far.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.trusted_before = 0
        self.bad: dict[int, tuple[str, bool]] = {}
        self.hashed = 0
        #: name → (inode, size, mtime) of objects this process wrote or verified.
        self._known: dict[str, tuple[int, int, int]] = {}
        #: base name → the generation to link (after a link limit was reached).
        self._generation: dict[str, int] = {}
        #: objects checked or written since :meth:`start_run`.
        self._checked: set[str] = set()
        self._counter = itertools.count()

    def path(self, name: str) -> str:
        """Return where the object ``name`` lives."""
        return f"{self.root}/{name[:2]}/{name[2:]}"

    def start_run(self) -> None:
        """Begin a sync: objects are checked again before their first link in it.

        Within one sync an object checked (or written) once is linked
        without another look: an edit racing with the sync is found by the
        next full check, and a change of many environments sharing modules
        costs one ``lstat`` per object rather than one per file.
        """
        self._checked.clear()

    # -- placing objects into versions ------------------------------------------------

    def place(self, repo: pygit2.Repository, oid: pygit2.Oid, executable: bool, dest: str) -> bool:
        """Make ``dest`` a hard link to the object of ``(oid, executable)``.

        The object is checked before it is linked, so an edit made to it
        since the last check is not carried into a new version; an edited or
        missing object is written (again) first.

        Returns:
            True if the object had to be written, False if it was only linked.
        """
        hexid = str(oid)
        base = object_name(hexid, executable)
        generation = self._generation.get(base, 0)
        retried = False
        while True:
            name = base if generation == 0 else f"{base}{_GENERATION}{generation}"
            path = self.path(name)
            written = False
            if name not in self._checked:
                if not self.usable(repo, name, path):
                    self._write(repo, oid, executable, name, path)
                    written = True
                self._checked.add(name)
            try:
                os.link(path, dest)
            except FileNotFoundError:
                if retried or written:
                    raise
                # Removed behind our back since it was checked: write it again.
                self._checked.discard(name)
                retried = True
                continue
            except OSError as ex:
                if ex.errno != errno.EMLINK:
                    raise
                # ext4 stops at 65,000 links to one inode: start another copy.
                generation += 1
                self._generation[base] = generation
                continue
            return written

    def usable(self, repo: pygit2.Repository, name: str, path: str | None = None) -> bool:
        """Return whether object ``name`` exists and holds its blob unedited.

        An edited object is evicted (and recorded in :attr:`bad`).
        """
        path = path or self.path(name)
        try:
            found = os.lstat(path)
        except FileNotFoundError:
            return False
        return self._verify(repo, name, path, found)

    def inodes(self, repo: pygit2.Repository, oid: str, executable: bool) -> set[int]:
        """Return the inodes of every unedited copy of ``(oid, executable)``."""
        base = object_name(oid, executable)
        found = set()
        try:
            names = [
                entry.name
                for entry in os.scandir(os.path.join(self.root, base[:2]))
                if entry.name.split(_GENERATION, 1)[0] == base[2:]
            ]
        except FileNotFoundError:
            return found
        for rest in names:
            name = base[:2] + rest
            path = self.path(name)
            with contextlib.suppress(FileNotFoundError):
                item = os.lstat(path)
                if self._verify(repo, name, path, item):
                    found.add(item.st_ino)
        return found

    # -- checking ---------------------------------------------------------------------

    def scan(self, repo: pygit2.Repository) -> ScanResult:
        """Check every object; collect garbage, evict what was edited.

        Afterwards :attr:`trusted_before` is the file-system time at which
        the scan started: whatever is written later has a later mtime.
        """
        result = ScanResult()
        hashed = self.hashed
        bad = set(self.bad)
        started = self.now()
        try:
            fans = [entry for entry in os.scandir(self.root) if len(entry.name) == 2]
        except FileNotFoundError:
            fans = []
        for fan in fans:
            for entry in os.scandir(fan.path):
                if parse_name(fan.name + entry.name) is None:
                    continue
                found = entry.stat(follow_symlinks=False)
                result.objects += 1
                name = fan.name + entry.name
                if stat.S_ISREG(found.st_mode) and found.st_nlink <= 1:
                    self._drop(name, entry.path)
                    result.collected += 1
                    continue
                self._verify(repo, name, entry.path, found)
        self.trusted_before = started
        result.hashed = self.hashed - hashed
        result.bad = {inode: item for inode, item in self.bad.items() if inode not in bad}
        return result

    def now(self) -> int:
        """Return the file system's current time in ns, as it stamps mtimes.

        The kernel stamps files with a clock that may lag ``time.time()`` by
        a tick; comparing stamps with stamps avoids trusting a file written
        in that tick.
        """
        path = os.path.join(self.root, _STAMP)
        try:
            os.utime(path)
        except FileNotFoundError:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(path, "wb"):
                pass
        return os.stat(path).st_mtime_ns

    def _verify(self, repo: pygit2.Repository, name: str, path: str, found: os.stat_result) -> bool:
        parsed = parse_name(name)
        if parsed is None:
            return False
        oid, executable = parsed
        fingerprint = (found.st_ino, found.st_size, found.st_mtime_ns)
        if self._known.get(name) == fingerprint:
            return True
        same = stat.S_ISREG(found.st_mode) and bool(found.st_mode & 0o100) == executable
        if same and found.st_mtime_ns < self.trusted_before:
            same = found.st_size == _blob_size(repo, oid, found.st_size)
            if not same:
                self.hashed += 1
                same = str(pygit2.hashfile(path)) == oid
        elif same:
            self.hashed += 1
            same = str(pygit2.hashfile(path)) == oid
        if same:
            self._known[name] = fingerprint
            return True
        # Edited in place (or its mode changed): out of the store, so that
        # nothing links it again; the caller finds who shows it.
        self.bad[found.st_ino] = (oid, executable)
        self._drop(name, path)
        return False

    def _write(
        self,
        repo: pygit2.Repository,
        oid: pygit2.Oid,
        executable: bool,
        name: str,
        path: str,
    ) -> None:
        """Write an object under a temporary name, then rename it into place."""
        temporary = os.path.join(self.root, f"{_TEMPORARY}{os.getpid()}-{next(self._counter)}")
        data = repo.odb.read(oid)[1]
        mode = 0o755 if executable else 0o644
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            written = os.fstat(fd)
        finally:
            os.close(fd)
        try:
            os.rename(temporary, path)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.rename(temporary, path)
        self._known[name] = (written.st_ino, written.st_size, written.st_mtime_ns)

    def _drop(self, name: str, path: str) -> None:
        self._known.pop(name, None)
        self._checked.discard(name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except IsADirectoryError:  # not ours: someone made a directory there
            shutil.rmtree(path, ignore_errors=True)

    def remove_leftovers(self) -> None:
        """Remove objects a killed process left half-written (the caller holds the lock)."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.startswith(_TEMPORARY):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def _blob_size(repo: pygit2.Repository, oid: str, default: int) -> int:
    """Return a blob's size from the object database (``default`` if it is not there)."""
    try:
        return int(repo.odb.read_header(pygit2.Oid(hex=oid))[1])
    except (KeyError, ValueError, pygit2.GitError):
        return default
