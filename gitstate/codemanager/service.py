"""The service behind Code Manager's API: deploy requests and their status.

It validates a request, checks that the caller may deploy what it names
(``deploy:<environment>``; ``deploy:*`` for ``deploy-all`` and ``dry-run``),
names environments the way r10k does, asks the engine for the list of
environments when the request needs it (``deploy-all``, ``dry-run``), queues
deploys in the state branch and, with ``wait``, waits for the workers to
finish them. A rollback is a deploy too:
it needs the same permission and is refused while the gate is closed.
Answers use Code Manager's JSON shapes, which are part of the domain here:
pipelines parse them.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from gitstate.auth import PermissionDenied, Principal
from gitstate.base.blocking import Blocking
from gitstate.codemanager.deployed import environments_overview
from gitstate.config import Config
from gitstate.deploys.guard import GATE_CLOSED, DeployGuard, GateClosed
from gitstate.deploys.queue import (
    COLLECT_FAILED,
    DEPLOY_FAILURE,
    TIMEOUT,
    DeployQueue,
    DeployRequestError,
    Requested,
)
from gitstate.engine.environments import CollectFailed, Deployer
from gitstate.engine.sources import Sources, correct_name
from gitstate.filesync.server import FileSyncService
from gitstate.store.branch import Store

_MAX_ENVIRONMENTS = 1000
_MAX_NAME = 255
#: Longest environment name, in bytes: its records are ``<name>.yaml`` files.
MAX_ENVIRONMENT_BYTES = 250


def unusable_name(environment: str) -> str | None:
    """Say why ``environment`` cannot be deployed whatever the sources hold, or None."""
    if len(environment.encode()) > MAX_ENVIRONMENT_BYTES:
        return (
            f"Environment name '{environment[:40]}...' is longer than "
            f"{MAX_ENVIRONMENT_BYTES} bytes and cannot be deployed"
        )
    return None


class CollectError(CollectFailed):
    """The environments could not be listed: the remotes they come from failed us.

    Answered as Code Manager answers it: a gateway error whose message is
    r10k's and whose details name every source that failed.
    """

    status = 502
    kind = COLLECT_FAILED

    def public_message(self) -> str:
        """Return r10k's summary line, as Code Manager reports it."""
        return "Errors while collecting a list of environments to deploy (exit code: 1)"

    def public_details(self) -> str:
        """Return r10k-style text naming every source that failed and why."""
        return self.details


@dataclasses.dataclass(frozen=True)
class DeployRequest:
    """A validated ``POST /code-manager/v1/deploys`` body."""

    environments: tuple[str, ...] = ()
    deploy_all: bool = False
    wait: bool = False
    dry_run: bool = False
    deploy_modules: bool = True

    @classmethod
    def from_json(cls, body: Any) -> DeployRequest:
        """Check a request body.

        Raises:
            DeployRequestError: the body is not an object, has neither
                ``environments`` nor ``deploy-all``, or has a bad value.
        """
        if not isinstance(body, Mapping):
            raise DeployRequestError("the request body must be a JSON object")
        flags = {}
        for key, alias in (
            ("wait", None),
            ("dry-run", "dry_run"),
            ("deploy-all", None),
            ("deploy-modules", None),
        ):
            value = body.get(key, body.get(alias) if alias else None)
            if value is not None and not isinstance(value, bool):
                raise DeployRequestError(f"'{key}' must be true or false")
            flags[key] = value
        environments = body.get("environments")
        if isinstance(environments, str):
            # Code Manager's table: "a comma- and space-separated list".
            environments = [name for name in re.split(r"[,\s]+", environments) if name]
        if environments is not None:
            if not isinstance(environments, list) or not all(
                isinstance(name, str) and name.strip() and len(name) <= _MAX_NAME
                for name in environments
            ):
                raise DeployRequestError(
                    "'environments' must be a list of environment names "
                    f"(1 to {_MAX_NAME} characters), or one comma- and space-separated string"
                )
            if len(environments) > _MAX_ENVIRONMENTS:
                raise DeployRequestError(f"at most {_MAX_ENVIRONMENTS} environments per request")
        dry_run = bool(flags["dry-run"])
        if not environments and not flags["deploy-all"] and not dry_run:
            raise DeployRequestError(
                "the request must name 'environments' (a non-empty list) or set 'deploy-all': true"
            )
        return cls(
            environments=tuple(dict.fromkeys(environments or ())),
            deploy_all=bool(flags["deploy-all"]),
            wait=bool(flags["wait"]) or dry_run,
            dry_run=dry_run,
            deploy_modules=flags["deploy-modules"] is not False,
        )


