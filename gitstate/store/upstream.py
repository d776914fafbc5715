"""One ref shared through a git server: fetched from it, advanced on it by push.

Several gitstate servers share one truth by sharing a git server (``git
daemon``, ``git http-backend``, GitLab, Gerrit): each keeps a local bare
copy and the server's ref is the only one that counts. The git server's ref
update is already a compare-and-swap: ``git push`` sends the old and the
new id of the ref, and the server refuses an update whose old id is not
what the ref holds, or that is not a fast-forward. A lease
(``--force-with-lease=<ref>:<expected>``) makes the old id the exact tip the
writer built on, not merely the one it happened to see advertised.

The ``git`` command does the talking, not libgit2: it speaks every
transport (a path, ``git://``, ``http(s)://``, ``ssh://``) with the
operator's own credentials, ssh configuration and proxies, which is what a
site that runs a git server already has set up.

Each :class:`SharedRef` also remembers whether the git server answered the
last time anyone on this host asked, in a small file beside the local
repository, so that ``/internal/health`` (served by another process than
the one that noticed) can say a node is cut off without asking the server
itself on every probe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pygit2

from gitstate.base.hostlock import LockTimeout, break_stale_ref_locks, flocked
from gitstate.errors import UNAVAILABLE, GitStateError

log = logging.getLogger(__name__)

#: Where a fetched tip is kept in the local repository, under the ref's own name.
TRACKING_PREFIX = "refs/gitstate/shared/"
#: The lock file fetches on one host take turns on.
FETCH_LOCK = "gitstate-fetch.lock"
#: The file, in the local repository, saying whether the git server answered.
STATUS_FILE = "gitstate-remote-status.json"
_REJECTED = re.compile(r"^!\t", re.MULTILINE)


class SharedUnreachable(GitStateError):
    """The git server holding the shared repository did not answer.

    Reads go on from the local copy; writes are refused until it answers
    again, because a write is acknowledged only once the git server has it.

    Attributes:
        url: the shared repository, without any password it carries.
        detail: what git said.
    """

    status = 503
    kind = UNAVAILABLE
    retry_after = 5
    public_fields = (("remote", "url"),)

    def __init__(self, url: str, detail: str) -> None:
        self.url = url
        self.detail = detail
        super().__init__(
            f"the git server of {url} cannot be reached ({detail}); "
            "reads are served from this node's copy, writes are refused until it answers"
        )


class Diverged(GitStateError):
    """The git server's ref does not contain this copy's tip: it was moved back there.

    Nothing is written on top until an operator puts it back (the local
    copy still holds the lost commits) or accepts the git server's history.

    Attributes:
        ref: the ref.
        local: this copy's tip.
        shared: the git server's tip.
    """

    status = 503
    kind = UNAVAILABLE

    def __init__(self, ref: str, local: str, shared: str) -> None:
        self.ref = ref
        self.local = local
        self.shared = shared
        super().__init__(
            f"{ref} on the git server ({shared[:12]}) does not contain this node's "
            f"{local[:12]}: it was moved back there"
        )


def fast_forward(
    repo: pygit2.Repository, ref: str, target: str, reflog: str, *, ahead: bool = True
) -> bool:
    """Move ``ref`` of ``repo`` forward to ``target`` by one compare-and-swap.

    A ref already at ``target`` stays, and so does one past it if
    ``ahead`` allows (another writer here pushed since ``target`` was
    fetched). Returns False when the ref moved meanwhile or its lock was
    held: the caller looks again.

    Raises:
        Diverged: ``target`` does not contain the ref's tip, or is behind
            it while ``ahead`` is False.
    """
    oid = pygit2.Oid(hex=target)
    try:
        current = repo.lookup_reference(ref)
    except KeyError:
        current = None
    try:
        if current is None:
            repo.create_reference_direct(ref, oid, False, message=reflog)
            return True
        tip = current.target
        if tip == oid:
            return True
        if repo.descendant_of(tip, oid):
            if ahead:
                return True
            raise Diverged(ref, str(tip), target)
        if not repo.descendant_of(oid, tip):
            raise Diverged(ref, str(tip), target)
        current.set_target(oid, reflog)
        return True
    except (pygit2.AlreadyExistsError, pygit2.GitError, OSError):
        return False


@dataclasses.dataclass(frozen=True)
class Reachability:
    """What the last exchange with the git server showed, as kept in the status file."""

    reachable: bool
    since: float
    error: str | None = None

    def as_dict(self, url: str) -> dict[str, Any]:
        """The form ``/internal/health`` shows."""
        out: dict[str, Any] = {"url": url, "reachable": self.reachable, "since": self.since}
        if self.error:
            out["error"] = self.error
        return out


def redact(url: str) -> str:
    """Return ``url`` without the password (or token) its user part may carry."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.netloc.rsplit("@", 1)[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def node_name(repo_path: Path) -> str:
    """Name this node in commits: the host, and which of its datadirs.

    Two nodes on one host (a test, a migration) differ by the digest of
    their local repository's path.
    """
    digest = hashlib.sha1(str(Path(repo_path).absolute()).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}/{digest}"


