"""``gitstate sync``: a file-sync client's main loop.

The client keeps one live directory (:class:`gitstate.filesync.livedir.LiveDir`)
equal to the latest code-commit of a storage repository, reached in one of
two ways:

* **local** (a path or ``file://`` URL, on the server's host): the client
  reads the storage repository directly and learns of new code-commits from
  inotify events on its refs (:class:`gitstate.base.fswatch.RefWatch`);
* **remote** (``http://host:port``, the gitstate server): it asks
  ``/file-sync/v1/latest-commit``, which the server holds open until the
  code-commit differs from the client's (a long poll), then fetches
  ``refs/heads/code`` with ``git fetch`` over smart HTTP into a private
  bare copy, sending the token in ``X-Authentication``.

Either way a periodic full reconcile (``reconcile_interval``, stretched
when a check would use more than ``reconcile_budget`` of a core) re-checks
every environment for local edits and catches anything an event missed,
and the client checks in after each sync and every ``check_in_interval``.
A check-in names the code-commit the live directory shows, not its
environments, so its size does not grow with them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import pygit2

from gitstate.base.fswatch import RefWatch
from gitstate.engine.storage import CODE_REF
from gitstate.errors import GitStateError
from gitstate.filesync.checkins import CheckIns
from gitstate.filesync.livedir import LiveDir, SyncReport
from gitstate.settings import FileSyncSettings

log = logging.getLogger(__name__)

#: Paths of the file-sync endpoints under the server's base URL.
GIT_PATH = "/file-sync/v1/git"
LATEST_PATH = "/file-sync/v1/latest-commit"
CHECK_IN_PATH = "/file-sync/v1/check-ins"
TOKEN_HEADER = "X-Authentication"
CACHE = ".gitstate-cache.git"
#: Most bytes of local edits a check-in carries (the server takes 64 KiB bodies).
EDITS_BUDGET = 32 * 1024


class StorageUnreachable(GitStateError, ConnectionError):
    """The storage (server or repository) could not be read."""

    def __init__(self, storage: str, detail: str) -> None:
        self.storage = storage
        self.detail = detail
        super().__init__(f"{storage}: {detail}")


class Source(Protocol):
    """Where a client gets code-commits from."""

    def repo(self) -> pygit2.Repository:
        """Return a repository holding the latest code-commit's objects."""

    def next_commit(self, known: str | None, timeout: float) -> str | None:
        """Return the latest code-commit, waiting up to ``timeout`` for one ≠ ``known``."""

    def check_in(self, name: str, report: Mapping[str, Any]) -> None:
        """Report the client's state to the server."""

    def close(self) -> None:
        """Release threads and handles."""


class LocalSource:
    """A storage repository on this host, watched with inotify.

    Args:
        path: the bare storage repository (``DATADIR/storage.git``).
        polling: watch by polling (file systems without inotify).
    """

    def __init__(self, path: Path, *, polling: bool = False) -> None:
        self.path = Path(path)
        if not (self.path / "HEAD").exists():
            raise StorageUnreachable(str(path), "not a git repository")
        self.check_ins = CheckIns(self.path.parent / "clients")
        self._wake = threading.Event()
        self._watch = RefWatch(self.path, self._wake.set, polling=polling).start()
        self._repo: pygit2.Repository | None = None
        self._closed = False

    def repo(self) -> pygit2.Repository:
        """Return the storage repository (one handle, reused)."""
        if self._repo is None:
            self._repo = pygit2.Repository(str(self.path))
        return self._repo

    def tip(self) -> str | None:
        """Resolve the code ref now."""
        ref = self.repo().references.get(CODE_REF)
        return str(ref.target) if ref is not None else None

    def next_commit(self, known: str | None, timeout: float) -> str | None:
        """Return the tip as soon as it differs from ``known`` (or at the timeout)."""
        until = time.monotonic() + timeout
        while True:
            self._wake.clear()
            tip = self.tip()
            remaining = until - time.monotonic()
            if tip != known or remaining <= 0 or self._closed:
                return tip
            self._wake.wait(remaining)

    def check_in(self, name: str, report: Mapping[str, Any]) -> None:
        """Write the check-in next to the storage repository (same data dir)."""
        self.check_ins.record(name, report)

    def close(self) -> None:
        """Stop watching and end a wait in progress."""
        self._closed = True
        self._wake.set()
        self._watch.stop()


