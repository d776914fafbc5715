"""Noticing that the state branch moved back behind gitstate's back.

gitstate only ever moves ``refs/heads/state`` forward, and the state guard
refuses pushes that do not. Someone on the host can still run ``git
update-ref`` (or restore an old copy of the repository): the acknowledged
changes after the commit it points back to disappear, and without a check
new writes would go on top as if nothing happened.

Every writer, after it advances the ref and still under the host lock,
records the commit it set in ``state.git/gitstate-seen-tip`` (the *mark*).
The branch has moved back when its tip does not contain the mark. The
common case costs one small read and one small write per commit: the tip a
writer finds is the mark itself, and the ancestry check runs only when it
is not (a push, or a writer killed between its update of the ref and of the
mark, both of which leave a tip that contains the mark).

The mark is shared by every process on the host, so a process started after
the rewind notices it too. It is deleted or moved only on purpose:
``gitstate state accept-tip`` sets it to the current tip, once an operator
has decided that the branch is where it should be (docs/operations.md, "The
state branch moved back").
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path

import pygit2

from gitstate.errors import UNAVAILABLE, GitStateError

log = logging.getLogger(__name__)

#: The file, in the state repository, naming the last tip a gitstate writer set.
MARK_FILE = "gitstate-seen-tip"
#: Where the recovery is described (said in errors and in the health answer).
RECOVERY_DOC = 'docs/operations.md, "The state branch moved back"'


class BranchRewound(GitStateError):
    """The state branch no longer contains the last commit gitstate made on it.

    Writes are refused until an operator puts the branch back (from its
    reflog) or accepts the new tip: a write on top would bury the lost
    changes under new ones.

    Attributes:
        ref: the state branch.
        expected: the last tip a gitstate writer set (the mark).
        found: the tip now, or None if the branch is gone.
    """

    # Not the client's doing, and fine again once an operator acts: 503,
    # in gatekeeper's shape everywhere, like every state-repository 503.
    status = 503
    kind = UNAVAILABLE
    public_fields = (("expected", "expected"), ("found", "found"))

    def __init__(self, ref: str, expected: str, found: str | None) -> None:
        self.ref = ref
        self.expected = expected
        self.found = found
        super().__init__(describe(ref, expected, found))


def describe(ref: str, expected: str, found: str | None) -> str:
    """Say in words that ``ref`` moved back from ``expected`` to ``found``."""
    where = f"to {found[:12]}" if found is not None else "away (it was deleted)"
    return (
        f"state branch moved back: {ref} went {where}, which does not contain "
        f"{expected[:12]}, the last commit gitstate made; writes are refused until "
        f"an operator restores it or accepts the new tip (see {RECOVERY_DOC})"
    )


@dataclasses.dataclass(frozen=True)
class Rewind:
    """A tip that does not contain the mark: what was expected and what was found."""

    ref: str
    expected: str
    found: str | None

    @property
    def message(self) -> str:
        """What happened and what to do, in words (logs, health, errors)."""
        return describe(self.ref, self.expected, self.found)


class SeenTip:
    """The mark file of one state repository: read, set and checked.

    Args:
        repo_path: the bare state repository.
        ref: the state branch (named in errors and logs).
    """

    def __init__(self, repo_path: Path, ref: str) -> None:
        self.path = repo_path / MARK_FILE
        self.ref = ref
        self._lock = threading.Lock()
        self._verdicts: dict[tuple[str, str], bool] = {}
        self._reported: set[Rewind] = set()

    def read(self) -> str | None:
        """Return the commit the mark names, or None when there is no mark."""
        # PERF: plain os calls (open, read, close), not a buffered file
        # object: a writer reads this on every commit, under the host lock.
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            data = os.read(fd, 128)
        finally:
            os.close(fd)
        return data.decode("ascii", "replace").strip() or None

    def write(self, commit: str) -> None:
        """Set the mark to ``commit`` (the caller holds the host writer lock).

        The file is overwritten in place: the hex id has one length per
        repository, and every writer holds the host lock, so writers never
        interleave. A reader outside the lock confirms a rewind before
        reporting it (:meth:`rewound`).
        """
        data = (commit + "\n").encode("ascii")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)

    def record(self, commit: str) -> None:
        """Set the mark after a commit; a failure is logged, never raised.

        The commit is made by then; an old mark only makes the next check
        run the ancestry test (the tip contains it).
        """
        try:
            self.write(commit)
        except OSError as ex:
            log.warning("could not record the state tip in %s: %s", self.path, ex)

    def compare(self, repo: pygit2.Repository, mark: str | None, tip: str | None) -> Rewind | None:
        """Return the rewind if ``tip`` does not contain ``mark``, else None.

        Equal ids, the common case, cost nothing; otherwise the ancestry
        check's answer is kept per (mark, tip) pair, so a health probe
        repeated during a rewind does not walk the history again.
        """
        if mark is None or mark == tip:
            return None
        if tip is None:
            return Rewind(self.ref, mark, None)
        key = (mark, tip)
        with self._lock:
            contains = self._verdicts.get(key)
        if contains is None:
            contains = _contains(repo, tip, mark)
            with self._lock:
                if len(self._verdicts) > 64:
                    self._verdicts.clear()
                self._verdicts[key] = contains
        return None if contains else Rewind(self.ref, mark, tip)

    def report(self, rewind: Rewind) -> None:
        """Log the rewind as an error, once per distinct rewind in this process."""
        with self._lock:
            if rewind in self._reported:
                return
            self._reported.add(rewind)
        log.error("%s", rewind.message)

    def refuse(self, repo: pygit2.Repository, tip: str | None) -> None:
        """Raise :class:`BranchRewound` if ``tip`` does not contain the mark.

        Called by a writer holding the host lock, the only time the mark
        cannot change while it is read.
        """
        rewind = self.compare(repo, self.read(), tip)
        if rewind is not None:
            self.report(rewind)
            raise BranchRewound(self.ref, rewind.expected, rewind.found)


def _contains(repo: pygit2.Repository, tip: str, mark: str) -> bool:
    """Tell whether commit ``tip`` has ``mark`` in its history.

    A mark that names no commit of the repository (an older copy restored
    in its place) is not contained: that is a rewind too.
    """
    try:
        return bool(repo.descendant_of(pygit2.Oid(hex=tip), pygit2.Oid(hex=mark)))
    except (ValueError, KeyError, pygit2.GitError):
        return False
