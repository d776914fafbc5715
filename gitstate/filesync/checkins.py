"""File-sync clients' check-ins: liveness data kept out of the audited history.

A client checks in after every sync and every ``check_in_interval`` while
idle. Committing that to the state branch would bury the deploy and gate
history under heartbeats, so each client's last check-in is one JSON file,
``DATADIR/clients/<name>.json``, replaced atomically (write a temporary file,
``os.replace``). Only the latest check-in matters; nothing is appended, so
the directory's size is bounded by the number of clients. What the clients
*did* is in the state branch already: the deploys they received.

Local clients (same host as the server) write their file directly; remote
ones post it to ``/file-sync/v1/check-ins`` and the server writes it.

A check-in names the code-commit the client's live directory shows; the
environments, environment-commits and signatures that make up are read
from that code-commit in storage when the status is asked for, so a
check-in's size does not grow with the number of environments (clients
before that listed every environment; such lists are still accepted and
stored). Writers of check-ins are seen by :meth:`CheckIns.wait_for_change`:
those in this process directly, the others (local clients, other server
processes) by inotify on the directory.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gitstate.base.fswatch import DirectoryWatch
from gitstate.base.times import now_iso
from gitstate.base.wakeup import Wakeup
from gitstate.errors import BAD_REQUEST, GitStateError
from gitstate.filesync.livedir import MAX_FAILED, MAX_REASON
from gitstate.settings import CLIENT_NAME

SCHEMA_VERSION = 2
#: Largest check-in accepted, in bytes of JSON.
MAX_CHECK_IN = 256 * 1024
#: Local edits kept of one check-in.
MAX_EDITS = 100
#: Longest environment name kept of a failure (a file name's length).
_NAME_MAX = 255
_SHA = frozenset("0123456789abcdef")


class InvalidCheckIn(GitStateError, ValueError):
    """A check-in is malformed (bad name, commit or shape)."""

    status = 400
    kind = BAD_REQUEST

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


def _is_sha(value: Any) -> bool:
    return isinstance(value, str) and len(value) in (40, 64) and set(value) <= _SHA


class CheckIns:
    """The latest check-in of each client, one file each.

    Args:
        directory: ``DATADIR/clients``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._wakeup = Wakeup()
        self._watch: DirectoryWatch | None = None
        self._watch_lock = threading.Lock()

    def record(self, name: str, report: Mapping[str, Any]) -> dict[str, Any]:
        """Store a client's check-in, stamped with the server's time.

        Args:
            name: the client's name.
            report: what the client says: ``code_commit``, ``environments``
                (env → environment-commit, deploy-signature, ...),
                ``local_edits``, ``failed_environments`` (env → why the
                last sync could not write it) and its own ``time``.

        Raises:
            InvalidCheckIn: the name or the report is malformed.
        """
        if not isinstance(name, str) or not CLIENT_NAME.match(name):
            raise InvalidCheckIn(f"client name {name!r} is not valid")
        if not isinstance(report, Mapping):
            raise InvalidCheckIn("a check-in must be a JSON object")
        commit = report.get("code_commit")
        if commit is not None and not _is_sha(commit):
            raise InvalidCheckIn("code_commit must be a commit id")
        environments = report.get("environments") or {}
        edits = report.get("local_edits") or []
        if not isinstance(environments, Mapping) or not isinstance(edits, list):
            raise InvalidCheckIn("environments must be an object and local_edits a list")
        edits = [edit for edit in edits[:MAX_EDITS] if isinstance(edit, Mapping)]
        total = report.get("local_edits_total")
        failed = report.get("failed_environments") or {}
        if not isinstance(failed, Mapping):
            raise InvalidCheckIn("failed_environments must be an object")
        record: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "last_check_in_time": now_iso(),
            "client_time": report.get("time"),
            "code_commit": commit,
            "synced_at": report.get("synced_at"),
            "local_edits": edits,
            "local_edits_total": total if isinstance(total, int) else len(edits),
            "local_edits_at": report.get("local_edits_at"),
            "failed_environments": {
                str(env)[:_NAME_MAX]: str(why)[:MAX_REASON]
                for env, why in list(failed.items())[:MAX_FAILED]
            },
        }
        if environments:
            # A client from before check-ins named only their code-commit.
            record["environments"] = {
                str(env): {
                    key: str(value)
                    for key, value in (item.items() if isinstance(item, Mapping) else ())
                    if key in ("environment-commit", "deploy-signature", "tree", "version")
                }
                for env, item in environments.items()
            }
        data = json.dumps(record, indent=1, sort_keys=True).encode()
        if len(data) > MAX_CHECK_IN:
            raise InvalidCheckIn(f"check-in larger than {MAX_CHECK_IN} bytes")
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.directory / f".{name}.{os.getpid()}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, self.directory / f"{name}.json")
        self._notify()
        return record

    def get(self, name: str) -> dict[str, Any] | None:
        """Return one client's last check-in, if it ever checked in."""
        if not CLIENT_NAME.match(name):
            return None
        try:
            return dict(json.loads((self.directory / f"{name}.json").read_bytes()))
        except (OSError, ValueError):
            return None

    def all(self) -> dict[str, dict[str, Any]]:
        """Return every client's last check-in, by name."""
        found: dict[str, dict[str, Any]] = {}
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return found
        for file_name in names:
            if file_name.endswith(".json") and not file_name.startswith("."):
                record = self.get(file_name.removesuffix(".json"))
                if record is not None:
                    found[record.get("name", file_name[:-5])] = record
        return found

    # -- waiting for check-ins ------------------------------------------------------

    @property
    def generation(self) -> int:
        """A number that changes whenever a check-in is written (once watching)."""
        return self._wakeup.generation

    def watch(self) -> None:
        """Start noticing check-ins written by other processes (idempotent).

        Call it before reading the check-ins a wait depends on, so that
        none written after that read is missed.
        """
        with self._watch_lock:
            if self._watch is None:
                self._watch = DirectoryWatch(
                    self.directory, self._notify, accept=_is_check_in
                ).start()

    def wait_for_change(self, generation: int, timeout: float) -> int:
        """Wait until a check-in is written after :attr:`generation` was ``generation``.

        Returns at once if one was; otherwise when one is, or after
        ``timeout`` seconds. Returns the generation now.
        """
        return self._wakeup.wait(generation, timeout)

    async def wait_for_change_async(self, generation: int, timeout: float) -> int:
        """:meth:`wait_for_change` for an asyncio task (holds no thread)."""
        return await self._wakeup.wait_async(generation, timeout)

    def close(self) -> None:
        """Stop watching."""
        with self._watch_lock:
            watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()

    def _notify(self) -> None:
        self._wakeup.notify()


def _is_check_in(name: str) -> bool:
    return name.endswith(".json") and not name.startswith(".")
