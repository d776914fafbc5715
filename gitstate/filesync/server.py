"""File sync, server side: the storage repository served to remote clients.

Three things, all behind one token check (:meth:`FileSyncService.authorize`):

* the **git smart-HTTP transport**, read-only: ``info/refs`` and
  ``git-upload-pack`` are answered by ``git upload-pack --stateless-rpc``
  (protocol v0 and v2, gzip request bodies); receive-pack is refused;
* a **long poll**, :meth:`FileSyncService.latest_commit`: the current
  code-commit as soon as it differs from the one the client has, or the
  same one after a bounded wait. The wait is woken by inotify on the
  storage refs (one watcher per server process, started on first use);
* **check-ins**, kept as files (:mod:`gitstate.filesync.checkins`), from
  which the ``file-sync-client-status`` of ``/deploys/status`` is built (a
  client's environments are read from the code-commit it checked in with)
  and for which ``wait: true`` deploys wait, woken by each check-in.

Nothing here knows HTTP: :mod:`gitstate.web.filesync` translates.
"""

from __future__ import annotations

import hmac
import os
import re
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

import pygit2

from gitstate.base.blocking import Blocking
from gitstate.base.fswatch import RefWatch
from gitstate.base.shutdown import stopping
from gitstate.base.times import now_iso
from gitstate.base.wakeup import Wakeup
from gitstate.config import Config
from gitstate.deploys.queue import TIMEOUT
from gitstate.engine.storage import CODE_REF, Storage, init_storage
from gitstate.errors import BAD_REQUEST, FORBIDDEN, KIND_PREFIX, GitStateError
from gitstate.filesync.checkins import CheckIns, InvalidCheckIn
from gitstate.filesync.rollback import RollbackRequest, Rollbacks
from gitstate.store.branch import Store

#: Largest (decompressed) upload-pack request accepted.
MAX_NEGOTIATION = 32 * 1024 * 1024
#: Longest a wait (for clients, for a new code-commit) sleeps without
#: looking, should an inotify event be lost (a full event queue); check-ins,
#: publishes and a stopping process wake it at once.
WAIT_SAFETY_NET = 5.0
#: Code-commits whose environment lists are kept for the status.
_DEPLOYED_CACHE = 8
#: The error kind of a deploy a file-sync client would not write (a ``wait`` answer).
FILE_SYNC_REFUSED = KIND_PREFIX + "file-sync-refused"
_CHUNK = 64 * 1024
_PROTOCOL = re.compile(r"^[A-Za-z0-9=:.-]{1,64}$")


class Unauthorized(GitStateError, PermissionError):
    """The request carries no valid file-sync token."""

    status = 401
    kind = "puppetlabs.rbac/user-unauthenticated"
    challenge = 'Token realm="gitstate file sync"'

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ServiceRefused(GitStateError, PermissionError):
    """A git service other than upload-pack was asked for (the transport is read-only)."""

    status = 403
    kind = FORBIDDEN

    def __init__(self, service: str) -> None:
        self.service = service
        super().__init__(f"{service} is not offered: file-sync storage is read-only")


class RequestTooLarge(GitStateError, ValueError):
    """An upload-pack request body is larger than :data:`MAX_NEGOTIATION`."""

    status = 413
    kind = BAD_REQUEST

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"request body larger than {limit} bytes")


def pkt_line(text: str) -> bytes:
    """Encode one git pkt-line."""
    data = text.encode()
    return f"{len(data) + 4:04x}".encode() + data