class SharedRef:
    """The ref ``ref`` of the local bare repository ``repo_path``, shared through ``url``.

    Args:
        repo_path: the local bare copy.
        url: the shared repository (any URL or path ``git`` takes).
        ref: the full ref name, the same on both sides.
        timeout: seconds one fetch or push may take before the git server
            counts as unreachable.
        also: more refspecs each fetch brings along (pruned: a ref gone
            from the git server goes here too).
    """

    def __init__(
        self,
        repo_path: Path,
        url: str,
        ref: str,
        *,
        timeout: float = 10.0,
        also: tuple[str, ...] = (),
    ) -> None:
        self.repo_path = Path(repo_path)
        self.url = url
        self.ref = ref
        self.timeout = timeout
        self.also = also
        self.tracking = TRACKING_PREFIX + ref.removeprefix("refs/")
        self.shown_url = redact(url)
        self.node = node_name(self.repo_path)
        self._status_path = self.repo_path / STATUS_FILE
        self._known: bool | None = None
        self._checked = 0.0

    # -- talking to the git server ----------------------------------------------------

    def fetch(self) -> bool:
        """Bring the git server's tip and its objects here, onto :attr:`tracking`.

        The tip lands on the tracking ref, never on the ref itself: the
        caller reads it there (with its own repository handle) and decides
        how the local ref follows. Fetches on this host take turns on a
        lock file, since two at once would race for the tracking ref's lock.
        Returns False when the ref does not exist on the git server yet.

        Raises:
            SharedUnreachable: the git server did not answer.
        """
        # PERF: protocol v0 (the server advertises its refs at once) rather
        # than v2 (refs asked for in a second exchange): against git daemon
        # a no-op fetch took 12 ms instead of 56 ms, the second exchange
        # paying a 40 ms delayed-ACK stall on loopback. The state repository
        # has one ref; storage has one per environment, which the follower
        # fetches all of anyway.
        argv = ["-c", "protocol.version=0", "fetch", "--quiet", "--no-tags"]
        argv += ["--no-write-fetch-head", *(["--prune"] if self.also else [])]
        argv += [self.url, f"+{self.ref}:{self.tracking}", *self.also]
        try:
            with flocked(self.repo_path / FETCH_LOCK, timeout=self.timeout):
                out = self._git(*argv)
                if out.returncode != 0 and ".lock" in out.stderr:
                    # A fetch killed mid-update left the tracking ref locked;
                    # fetches here take turns, so an old lock is the dead's.
                    for lock in break_stale_ref_locks(self.repo_path, self.tracking):
                        log.warning("removed %s, left by a fetch that died", lock)
                    out = self._git(*argv)
        except LockTimeout as ex:
            raise SharedUnreachable(self.shown_url, f"a fetch on this host hung: {ex}") from ex
        if out.returncode != 0:
            if "couldn't find remote ref" in out.stderr:
                self._mark(True)
                return False
            raise self._unreachable(out)
        self._mark(True)
        return True

    def tip(self, repo: pygit2.Repository) -> str | None:
        """The git server's tip as this host last fetched it, read through ``repo``."""
        try:
            return str(repo.lookup_reference(self.tracking).target)
        except (KeyError, pygit2.GitError):
            return None

    def push(self, commit: str, expected: str | None) -> bool:
        """Move the git server's ref from ``expected`` to ``commit``; False if it moved first.

        ``expected`` None means the ref must not exist yet. The git server
        refuses the update when its ref holds anything else (another node
        pushed first); the caller fetches and runs its change again.

        Raises:
            SharedUnreachable: the git server did not answer.
        """
        lease = f"--force-with-lease={self.ref}:{expected or ''}"
        out = self._git("push", "--porcelain", "--quiet", lease, self.url, f"{commit}:{self.ref}")
        if out.returncode == 0:
            self._mark(True)
            return True
        if _REJECTED.search(out.stdout):
            self._mark(True)
            log.debug("push to %s refused: %s", self.shown_url, out.stdout.strip())
            return False
        raise self._unreachable(out)

    def push_own(self, refspec: str) -> bool:
        """Push ``refspec`` as it is, for a ref only this node writes; tell whether it was taken.

        Deleting (``:<ref>``) a ref the git server does not have counts as taken.

        Raises:
            SharedUnreachable: the git server did not answer in time.
        """
        out = self._git("push", "--quiet", self.url, refspec)
        if out.returncode == 0 or "remote ref does not exist" in out.stderr:
            return True  # a deletion of what is not there is done too
        log.debug("push of %s to %s failed: %s", refspec, self.shown_url, out.stderr.strip())
        return False

    def _git(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C")
        # An ssh that cannot ask for a password fails at once instead of waiting.
        env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        try:
            return subprocess.run(
                ["git", "-C", str(self.repo_path), *args],
                capture_output=True,
                text=True,
                env=env,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            detail = f"no answer in {self.timeout:g}s"
            self._mark(False, detail)
            raise SharedUnreachable(self.shown_url, detail) from None

    def _unreachable(self, out: subprocess.CompletedProcess[str]) -> SharedUnreachable:
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
        detail = (fatal or lines or [f"git exited {out.returncode}"])[0]
        detail = detail.replace(self.url, self.shown_url)
        self._mark(False, detail)
        return SharedUnreachable(self.shown_url, detail)

    # -- what the last exchange showed ----------------------------------------------

    def _mark(self, reachable: bool, error: str | None = None) -> None:
        """Record a change of reachability in the status file (only changes are written)."""
        now = time.monotonic()
        if reachable and self._known and now - self._checked < 1.0:
            return  # PERF: one look at the file a second while all is well
        current = self.reachability()
        self._checked = now
        if reachable and current is not None and current.reachable:
            self._known = True
            return
        since = current.since if current is not None and current.reachable == reachable else None
        state = Reachability(reachable, since or time.time(), error)
        if reachable:
            log.info("git server of %s answers again", self.shown_url)
        elif current is None or current.reachable:
            log.error("git server of %s cannot be reached: %s", self.shown_url, error)
        self._known = reachable
        data = json.dumps(dataclasses.asdict(state)).encode()
        try:
            fd, tmp = tempfile.mkstemp(dir=self.repo_path, prefix=".remote-status-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, self._status_path)
        except OSError as ex:
            log.warning("could not record the git server's state in %s: %s", self._status_path, ex)

    def reachability(self) -> Reachability | None:
        """What the last exchange on this host showed, or None before the first."""
        try:
            data = json.loads(self._status_path.read_bytes())
            return Reachability(bool(data["reachable"]), float(data["since"]), data.get("error"))
        except (OSError, ValueError, KeyError, TypeError):
            return None
