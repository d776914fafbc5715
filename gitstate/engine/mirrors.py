"""Bare mirror caches of remote repositories, one per URL.

Every control repository and every git module remote is fetched into its own
bare repository under ``DATADIR/cache/``, with branches and tags mapped one
to one (``+refs/heads/*:refs/heads/*``) and pruned, so a branch deleted
upstream disappears here too. Environments are then composed from these
mirrors' objects without any work tree.

URLs are checked before anything touches them: git's ``<transport>::``
syntax (``ext::sh -c …``, ``fd::``) runs commands, and a host or path that
starts with ``-`` can be taken for an option by an ssh client. Only file,
ssh, git and http(s) URLs, scp-style ssh addresses and plain local paths are
accepted.

libgit2 does the fetching; pygit2 calls it through cffi, which releases the
GIL, so fetching several mirrors from threads overlaps their waits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pygit2
from pygit2.enums import CredentialType, FetchPrune

from gitstate.errors import GitStateError

ALLOWED_SCHEMES = frozenset({"file", "ssh", "git", "http", "https", "git+ssh", "ssh+git"})
#: The remote's HEAD (its default branch's commit), kept in the mirror for
#: git modules that name no ref (see :data:`REMOTE_HEAD`).
REMOTE_HEAD = "refs/gitstate/remote-HEAD"
FETCH_REFSPECS = (
    "+refs/heads/*:refs/heads/*",
    "+refs/tags/*:refs/tags/*",
    f"+HEAD:{REMOTE_HEAD}",
)
_SCHEME = re.compile(r"\A([A-Za-z][A-Za-z0-9+.-]*)://")
_TRANSPORT = re.compile(r"\A([A-Za-z0-9][A-Za-z0-9+.-]*)::")
_SCP = re.compile(r"\A(?:[^@/:\s]+@)?([^@/:\s]+):(?!//)")


class UnsafeURL(GitStateError, ValueError):
    """A remote URL uses a transport we refuse to touch.

    Attributes:
        url: the URL as configured.
        reason: why it was refused.
    """

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"refusing remote URL {url!r}: {reason}")


class FetchFailed(GitStateError):
    """A mirror could not be created or brought up to date.

    Attributes:
        url: the remote.
        detail: libgit2's message, or why we gave up.
    """

    def __init__(self, url: str, detail: str) -> None:
        self.url = url
        self.detail = detail
        super().__init__(f"Unable to fetch {url}: {detail}")


def check_url(url: str) -> str:
    """Return ``url`` if its transport is one we allow.

    Raises:
        UnsafeURL: the URL is empty, has control characters, names a
            ``<transport>::`` helper, a scheme other than file, ssh, git and
            http(s), or a host or path that could be read as an option.
    """
    if not isinstance(url, str) or not url.strip():
        raise UnsafeURL(str(url), "empty URL")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise UnsafeURL(url, "control characters in URL")
    if url.startswith("-"):
        raise UnsafeURL(url, "a URL may not start with '-'")
    scheme = _SCHEME.match(url)
    if scheme is not None:
        name = scheme.group(1).lower()
        if name not in ALLOWED_SCHEMES:
            raise UnsafeURL(url, f"transport {name!r} is not one of file, ssh, git, http, https")
        rest = url[scheme.end() :]
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
        if host.startswith("-"):
            raise UnsafeURL(url, "a host may not start with '-'")
        return url
    transport = _TRANSPORT.match(url)
    if transport is not None:
        raise UnsafeURL(url, f"'{transport.group(1)}::' remote helpers run commands")
    scp = _SCP.match(url)
    if scp is not None and not url.startswith(("/", "./", "../")):
        if scp.group(1).startswith("-"):
            raise UnsafeURL(url, "a host may not start with '-'")
        return url  # user@host:path, an ssh address
    return url  # a local path


#: The setting that lists where Puppetfile modules may come from on disk.
LOCAL_SOURCES_SETTING = "deploy.local_module_sources"


class LocalSourceRefused(GitStateError, PermissionError):
    """A Puppetfile module names a repository on this host it may not read.

    A local path or ``file://`` URL reads whatever the server can read,
    ``DATADIR/state.git`` (token hashes, gate records) included, and
    publishes it as an environment; so local module sources must lie under a
    directory :data:`LOCAL_SOURCES_SETTING` lists, and never under the data
    directory.

    Attributes:
        module: the module's name in the Puppetfile.
        url: the source as written.
        path: where it leads once symlinks and ``..`` are resolved.
        reason: why it is refused.
    """

    def __init__(self, module: str, url: str, path: str, reason: str) -> None:
        self.module = module
        self.url = url
        self.path = path
        self.reason = reason
        super().__init__(
            f"mod '{module}': refusing local source {url!r} ({path}): {reason}"
            f" (see {LOCAL_SOURCES_SETTING})"
        )


def local_path(url: str) -> str | None:
    """Return the path on this host a checked URL reads, or None for a network URL.

    ``file://`` URLs (with no host, or ``localhost``) and plain paths are
    local; ssh, git and http(s) URLs and scp-style addresses are not.
    """
    scheme = _SCHEME.match(url)
    if scheme is not None:
        if scheme.group(1).lower() != "file":
            return None
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            return "//" + parts.netloc + urllib.parse.unquote(parts.path)
        return urllib.parse.unquote(parts.path)
    if _SCP.match(url) is not None and not url.startswith(("/", "./", "../")):
        return None
    return url


@dataclasses.dataclass(frozen=True)
class LocalSources:
    """Where on this host Puppetfile modules may be fetched from.

    Attributes:
        allowed: directories local module sources must lie under (none: no
            local module source is allowed).
        forbidden: directories no module source may lie under, whatever
            ``allowed`` says (the data directory).
    """

    allowed: tuple[Path, ...] = ()
    forbidden: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", tuple(_real(path) for path in self.allowed))
        object.__setattr__(self, "forbidden", tuple(_real(path) for path in self.forbidden))

    def check(self, module: str, url: str) -> None:
        """Refuse a module source on this host that is not allowed.

        The path is resolved first (symlinks, ``..``, relative to the
        working directory, as git would open it), so a link inside an
        allowed directory cannot lead out of it.

        Raises:
            LocalSourceRefused: the source is local and under the data
                directory, or under no allowed directory.
        """
        where = local_path(url)
        if where is None:
            return
        path = _real(Path(where))
        if any(path.is_relative_to(root) for root in self.forbidden):
            raise LocalSourceRefused(
                module, url, str(path), "it is inside gitstate's data directory"
            )
        if not any(path.is_relative_to(root) for root in self.allowed):
            listed = ", ".join(str(root) for root in self.allowed) or "none"
            raise LocalSourceRefused(
                module, url, str(path), f"it is under no allowed directory (allowed: {listed})"
            )


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def mirror_name(url: str) -> str:
    """Return a directory name for ``url``'s mirror: readable, unique, safe.

    The readable part is the URL with everything but ``[A-Za-z0-9._-]``
    replaced, cut to 60 characters; a hash of the full URL keeps two URLs
    that look alike apart.
    """
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", url).strip("-.")[-60:].strip("-.")
    return f"{slug or 'remote'}-{digest}.git"


class _Callbacks(pygit2.RemoteCallbacks):
    """Abort a fetch that runs past its deadline; answer ssh with a key.

    Args:
        until: the deadline (``time.monotonic()``).
        private_key: ssh private key file; without one the ssh agent is
            asked, as plain ``git`` would.
    """

    def __init__(self, until: float, private_key: str | None = None) -> None:
        super().__init__()
        self.until = until
        self.private_key = private_key
        self._asked = 0

    def credentials(
        self, url: str, username_from_url: str | None, allowed_types: CredentialType
    ) -> pygit2.Keypair | pygit2.Username:
        """Return ssh credentials: the configured key, else the agent."""
        self._asked += 1
        if self._asked > 3:
            raise FetchFailed(url, "authentication failed")
        username = username_from_url or "git"
        if allowed_types & CredentialType.USERNAME:
            return pygit2.Username(username)
        if allowed_types & CredentialType.SSH_KEY:
            if self.private_key:
                public = self.private_key + ".pub"
                return pygit2.Keypair(
                    username, public if os.path.exists(public) else None, self.private_key, ""
                )
            return pygit2.KeypairFromAgent(username)
        raise FetchFailed(url, "the remote asks for credentials gitstate does not have")

    def _check(self) -> None:
        if time.monotonic() > self.until:
            raise TimeoutError("fetch timed out")

    def transfer_progress(self, stats: pygit2.remotes.TransferProgress) -> None:
        self._check()

    def sideband_progress(self, string: str) -> None:
        self._check()


class Mirrors:
    """The mirror caches of one data directory.

    Args:
        cachedir: where mirrors live (``DATADIR/cache``).
        timeout: seconds one fetch may take. Also set as libgit2's
            connect and read timeouts, which are process-wide, since a
            silent server never reaches the progress callbacks.
        workers: how many fetches run at once in :meth:`fetch_all`.
        private_key: ssh private key for ssh remotes (else the ssh agent).
    """

    def __init__(
        self,
        cachedir: Path,
        *,
        timeout: float = 30.0,
        workers: int = 8,
        private_key: str | None = None,
    ) -> None:
        self.cachedir = Path(cachedir)
        self.timeout = timeout
        self.workers = workers
        self.private_key = private_key
        self._local = threading.local()
        milliseconds = max(1, int(timeout * 1000))
        pygit2.settings.server_connect_timeout = milliseconds
        pygit2.settings.server_timeout = milliseconds

    def path(self, url: str) -> Path:
        """Return where ``url``'s mirror is (whether or not it exists yet)."""
        return self.cachedir / mirror_name(url)

    def exists(self, url: str) -> bool:
        """Tell whether ``url`` has been mirrored before."""
        return (self.path(url) / "HEAD").exists()

    def open(self, url: str) -> pygit2.Repository:
        """Return a repository handle on ``url``'s mirror for this thread.

        Raises:
            FetchFailed: the URL has never been fetched.
        """
        cache: dict[str, pygit2.Repository] = self._handles()
        repo = cache.get(url)
        if repo is None:
            path = self.path(url)
            if not (path / "HEAD").exists():
                raise FetchFailed(url, "not fetched yet")
            repo = pygit2.Repository(str(path))
            cache[url] = repo
        return repo

    def _handles(self) -> dict[str, pygit2.Repository]:
        if getattr(self._local, "pid", None) != os.getpid():
            self._local.pid = os.getpid()
            self._local.handles = {}
        return self._local.handles

    def last_fetch(self, url: str) -> float | None:
        """Return when the last successful fetch of ``url`` *started*, if any."""
        try:
            return float(self.path(url).with_suffix(".fetched").read_text())
        except (OSError, ValueError):
            return None

    def fetch(self, url: str, *, fresh_after: float | None = None) -> Path:
        """Create or update the mirror of ``url``, pruning deleted refs.

        One process at a time fetches a given mirror (an ``flock`` next to
        it). With ``fresh_after``, a mirror whose last fetch started at or
        after that time is left alone: it already holds everything the
        remote had then. Checked under the lock, so when several workers
        want the same remote at once only the first one fetches.

        Raises:
            UnsafeURL: the URL's transport is refused.
            FetchFailed: libgit2 could not fetch, or the fetch timed out.
        """
        check_url(url)
        path = self.path(url)
        self.cachedir.mkdir(parents=True, exist_ok=True)
        with _flock(path.with_suffix(".lock")):
            if fresh_after is not None and (path / "HEAD").exists():
                last = self.last_fetch(url)
                if last is not None and last >= fresh_after:
                    return path
            started = time.time()
            try:
                if not (path / "HEAD").exists():
                    repo = pygit2.init_repository(str(path), bare=True)
                    remote = repo.remotes.create("origin", url, FETCH_REFSPECS[0])
                    repo.remotes.add_fetch("origin", FETCH_REFSPECS[1])
                else:
                    repo = pygit2.Repository(str(path))
                remote = repo.remotes["origin"]
                if remote.url != url:
                    raise FetchFailed(url, f"mirror {path} belongs to {remote.url}")
                remote.fetch(
                    list(FETCH_REFSPECS),
                    callbacks=_Callbacks(time.monotonic() + self.timeout, self.private_key),
                    prune=FetchPrune.PRUNE,
                    message="gitstate: fetch",
                )
                repo.free()
                stamp = path.with_suffix(".fetched")
                partial = stamp.with_suffix(f".fetched.{os.getpid()}.{threading.get_ident()}")
                partial.write_text(repr(started))
                os.replace(partial, stamp)
            except FetchFailed:
                raise
            except (pygit2.GitError, OSError, TimeoutError) as ex:
                raise FetchFailed(url, str(ex) or type(ex).__name__) from ex
        self._handles().pop(url, None)  # packs changed: reopen on next use
        return path

    def fetch_all(
        self, urls: Iterable[str], *, fresh_after: float | None = None
    ) -> dict[str, FetchFailed | None]:
        """Fetch every URL once, several at a time.

        Args:
            urls: the remotes (duplicates are fetched once).
            fresh_after: as for :meth:`fetch`.

        Returns:
            URL → None when fetched (or fresh enough), or the error.
        """
        unique = list(dict.fromkeys(urls))
        results: dict[str, FetchFailed | None] = {}

        def one(url: str) -> None:
            try:
                self.fetch(url, fresh_after=fresh_after)
                results[url] = None
            except (FetchFailed, UnsafeURL) as ex:
                results[url] = ex if isinstance(ex, FetchFailed) else FetchFailed(url, str(ex))

        if len(unique) <= 1:
            for url in unique:
                one(url)
            return results
        with ThreadPoolExecutor(max_workers=min(self.workers, len(unique))) as pool:
            list(pool.map(one, unique))
        return results

    def branches(self, url: str) -> dict[str, str]:
        """Return branch name → commit id of ``url``'s mirror."""
        repo = self.open(url)
        found = {}
        for name in repo.references:
            if name.startswith("refs/heads/"):
                ref = repo.references[name].resolve()
                found[name.removeprefix("refs/heads/")] = str(ref.target)
        return found


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