class FileSyncService:
    """The server's side of file sync for one data directory.

    Args:
        config: the service config (``datadir``, ``file_sync``, and
            ``deploy.timeouts.sync``, how long ``wait: true`` waits for clients).
        store: the state branch (rollbacks are recorded there).
    """

    def __init__(self, config: Config, store: Store) -> None:
        self.settings = config.file_sync
        self.sync_timeout = config.deploy.timeouts.sync
        self.storage_path = config.datadir / "storage.git"
        self._store = store
        self._lockdir = config.datadir / "locks"
        self._rollbacks: Rollbacks | None = None
        self._storage: Storage | None = None
        self._deployed: dict[str, list[tuple[str, str, str]]] = {}
        self._deployed_lock = threading.Lock()
        self.check_ins = CheckIns(config.datadir / "clients")
        self._local = threading.local()
        self._code_moved = Wakeup()
        self._watch: RefWatch | None = None
        self._watch_lock = threading.Lock()

    # -- the one token check ----------------------------------------------------------

    def authorize(self, token: str | None) -> None:
        """Check a presented token; the only place file-sync access is decided.

        Raises:
            Unauthorized: no token is configured, none was presented or it is
                wrong (compared in constant time).
        """
        expected = self.settings.token
        if not expected:
            raise Unauthorized("file sync is not enabled: set file_sync.token")
        if not token:
            raise Unauthorized("a file-sync token is required (X-Authentication or ?token=)")
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise Unauthorized("the file-sync token is not valid")

    # -- the code ref ------------------------------------------------------------------

    def _repo(self) -> pygit2.Repository:
        repo = getattr(self._local, "repo", None)
        if repo is None:
            init_storage(self.storage_path)
            repo = self._local.repo = pygit2.Repository(str(self.storage_path))
        return repo

    def storage(self) -> Storage:
        """Return the storage repository (one object per service, shared by threads)."""
        if self._storage is None:
            self._storage = Storage(self.storage_path)
        return self._storage

    def code_commit(self) -> str | None:
        """Return the current code-commit (None before the first deploy)."""
        ref = self._repo().references.get(CODE_REF)
        return str(ref.target) if ref is not None else None

    def latest_commit(self, known: str | None, timeout: float) -> tuple[str | None, bool]:
        """Return the code-commit once it differs from ``known``, or at the timeout.

        Args:
            known: the code-commit the client has (None or "" for none).
            timeout: seconds to hold the request, capped by
                ``file_sync.long_poll_timeout``.

        Returns:
            the current code-commit and whether it differs from ``known``.
        """
        self._start_watch()
        timeout = min(max(0.0, timeout), self.settings.long_poll_timeout)
        until = time.monotonic() + timeout
        known = known or None
        while True:
            seen = self._code_moved.generation
            tip = self.code_commit()
            remaining = until - time.monotonic()
            if tip != known or remaining <= 0 or stopping.is_set():
                return tip, tip != known
            self._code_moved.wait(seen, min(remaining, WAIT_SAFETY_NET))

    async def latest_commit_async(
        self, known: str | None, timeout: float, run: Blocking
    ) -> tuple[str | None, bool]:
        """:meth:`latest_commit` for an asyncio task: the long poll holds no thread."""
        await run(self._start_watch)
        timeout = min(max(0.0, timeout), self.settings.long_poll_timeout)
        until = time.monotonic() + timeout
        known = known or None
        while True:
            seen = self._code_moved.generation
            tip = await run(self.code_commit)
            remaining = until - time.monotonic()
            if tip != known or remaining <= 0 or stopping.is_set():
                return tip, tip != known
            await self._code_moved.wait_async(seen, min(remaining, WAIT_SAFETY_NET))

    def _start_watch(self) -> None:
        with self._watch_lock:
            if self._watch is None:
                init_storage(self.storage_path)
                self._watch = RefWatch(self.storage_path, self._notify).start()

    def _notify(self) -> None:
        self._code_moved.notify()

    # -- the git transport --------------------------------------------------------------

    def _git_env(self, protocol: str | None) -> dict[str, str]:
        env = {"GIT_CONFIG_NOSYSTEM": "1", "HOME": str(self.storage_path), "PATH": _path()}
        if protocol and _PROTOCOL.match(protocol):
            env["GIT_PROTOCOL"] = protocol
        return env

    def advertise(self, service: str, protocol: str | None) -> bytes:
        """Answer ``GET info/refs?service=...``: upload-pack's ref advertisement.

        Raises:
            ServiceRefused: the service is not ``git-upload-pack``.
        """
        if service != "git-upload-pack":
            raise ServiceRefused(service or "dumb HTTP")
        init_storage(self.storage_path)
        result = subprocess.run(
            ["git", "upload-pack", "--stateless-rpc", "--advertise-refs", str(self.storage_path)],
            env=self._git_env(protocol),
            capture_output=True,
            check=True,
            timeout=60,
        )
        if protocol and "version=2" in protocol:
            return result.stdout
        return pkt_line("# service=git-upload-pack\n") + b"0000" + result.stdout

    def upload_pack(
        self, body: IO[bytes], *, gzipped: bool, protocol: str | None
    ) -> Iterator[bytes]:
        """Answer ``POST git-upload-pack``: stream upload-pack's response.

        Raises:
            RequestTooLarge: the (decompressed) body is too large.
        """
        data = body.read(MAX_NEGOTIATION + 1)
        if gzipped:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            data = inflater.decompress(data, MAX_NEGOTIATION + 1)
        if len(data) > MAX_NEGOTIATION:
            raise RequestTooLarge(MAX_NEGOTIATION)
        process = subprocess.Popen(
            ["git", "upload-pack", "--stateless-rpc", str(self.storage_path)],
            env=self._git_env(protocol),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

        def feed() -> None:
            assert process.stdin is not None
            try:
                process.stdin.write(data)
            except OSError:
                pass
            finally:
                process.stdin.close()

        threading.Thread(target=feed, daemon=True).start()
        return _stream(process)

    # -- rollbacks --------------------------------------------------------------------

    def rollback(self, body: Any, *, actor: str, request_id: str | None = None) -> dict[str, Any]:
        """Roll an environment back (``{"environment", "to"?, "wait"?}``).

        With ``wait``, answer once every configured client has the new
        code-commit, or with a ``timeout`` error after ``deploy.timeouts.sync``.

        Raises:
            InvalidRollback: the body is malformed.
            RollbackTargetNotFound: nothing to roll back to.
        """
        answer, commits = self.roll_back_now(body, actor=actor, request_id=request_id)
        if commits:
            late = self.wait_for_clients(commits, self.sync_timeout)
            if late:
                answer["error"] = self.sync_timeout_error(late, answer["environment"])
        return answer

    async def rollback_async(
        self, body: Any, *, actor: str, request_id: str | None = None, run: Blocking
    ) -> dict[str, Any]:
        """:meth:`rollback` for the web server: the wait for clients holds no thread."""
        answer, commits = await run(self.roll_back_now, body, actor=actor, request_id=request_id)
        if commits:
            late = await self.wait_for_clients_async(commits, self.sync_timeout, run)
            if late:
                answer["error"] = self.sync_timeout_error(late, answer["environment"])
        return answer

    def roll_back_now(
        self, body: Any, *, actor: str, request_id: str | None = None
    ) -> tuple[dict[str, Any], list[str]]:
        """Roll back; return the answer and the code-commits a ``wait`` waits for."""
        request = RollbackRequest.from_json(body)
        wait = isinstance(body, Mapping) and body.get("wait") is True
        if self._rollbacks is None:
            self._rollbacks = Rollbacks(self.storage(), self._store, self._lockdir)
        answer = self._rollbacks.rollback(request, actor=actor, request_id=request_id)
        code = answer["file-sync"]["code-commit"]
        return answer, [code] if wait and code else []

    def sync_timeout_error(self, late: Sequence[str], environment: str) -> dict[str, Any]:
        """Return the ``timeout`` error of clients that did not sync in time."""
        return {
            "kind": TIMEOUT,
            "msg": (
                f"file-sync clients {', '.join(late)} did not sync {environment} within "
                f"{self.sync_timeout:g}s"
            ),
            "details": {"corrected-env-name": environment, "unsynced-clients": list(late)},
        }

    def refusals(self, deployed: Mapping[str, str]) -> dict[str, dict[str, str]]:
        """Return, per environment, the clients that have its code-commit but could not write it.

        A client that refuses an environment (a link that leaves it, a name
        its file system cannot take) still checks in the code-commit; the
        environment is then listed under its ``failed_environments``, with
        why. The check-ins are read once, however many environments.

        Args:
            deployed: environment → the code-commit that published it.

        Returns:
            environment → {client: reason}, for the refused environments only.
        """
        repo = self._repo()
        refused: dict[str, dict[str, str]] = {}
        for name, record in sorted(self.check_ins.all().items()):
            failed = record.get("failed_environments") or {}
            have = record.get("code_commit")
            for environment, commit in deployed.items():
                why = failed.get(environment)
                if why is not None and have and _contains(repo, have, commit):
                    refused.setdefault(environment, {})[name] = str(why)
        return refused

    def refused_error(self, refused: Mapping[str, str], environment: str) -> dict[str, Any]:
        """Return the error of an environment that file-sync clients refused to write."""
        reasons = "; ".join(f"{client}: {why}" for client, why in refused.items())
        return {
            "kind": FILE_SYNC_REFUSED,
            "msg": f"file-sync clients could not write {environment}: {reasons}",
            "details": {"corrected-env-name": environment, "refusing-clients": dict(refused)},
        }

    # -- check-ins and status ----------------------------------------------------------

    def check_in(self, body: Any) -> dict[str, Any]:
        """Record a remote client's check-in (``{"name", "code_commit", ...}``).

        Raises:
            InvalidCheckIn: the body is malformed.
        """
        if not isinstance(body, Mapping):
            raise InvalidCheckIn("a check-in must be a JSON object")
        return self.check_ins.record(body.get("name"), body)

    def client_status(self) -> dict[str, Any]:
        """Return Code Manager's ``file-sync-client-status`` section.

        Every configured client is listed (``last_check_in_time`` null until
        it checks in), and so is any other client that has checked in.
        """
        tip = self.code_commit()
        check_ins = self.check_ins.all()
        names = [client.name for client in self.settings.clients]
        names += [name for name in sorted(check_ins) if name not in names]
        clients = {}
        for name in names:
            record = check_ins.get(name) or {}
            commit = record.get("code_commit")
            synced = bool(record) and commit == tip
            date = _iso(record.get("synced_at"))
            if "environments" in record:  # listed by a client from before code-commit check-ins
                deployed = [
                    (env, item.get("deploy-signature"), item.get("environment-commit"))
                    for env, item in sorted(record["environments"].items())
                ]
            else:
                deployed = self._environments_of(commit)
            clients[name] = {
                "last_check_in_time": record.get("last_check_in_time"),
                "synced-with-file-sync-storage": synced,
                "code-commit": commit,
                "deployed": [
                    {
                        "environment": env,
                        "date": date,
                        "deploy-signature": signature,
                        "environment-commit": env_commit,
                    }
                    for env, signature, env_commit in deployed
                ],
                "local-edits": record.get("local_edits", []),
                "local-edits-at": _iso(record.get("local_edits_at")),
                "failed-environments": record.get("failed_environments") or {},
            }
        return {
            "all-synced": all(item["synced-with-file-sync-storage"] for item in clients.values()),
            "file-sync-clients": clients,
        }

    def _environments_of(self, commit: str | None) -> list[tuple[str, str, str]]:
        """Return (environment, signature, environment-commit) of what a code-commit publishes.

        Kept for a few code-commits: every client on the current one shares
        one list, and a status request at 1,000 environments reads the
        manifest once.
        """
        if not commit:
            return []
        with self._deployed_lock:
            found = self._deployed.get(commit)
        if found is not None:
            return found
        try:
            published = self.storage().published(commit)
        except (KeyError, ValueError, pygit2.GitError):
            return []  # not in storage (replaced since?): nothing to show
        found = [(env, item.signature, item.commit) for env, item in sorted(published.items())]
        with self._deployed_lock:
            if len(self._deployed) >= _DEPLOYED_CACHE:
                self._deployed.pop(next(iter(self._deployed)))
            self._deployed[commit] = found
        return found

    def behind(self, commits: Sequence[str]) -> list[str]:
        """Return the configured clients that lack any of ``commits``.

        A client has a code-commit when it synced that one or a later one
        (a descendant in the code ref's history).
        """
        wanted = [commit for commit in dict.fromkeys(commits) if commit]
        if not wanted:
            return []
        repo = self._repo()
        late = []
        for client in self.settings.clients:
            record = self.check_ins.get(client.name) or {}
            have = record.get("code_commit")
            if not have or not all(_contains(repo, have, commit) for commit in wanted):
                late.append(client.name)
        return late

    def wait_for_clients(self, commits: Sequence[str], timeout: float) -> list[str]:
        """Wait until every configured client has ``commits``; return those still behind.

        Woken by each check-in: written in this process, or seen by inotify
        on the check-ins' directory when another process writes one.
        """
        until = time.monotonic() + timeout
        self.check_ins.watch()
        while True:
            seen = self.check_ins.generation
            late = self.behind(commits)
            remaining = until - time.monotonic()
            if not late or remaining <= 0:
                return late
            self.check_ins.wait_for_change(seen, min(remaining, WAIT_SAFETY_NET))

    async def wait_for_clients_async(
        self, commits: Sequence[str], timeout: float, run: Blocking
    ) -> list[str]:
        """:meth:`wait_for_clients` for an asyncio task: it sleeps without a thread."""
        until = time.monotonic() + timeout
        await run(self.check_ins.watch)
        while True:
            seen = self.check_ins.generation
            late = await run(self.behind, commits)
            remaining = until - time.monotonic()
            if not late or remaining <= 0:
                return late
            await self.check_ins.wait_for_change_async(seen, min(remaining, WAIT_SAFETY_NET))


def _contains(repo: pygit2.Repository, have: str, commit: str) -> bool:
    if have == commit:
        return True
    try:
        return bool(repo.descendant_of(pygit2.Oid(hex=have), pygit2.Oid(hex=commit)))
    except (KeyError, ValueError, pygit2.GitError):
        return False


def _iso(stamp: Any) -> str | None:
    if not isinstance(stamp, int | float):
        return None
    return now_iso(lambda: float(stamp))


def _path() -> str:
    return os.environ.get("PATH", "/usr/bin:/bin")


def _stream(process: subprocess.Popen[bytes]) -> Iterator[bytes]:
    """Yield a process's stdout in chunks; kill it if the reader goes away."""
    assert process.stdout is not None
    try:
        while True:
            chunk = process.stdout.read1(_CHUNK)
            if not chunk:
                break
            yield chunk
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


__all__ = [
    "FileSyncService",
    "InvalidCheckIn",
    "RequestTooLarge",
    "ServiceRefused",
    "Unauthorized",
]
