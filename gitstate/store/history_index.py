"""Which state commits changed which record: an index kept beside the branch.

The history of one record (a gate's changes, a deploy's moves) is the list
of first-parent commits whose tree changed that record's blob. Finding them
by walking the branch costs time in proportion to the branch, however few
entries are asked for: at 100,000 commits a gate's last twenty changes took
tens of seconds. This index answers in time proportional to the entries
returned, at any length of branch.

It is an SQLite database in the state repository
(``gitstate-history.sqlite``), numbering the branch's commits in order
(``seq``) and listing, for every record path, the commits that changed it.
It is derived data and never authoritative:

* a writer brings it up to its new tip after every ``INDEX_EVERY``-th
  commit of its own, outside the writers' host lock, and skips that if
  another process is updating it at that moment; so a reader is never more
  than a few dozen commits per writing process behind, and the cost of an
  SQLite transaction (about half a millisecond) is shared by that many
  commits;
* a reader first brings it up to the tip it read, so an answer never misses
  a commit, whoever wrote it and whether or not the writer indexed it;
* when the commit it was built up to is no longer on the branch (the branch
  was replaced, say from a backup), or the file is unreadable, it is built
  again from the root; maintenance does the same for a repository that has
  never had one, so that no user's request pays for the first build.

Catching up walks only the commits since the last indexed one, each with one
tree diff against its parent (which libgit2 prunes at unchanged subtrees).
The database runs without fsync: after a crash it is at worst behind the
branch, or unreadable and rebuilt.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pygit2
from pygit2.enums import FileMode, ObjectType

log = logging.getLogger(__name__)

FILENAME = "gitstate-history.sqlite"
#: Commits indexed per SQLite transaction while catching up: a long build
#: keeps its progress if interrupted and does not hold the write lock for long.
CHUNK = 5000
#: Commits read per query while iterating a record's history.
PAGE = 64
#: A writer brings the index up to date after this many of its own commits.
INDEX_EVERY = 16
#: Most memory SQLite may use for its page cache, per connection (KiB).
CACHE_KIB = 131072

_SCHEMA = """
CREATE TABLE IF NOT EXISTS head (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    oid BLOB NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS commits (seq INTEGER PRIMARY KEY, oid BLOB NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS paths (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS changes (
    path INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (path, seq)
) WITHOUT ROWID;
"""


class HistoryIndex:
    """The commit index of one state repository's branch.

    Safe to share between threads (calls are serialised); a process that
    forks must not use its parent's instance (the store makes a new one).

    Args:
        repository: the bare state repository.
        ref: the branch indexed.
    """

    def __init__(self, repository: str | os.PathLike[str], ref: str) -> None:
        self.repository = Path(repository)
        self.ref = ref
        self.path = self.repository / FILENAME
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        # Its own handle: a long catch-up must not hold the store's mutex.
        self._repo: pygit2.Repository | None = None
        #: (oid, seq) of the head this process last saw indexed.
        self._known: tuple[bytes, int] | None = None

    # -- plumbing ----------------------------------------------------------------

    def _connect(self, wait: float) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(
                self.path, timeout=wait, isolation_level=None, check_same_thread=False
            )
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=OFF")
                # A build from the root inserts commit ids in random order;
                # with SQLite's default 2 MiB cache that thrashes at 1M commits.
                db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
                db.executescript(_SCHEMA)
            except sqlite3.DatabaseError:
                db.close()
                raise
            self._db = db
        # The busy timeout is per call: writers do not wait, readers do.
        self._db.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
        return self._db

    def _repository(self) -> pygit2.Repository:
        if self._repo is None:
            self._repo = pygit2.Repository(str(self.repository))
        return self._repo

    def close(self) -> None:
        """Release the database connection and the repository handle."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._repo is not None:
                self._repo.free()
                self._repo = None
            self._known = None

    def _discard(self) -> None:
        """Remove an unreadable database so that it is built again."""
        self.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    # -- keeping up --------------------------------------------------------------

    def catch_up(self, tip: pygit2.Oid, *, wait: float = 0.0) -> int | None:
        """Index the branch up to ``tip``; return the indexed head's sequence number.

        With ``wait`` 0 (what writers use) it gives up at once, returning
        None, if another process is updating the index. An unreadable
        database is removed and built again.
        """
        with self._lock:
            try:
                return self._catch_up(tip, wait)
            except sqlite3.OperationalError as ex:
                if "locked" in str(ex) or "busy" in str(ex):
                    return None
                raise
            except sqlite3.DatabaseError as ex:
                log.warning("history index %s is unreadable (%s); building it again", self.path, ex)
                self._discard()
                return self._catch_up(tip, wait)

    def _catch_up(self, tip: pygit2.Oid, wait: float) -> int:
        target = tip.raw
        if self._known is not None and self._known[0] == target:
            return self._known[1]
        db = self._connect(wait)
        repo = self._repository()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT oid, seq FROM head").fetchone()
            head, seq = (bytes(row[0]), int(row[1])) if row else (None, 0)
            if head == target:
                db.execute("COMMIT")
                self._known = (target, seq)
                return seq
            known = db.execute("SELECT seq FROM commits WHERE oid = ?", (target,)).fetchone()
            if known is not None:
                # Another process indexed this tip, and maybe past it.
                db.execute("COMMIT")
                return seq
            chain = _first_parents_since(repo, tip, head)
            if chain is None:
                log.warning("history index %s no longer matches the branch; rebuilding", self.path)
                for table in ("head", "commits", "changes", "paths"):
                    db.execute(f"DELETE FROM {table}")
                seq = 0
                chain = _first_parents_since(repo, tip, None)
                assert chain is not None
            ids: dict[str, int] = {}
            pending = 0
            for commit_id in reversed(chain):
                commit = repo[commit_id]
                seq += 1
                db.execute("INSERT INTO commits (seq, oid) VALUES (?, ?)", (seq, commit.id.raw))
                rows = [(self._path_id(db, ids, path), seq) for path in _changed(repo, commit)]
                db.executemany("INSERT OR IGNORE INTO changes (path, seq) VALUES (?, ?)", rows)
                pending += 1
                if pending >= CHUNK:
                    self._set_head(db, commit.id.raw, seq)
                    db.execute("COMMIT")
                    db.execute("BEGIN IMMEDIATE")
                    pending = 0
            self._set_head(db, target, seq)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._known = (target, seq)
        return seq

    @staticmethod
    def _set_head(db: sqlite3.Connection, oid: bytes, seq: int) -> None:
        db.execute("INSERT OR REPLACE INTO head (one, oid, seq) VALUES (1, ?, ?)", (oid, seq))

    @staticmethod
    def _path_id(db: sqlite3.Connection, ids: dict[str, int], path: str) -> int:
        known = ids.get(path)
        if known is not None:
            return known
        row = db.execute("SELECT id FROM paths WHERE path = ?", (path,)).fetchone()
        if row is None:
            cursor = db.execute("INSERT INTO paths (path) VALUES (?)", (path,))
            assert cursor.lastrowid is not None
            ident = int(cursor.lastrowid)
        else:
            ident = int(row[0])
        ids[path] = ident
        return ident

    # -- reading -----------------------------------------------------------------

    def changed(self, tip: pygit2.Oid, path: str) -> Iterator[pygit2.Oid]:
        """Yield the commits up to ``tip`` that changed ``path``, newest first.

        The index is first brought up to ``tip`` (waiting for another
        process that is updating it). Commits are read a page at a time, so
        a caller that stops early pays only for what it took.
        """
        upto = self.catch_up(tip, wait=30.0)
        if upto is None:
            raise sqlite3.OperationalError("history index stayed locked")
        below = upto + 1
        while True:
            with self._lock:
                db = self._connect(30.0)
                rows = db.execute(
                    "SELECT c.seq, c.oid FROM changes AS ch JOIN commits AS c ON c.seq = ch.seq"
                    " WHERE ch.path = (SELECT id FROM paths WHERE path = ?) AND ch.seq < ?"
                    " ORDER BY ch.seq DESC LIMIT ?",
                    (path, below, PAGE),
                ).fetchall()
            for seq, oid in rows:
                yield pygit2.Oid(raw=bytes(oid))
                below = seq
            if len(rows) < PAGE:
                return


def _first_parents_since(
    repo: pygit2.Repository, tip: pygit2.Oid, head: bytes | None
) -> list[pygit2.Oid] | None:
    """Return the first-parent chain from ``tip`` back to ``head`` (excluded), newest first.

    None means ``head`` is not on the chain: the branch was replaced.
    """
    chain: list[pygit2.Oid] = []
    commit = repo[tip]
    while True:
        if head is not None and commit.id.raw == head:
            return chain
        chain.append(commit.id)
        if not commit.parents:
            return chain if head is None else None
        commit = commit.parents[0]


def _changed(repo: pygit2.Repository, commit: pygit2.Commit) -> list[str]:
    """Return the record paths whose blob ``commit`` changed against its first parent."""
    if not commit.parents:
        return list(_blobs(repo, commit.tree, ""))
    paths: set[str] = set()
    for delta in repo.diff(commit.parents[0].tree, commit.tree).deltas:
        for side in (delta.old_file, delta.new_file):
            if side.mode == FileMode.BLOB:
                paths.add(side.path)
    return sorted(paths)


def _blobs(repo: pygit2.Repository, tree: pygit2.Tree, prefix: str) -> Iterator[str]:
    for entry in tree:
        if entry.type == ObjectType.TREE:
            yield from _blobs(repo, repo[entry.id], f"{prefix}{entry.name}/")
        elif entry.filemode == FileMode.BLOB:
            yield f"{prefix}{entry.name}"