class RemoteSource:
    """The gitstate server: long poll, smart-HTTP fetch, check-in endpoint.

    Args:
        base_url: the server, e.g. ``http://primary:8170``.
        token: the file-sync token.
        cache: the private bare repository fetched into.
    """

    def __init__(self, base_url: str, token: str | None, cache: Path) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.cache = Path(cache)
        if not (self.cache / "HEAD").exists():
            pygit2.init_repository(str(self.cache), bare=True).free()
        self._repo: pygit2.Repository | None = None

    def repo(self) -> pygit2.Repository:
        """Return the local copy (reopened after each fetch to see new packs)."""
        if self._repo is None:
            self._repo = pygit2.Repository(str(self.cache))
        return self._repo

    def _request(self, method: str, path: str, body: Any = None, *, timeout: float = 30.0) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header(TOKEN_HEADER, self.token)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as ex:
            raise StorageUnreachable(self.base, f"{method} {path}: HTTP {ex.code}") from ex
        except (urllib.error.URLError, OSError, ValueError) as ex:
            raise StorageUnreachable(self.base, f"{method} {path}: {ex}") from ex

    def next_commit(self, known: str | None, timeout: float) -> str | None:
        """Long-poll the server for a code-commit other than ``known``."""
        query = urllib.parse.urlencode({"known": known or "", "timeout": f"{timeout:g}"})
        answer = self._request("GET", f"{LATEST_PATH}?{query}", timeout=timeout + 30)
        commit = answer.get("code-commit") if isinstance(answer, Mapping) else None
        return str(commit) if commit else None

    def fetch(self) -> str | None:
        """Fetch the code ref into the local copy; return its new tip.

        Raises:
            StorageUnreachable: ``git fetch`` failed.
        """
        env = {
            **os.environ,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        if self.token:
            # Through the environment, not argv: other users can read argv.
            count = int(env.get("GIT_CONFIG_COUNT", "0") or 0)
            env["GIT_CONFIG_COUNT"] = str(count + 1)
            env[f"GIT_CONFIG_KEY_{count}"] = "http.extraHeader"
            env[f"GIT_CONFIG_VALUE_{count}"] = f"{TOKEN_HEADER}: {self.token}"
        result = subprocess.run(
            [
                "git",
                "--git-dir",
                str(self.cache),
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                self.base + GIT_PATH,
                f"+{CODE_REF}:{CODE_REF}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            raise StorageUnreachable(self.base, f"git fetch failed: {result.stderr.strip()}")
        self._repo = None
        ref = self.repo().references.get(CODE_REF)
        return str(ref.target) if ref is not None else None

    def check_in(self, name: str, report: Mapping[str, Any]) -> None:
        """Post the check-in to the server."""
        self._request("POST", CHECK_IN_PATH, {"name": name, **report})

    def close(self) -> None:
        """Nothing to release."""


def open_source(storage: str, live: Path, token: str | None) -> LocalSource | RemoteSource:
    """Return the source ``--storage`` names: a path, ``file://`` or ``http(s)://`` URL."""
    parsed = urllib.parse.urlparse(storage)
    if parsed.scheme in ("http", "https"):
        return RemoteSource(storage, token, live / CACHE)
    if parsed.scheme == "file":
        return LocalSource(Path(urllib.parse.unquote(parsed.path)))
    return LocalSource(Path(storage))


class SyncClient:
    """Keep one live directory in step with a source.

    Args:
        name: the client's name in check-ins.
        live: the live directory.
        source: where code-commits come from.
        settings: intervals and ``keep_versions``.
    """

    def __init__(
        self,
        name: str,
        live: LiveDir,
        source: LocalSource | RemoteSource,
        settings: FileSyncSettings,
    ) -> None:
        self.name = name
        self.live = live
        self.source = source
        self.settings = settings
        self.applied: str | None = live.state().get("code_commit")
        self._next_check_in = 0.0

    def sync(self, commit: str, *, verify: bool) -> SyncReport:
        """Apply ``commit`` to the live directory and check in."""
        if isinstance(self.source, RemoteSource):
            repo = self.source.repo()
            if commit not in repo:
                self.source.fetch()
                repo = self.source.repo()
        report = self.live.apply(self.source.repo(), commit, verify=verify)
        if report.updated or report.removed or commit != self.applied:
            log.info(
                "%s: synced %s (updated %s, removed %s; %d written, %d linked)",
                self.name,
                commit[:12],
                ", ".join(report.updated) or "-",
                ", ".join(report.removed) or "-",
                report.written,
                report.linked,
                extra={"notable": True},
            )
        changed = commit != self.applied or bool(report.local_edits) or bool(report.failed)
        self.applied = commit
        if changed:
            self._next_check_in = 0.0
        return report

    def check_in(self, *, force: bool = False) -> None:
        """Report the live directory's state if due (or ``force``)."""
        if not force and time.monotonic() < self._next_check_in:
            return
        state = self.live.state()
        report = check_in_report(state)
        try:
            self.source.check_in(self.name, report)
            self._next_check_in = time.monotonic() + self.settings.check_in_interval
        except GitStateError as ex:
            log.warning("%s: check-in failed: %s", self.name, ex)
            self._next_check_in = time.monotonic() + 1.0

    def run(self, stop: threading.Event) -> None:
        """Sync until ``stop`` is set; survive errors by retrying with back-off."""
        with self.live.locked():
            next_full = 0.0
            backoff = 0.5
            while not stop.is_set():
                full = time.monotonic() >= next_full
                try:
                    wait = 0.0 if full else self._idle_wait(next_full)
                    commit = self.source.next_commit(self.applied, wait)
                    spent = time.thread_time()
                    if commit is not None and (commit != self.applied or full):
                        self.sync(commit, verify=full)
                    if full:
                        next_full = time.monotonic() + self._full_interval(
                            time.thread_time() - spent
                        )
                    self.check_in()
                    self.live.empty_trash()
                    backoff = 0.5
                except (GitStateError, pygit2.GitError, OSError, KeyError) as ex:
                    log.warning("%s: sync failed: %s; retrying in %.1fs", self.name, ex, backoff)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 10.0)

    def _full_interval(self, cpu: float) -> float:
        """Seconds until the next full check, after one that took ``cpu`` seconds of CPU.

        ``reconcile_interval``, or longer when the check is so costly that
        it would use more than ``reconcile_budget`` of a core.
        """
        interval = max(self.settings.reconcile_interval, cpu / self.settings.reconcile_budget)
        if interval > self.settings.reconcile_interval:
            log.info(
                "%s: the full check took %.2fs of CPU; the next one in %.0fs",
                self.name,
                cpu,
                interval,
            )
        return interval

    def _idle_wait(self, next_full: float) -> float:
        """How long the next wait for a new commit may last."""
        remaining = max(0.0, next_full - time.monotonic())
        check_in_due = max(0.0, self._next_check_in - time.monotonic())
        return min(remaining, check_in_due, self.settings.long_poll_timeout)


def check_in_report(state: Mapping[str, Any]) -> dict[str, Any]:
    """Return a check-in from a live directory's state.

    Its size does not depend on the number of environments: the code-commit
    names every environment's tree, environment-commit and signature
    exactly, and the server holds that commit (the client got it from
    there). Local edits are sent while the body stays under
    :data:`EDITS_BUDGET` bytes, with their total count. Environments the
    last sync could not write are named with why (at most
    :data:`gitstate.filesync.livedir.MAX_FAILED`, bounded in length).
    """
    edits = [edit for edit in state.get("local_edits") or [] if isinstance(edit, Mapping)]
    sent: list[Mapping[str, Any]] = []
    size = 0
    for edit in edits:
        size += len(json.dumps(edit)) + 2
        if size > EDITS_BUDGET:
            break
        sent.append(edit)
    return {
        "code_commit": state.get("code_commit"),
        "synced_at": state.get("synced_at"),
        "local_edits": sent,
        "local_edits_total": len(edits),
        "local_edits_at": state.get("local_edits_at"),
        "failed_environments": state.get("failed") or {},
        "time": time.time(),
        "host": socket.gethostname(),
    }


def run_client(
    storage: str,
    live_dir: Path,
    name: str,
    settings: FileSyncSettings,
    stop: threading.Event,
) -> None:
    """Run ``gitstate sync`` until ``stop`` is set."""
    live = LiveDir(live_dir, keep_versions=settings.keep_versions)
    live.root.mkdir(parents=True, exist_ok=True)
    source = open_source(storage, live.root, settings.token)
    try:
        SyncClient(name, live, source, settings).run(stop)
    finally:
        source.close()