class CodeManager:
    """Deploy requests and status over the deploy queue and engine."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        engine: Deployer | None = None,
        guard: DeployGuard | None = None,
    ) -> None:
        self.settings = config.deploy
        self.queue = DeployQueue(store, self.settings)
        # Waits hold a server thread each; keep two threads free for the rest.
        self.file_sync = FileSyncService(config, store)
        self.guard = guard
        self._config = config
        self._engine = engine

    @property
    def engine(self) -> Deployer:
        """The deploy engine, built on first use (it opens caches and storage)."""
        if self._engine is None:
            self._engine = Deployer.from_config(self._config)
        return self._engine

    def collect(self) -> list[str]:
        """Fetch the control repositories and return every environment name.

        Raises:
            CollectError: a source could not be fetched or named.
        """
        try:
            return self.engine.collect().names()
        except CollectFailed as ex:
            raise CollectError(ex.details) from ex

    def gate_closed(self, environment: str) -> GateClosed | None:
        """Say why an API deploy of ``environment`` is refused now, or None.

        A deploy of the environment that is running holds the gate with its
        own ticket; that does not refuse the request, which is queued behind
        it, as Code Manager queues it.
        """
        if self.guard is None:
            return None
        running = self.queue.running(environment)
        holder = str(running["ticket"]) if running and running.get("ticket") else None
        return self.guard.blocked(environment, holder=holder)

    def submit(
        self,
        request: DeployRequest,
        *,
        principal: Principal,
        actor: str,
        request_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Carry out ``principal``'s deploy request; return Code Manager's answer array.

        Named environments ``principal`` may not deploy are answered
        ``failed`` with the ``permission-denied`` kind, as Code Manager
        answers per environment, and the others are carried out.

        Raises:
            PermissionDenied: ``deploy-all`` or ``dry-run`` without ``deploy:*``.
            CollectError: ``deploy-all`` or ``dry-run`` could not list the
                environments.
        """
        if request.deploy_all or request.dry_run:
            principal.require("deploy:*", "deploy every environment")
        denied = {
            name: denied_answer(name, refusal)
            for name in request.environments
            if (refusal := _refusal(principal, name)) is not None
        }
        allowed = tuple(name for name in request.environments if name not in denied)
        if not allowed and not request.deploy_all and not request.dry_run:
            return list(denied.values())
        request = dataclasses.replace(request, environments=allowed)
        return list(denied.values()) + self._carry_out(request, actor=actor, request_id=request_id)

    def _carry_out(
        self, request: DeployRequest, *, actor: str, request_id: str | None
    ) -> list[dict[str, Any]]:
        """Carry out a deploy request whose environments may be deployed.

        Environments whose gate is closed are answered ``failed`` with the
        ``gate-closed`` kind and not queued, whether named or part of
        ``deploy-all``; the others are queued (and waited for).
        """
        if request.dry_run:
            return [{"environment": name} for name in self.collect()]
        wanted: list[tuple[str, str]] = []
        requested_at = None
        if request.deploy_all:
            requested_at = time.time()
            wanted.extend((name, name) for name in self.collect())
        wanted.extend((name, correct_name(name)) for name in request.environments)
        wanted = list(dict.fromkeys(wanted))
        refused: list[dict[str, Any]] = []
        allowed: list[tuple[str, str]] = []
        for name, corrected in wanted:
            unusable = unusable_name(corrected)
            if unusable is not None:
                refused.append(
                    {
                        "environment": name,
                        "status": "failed",
                        "error": {
                            "kind": DEPLOY_FAILURE,
                            "msg": unusable,
                            "details": {"corrected-env-name": corrected},
                        },
                    }
                )
                continue
            closed = self.gate_closed(corrected)
            if closed is None:
                allowed.append((name, corrected))
            else:
                refused.append(gate_closed_answer(name, closed))
        queued = self.queue.request(
            allowed,
            actor=actor,
            request_id=request_id,
            deploy_modules=request.deploy_modules,
            reason="deploy-all" if request.deploy_all else "requested",
            requested_at=requested_at,
        )
        if not request.wait:
            return refused + [entry.to_json() for entry in queued]
        # A deploy that a gate closed since the request holds back is
        # answered as such at once: it runs when the gate opens.
        ids = sorted({entry.deploy_id for entry in queued})
        records = self.queue.wait(ids, self.settings.timeouts.wait, held=True)
        answers = self._settle(queued, records)
        return refused + self._wait_for_file_sync(answers)

    async def submit_async(
        self,
        request: DeployRequest,
        *,
        principal: Principal,
        actor: str,
        request_id: str | None = None,
        run: Blocking,
    ) -> list[dict[str, Any]]:
        """:meth:`submit` for the web server: its waits hold no thread.

        Queueing runs in ``run``'s thread pool; the waits for the deploys
        and for the file-sync clients are asyncio tasks woken by the state
        branch and by check-ins, so any number of ``wait: true`` requests
        can be open at once.
        """
        if not request.wait:
            return await run(
                self.submit, request, principal=principal, actor=actor, request_id=request_id
            )
        queued_only = dataclasses.replace(request, wait=False)
        answers: list[dict[str, Any]] = await run(
            self.submit, queued_only, principal=principal, actor=actor, request_id=request_id
        )
        by_id = {answer["id"]: index for index, answer in enumerate(answers) if "id" in answer}
        if not by_id:
            return answers
        queued = [
            Requested(answers[index]["environment"], deploy_id, answers[index]["status"], False)
            for deploy_id, index in by_id.items()
        ]
        ids = sorted(by_id)
        records = await self.queue.wait_async(ids, self.settings.timeouts.wait, held=True, run=run)
        settled = await run(self._settle, queued, records)
        settled = await self._wait_for_file_sync_async(settled, run)
        for entry, answer in zip(queued, settled, strict=True):
            answers[by_id[entry.deploy_id]] = answer
        return answers

    def _settle(
        self, queued: Sequence[Requested], records: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """Answer each queued entry from its record as the wait left it."""
        by_id = {record["id"]: record for record in records}
        held = self.queue.blocked(entry.deploy_id for entry in queued)
        return [
            self._waited(entry, by_id.get(entry.deploy_id), held=held.get(entry.deploy_id))
            for entry in queued
        ]

    def rollback(
        self,
        body: Any,
        *,
        principal: Principal,
        actor: str,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Roll an environment back for ``principal`` (see :meth:`FileSyncService.rollback`).

        Raises:
            PermissionDenied: ``principal`` may not deploy the environment.
            GateClosed: the environment's gate is closed.
            InvalidRollback: the body is malformed.
            RollbackTargetNotFound: nothing to roll back to.
        """
        self._may_roll_back(body, principal)
        return self.file_sync.rollback(body, actor=actor, request_id=request_id)

    async def rollback_async(
        self,
        body: Any,
        *,
        principal: Principal,
        actor: str,
        request_id: str | None = None,
        run: Blocking,
    ) -> dict[str, Any]:
        """:meth:`rollback` for the web server: a ``wait`` holds no thread."""
        await run(self._may_roll_back, body, principal)
        return await self.file_sync.rollback_async(
            body, actor=actor, request_id=request_id, run=run
        )

    def _may_roll_back(self, body: Any, principal: Principal) -> None:
        """Refuse a rollback ``principal`` may not make, or that a closed gate holds."""
        environment = body.get("environment") if isinstance(body, Mapping) else None
        if isinstance(environment, str):
            corrected = correct_name(environment)
            principal.require(f"deploy:{corrected}", f"roll back {corrected!r}")
            # No holder: unlike a deploy request, a rollback counts the
            # ticket of a running deploy of the environment too.
            closed = self.guard.blocked(corrected) if self.guard is not None else None
            if closed is not None:
                raise closed

    def _wait_for_file_sync(self, answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Hold a ``wait`` answer until every configured client has the new code.

        Code Manager's ``wait`` returns once the code is live on every
        server. Clients that lack a deployed code-commit (or a later one)
        after ``deploy.timeouts.sync`` add a ``timeout`` error to the
        environments they lack. An environment a client has the code-commit
        of but refused to write (``failed_environments`` in its check-in) is
        ``failed``, with each refusing client's reason.
        """
        late = self.file_sync.wait_for_clients(_commits(answers), self.file_sync.sync_timeout)
        return self._synced(answers, late)

    async def _wait_for_file_sync_async(
        self, answers: list[dict[str, Any]], run: Blocking
    ) -> list[dict[str, Any]]:
        """:meth:`_wait_for_file_sync` as an asyncio task."""
        late = await self.file_sync.wait_for_clients_async(
            _commits(answers), self.file_sync.sync_timeout, run
        )
        return await run(self._synced, answers, late)

    def _synced(self, answers: list[dict[str, Any]], late: Sequence[str]) -> list[dict[str, Any]]:
        complete = [answer for answer in answers if answer.get("status") == "complete"]
        refusals = self.file_sync.refusals(
            {answer["environment"]: answer["file-sync"]["code-commit"] for answer in complete}
        )
        for answer in complete:
            environment = answer["environment"]
            refused = refusals.get(environment)
            if refused:
                # Deployed to storage but not live everywhere: not complete.
                answer["status"] = "failed"
                answer["error"] = self.file_sync.refused_error(refused, environment)
            elif late:
                answer["error"] = self.file_sync.sync_timeout_error(late, environment)
        return answers

    def _waited(
        self,
        entry: Requested,
        record: Mapping[str, Any] | None,
        *,
        held: str | None = None,
    ) -> dict[str, Any]:
        answer: dict[str, Any] = {"environment": entry.environment, "id": entry.deploy_id}
        status = (record or {}).get("status", "queued")
        answer["status"] = status
        if status == "complete":
            assert record is not None
            answer["deploy-signature"] = record.get("signature")
            answer["file-sync"] = {
                "environment-commit": record.get("environment_commit"),
                "code-commit": record.get("code_commit"),
            }
        elif status == "failed":
            assert record is not None
            answer["error"] = record.get("error")
        elif held is not None:
            answer["error"] = {
                "kind": GATE_CLOSED,
                "msg": f"deploy of {entry.environment} is queued: {held}; it runs when the "
                "gate opens",
                "details": {
                    "corrected-env-name": (record or {}).get("environment", entry.environment)
                },
            }
        else:
            answer["error"] = {
                "kind": TIMEOUT,
                "msg": f"deploy of {entry.environment} was still {status}: after "
                f"{self.settings.timeouts.wait:g}s",
                "details": {
                    "corrected-env-name": (record or {}).get("environment", entry.environment)
                },
            }
        return answer

    def status(self) -> dict[str, Any]:
        """Return Code Manager's ``deploys/status`` document."""
        sections: dict[str, list[dict[str, Any]]] = {
            "new": [],
            "queued": [],
            "deploying": [],
            "failed": [],
        }
        for entry in self.queue.active():
            # As requested, as the answer to the request and ``?id=`` name it.
            item = {
                "id": entry["id"],
                "environment": entry.get("requested_as", entry["environment"]),
                "queued-at": entry.get("queued_at"),
            }
            if entry.get("blocked"):
                # A deploy held back by a closed gate says why.
                item["waiting-for"] = entry["blocked"]
            sections.setdefault(entry["status"], []).append(item)
        for entry in self.queue.finished():
            if entry["status"] == "failed":
                sections["failed"].append(
                    {
                        "id": entry["id"],
                        "environment": entry.get("requested_as", entry["environment"]),
                        "queued-at": entry.get("queued_at"),
                        "error": entry.get("error"),
                    }
                )
        deployed = [
            {
                "environment": name,
                "date": summary.get("deployed_at"),
                "deploy-signature": summary.get("signature"),
            }
            for name, summary in sorted(self.queue.deployed().items())
        ]
        return {
            "deploys-status": sections,
            "file-sync-storage-status": {"deployed": deployed},
            "file-sync-client-status": self.file_sync.client_status(),
        }

    def environments(self, principal: Principal) -> dict[str, Any]:
        """Return every environment's deployed version, queue and clients, for people.

        See :mod:`gitstate.codemanager.deployed`; ``may_roll_back`` says
        whether ``principal`` holds ``deploy:<environment>``.
        """
        return environments_overview(
            self.queue, self.file_sync, Sources.from_settings(self._config.sources), principal
        )

    def deploy_status(self, deploy_id: int) -> dict[str, Any]:
        """Return one deploy as the status endpoint shows it (``?id=N``).

        Raises:
            DeployNotFound: no deploy has that id.
        """
        record = self.queue.get(deploy_id)
        answer: dict[str, Any] = {
            "id": record["id"],
            "environment": record.get("requested_as", record["environment"]),
            "status": record["status"],
            "queued-at": record.get("queued_at"),
        }
        for key, name in (("started_at", "started-at"), ("finished_at", "finished-at")):
            if key in record:
                answer[name] = record[key]
        if record["status"] == "complete":
            answer["deploy-signature"] = record.get("signature")
            answer["file-sync"] = {
                "environment-commit": record.get("environment_commit"),
                "code-commit": record.get("code_commit"),
            }
        if "error" in record:
            answer["error"] = record["error"]
        return answer


def _commits(answers: Sequence[Mapping[str, Any]]) -> list[str]:
    """Return the code-commits of the completed deploys among ``answers``."""
    return [
        answer["file-sync"]["code-commit"]
        for answer in answers
        if answer.get("status") == "complete"
    ]


def _refusal(principal: Principal, name: str) -> PermissionDenied | None:
    corrected = correct_name(name)
    try:
        principal.require(f"deploy:{corrected}", f"deploy {corrected!r}")
    except PermissionDenied as refusal:
        return refusal
    return None


def denied_answer(name: str, refusal: PermissionDenied) -> dict[str, Any]:
    """Return Code Manager's answer for an environment the caller may not deploy."""
    return {
        "environment": name,
        "status": "failed",
        "error": {
            "kind": refusal.kind,
            "msg": str(refusal),
            "details": {"corrected-env-name": correct_name(name)},
        },
    }


def gate_closed_answer(name: str, closed: GateClosed) -> dict[str, Any]:
    """Return Code Manager's answer for an environment refused by its closed gate."""
    return {
        "environment": name,
        "status": "failed",
        "error": {
            "kind": closed.kind,
            "msg": str(closed),
            "details": {
                "corrected-env-name": closed.environment,
                "gate": closed.gate,
                "reason": closed.reason,
            },
        },
    }
