"""Roll an environment back to a version deployed before.

Every deploy of an environment is a commit on ``refs/environments/<env>``
in the storage repository, so its earlier versions are all still there. A
rollback takes one of them (by deploy signature, default the newest whose
tree differs from the current one), commits its tree again on top of the
environment's history (the ref only ever moves forward) and publishes it in
the code-commit like a deploy; file-sync clients pick it up like any other
change. The rollback is recorded in the state branch, in the environment's
summary ``environments/<env>.yaml``, with a subject saying who rolled back
what to which signature, so ``git log`` shows it among the deploys.

The next deploy of the environment's branch replaces the rollback (the
deploy key of a rollback never matches a real one): a rollback is an
emergency brake, not a pin. Use a gate to keep deploys out meanwhile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pygit2

from gitstate.base.hostlock import environment_lock_path, flocked
from gitstate.base.times import now_iso
from gitstate.deploys.queue import SCHEMA_VERSION, environment_path
from gitstate.engine.links import UnsafeSymlink
from gitstate.engine.storage import Published, Storage
from gitstate.errors import BAD_REQUEST, CONFLICT, NOT_FOUND, GitStateError
from gitstate.store.branch import Draft, Identity, Store

log = logging.getLogger(__name__)

DEPLOY_RECORD = ".r10k-deploy.json"
_MAX_HISTORY = 1000
#: Names the deployer can publish (see gitstate.engine.environments): anything else
#: names no environment, and must never reach the lock file's path.
_ENV_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")


class InvalidRollback(GitStateError, ValueError):
    """A rollback request is malformed."""

    status = 400
    kind = BAD_REQUEST

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class RollbackTargetNotFound(GitStateError, LookupError):
    """The environment is not deployed, or has no version matching ``to``.

    Attributes:
        environment: the environment asked for.
        to: the signature asked for (None: "the previous version").
    """

    status = 404
    kind = NOT_FOUND
    public_fields = (("environment", "environment"), ("to", "to"))

    def __init__(self, environment: str, to: str | None, detail: str) -> None:
        self.environment = environment
        self.to = to
        super().__init__(detail)


class UnsafeRollbackTarget(GitStateError, ValueError):
    """The version asked for holds a symlink that would not be written today.

    It was published before its links were resolved as the file system
    will, or under other rules; publishing it again would hand every client
    a version each one refuses.

    Attributes:
        environment: the environment.
        signature: the version's deploy signature.
        why: the refused link, as the check words it.
    """

    status = 409
    kind = CONFLICT
    public_fields = (("environment", "environment"), ("signature", "signature"))

    def __init__(self, environment: str, signature: str, why: str) -> None:
        self.environment = environment
        self.signature = signature
        self.why = why
        super().__init__(
            f"cannot roll {environment} back to {signature[:12]}: {why}; deploy a fixed commit "
            "instead"
        )


@dataclasses.dataclass(frozen=True)
class RollbackRequest:
    """A validated ``POST /code-manager/v1/rollbacks`` body."""

    environment: str
    to: str | None = None

    @classmethod
    def from_json(cls, body: Any) -> RollbackRequest:
        """Check a request body ``{"environment": ..., "to": ...}``.

        Raises:
            InvalidRollback: the body is not of that shape.
        """
        if not isinstance(body, Mapping):
            raise InvalidRollback("the request body must be a JSON object")
        environment = body.get("environment")
        if (
            not isinstance(environment, str)
            or not _ENV_NAME.fullmatch(environment)
            or ".." in environment
        ):
            raise InvalidRollback("'environment' must name an environment")
        to = body.get("to")
        if to is not None and (
            not isinstance(to, str)
            or not 4 <= len(to) <= 64
            or not all(ch in "0123456789abcdef" for ch in to.lower())
        ):
            raise InvalidRollback("'to' must be a deploy signature (4 to 64 hex digits)")
        return cls(environment, to.lower() if to else None)


@dataclasses.dataclass(frozen=True)
class Version:
    """One environment-commit in an environment's history."""

    commit: str
    tree: str
    signature: str
    time: int


class Rollbacks:
    """Roll environments back in storage and record it in the state branch.

    Args:
        storage: the storage repository.
        store: the state branch.
        lockdir: where the deployer's per-environment locks are
            (``DATADIR/locks``), so a rollback never interleaves with a
            deploy of the same environment.
    """

    def __init__(self, storage: Storage, store: Store, lockdir: Path) -> None:
        self.storage = storage
        self.store = store
        self.lockdir = Path(lockdir)

    def history(self, environment: str) -> list[Version]:
        """Return the environment's versions, newest first."""
        repo = self.storage.repo
        tip = self.storage.environment_tip(environment)
        versions: list[Version] = []
        commit = repo[tip].peel(pygit2.Commit) if tip else None
        while commit is not None and len(versions) < _MAX_HISTORY:
            versions.append(
                Version(
                    str(commit.id),
                    str(commit.tree_id),
                    _signature(repo, commit),
                    commit.commit_time,
                )
            )
            commit = commit.parents[0] if commit.parents else None
        return versions

    def rollback(
        self, request: RollbackRequest, *, actor: str, request_id: str | None = None
    ) -> dict[str, Any]:
        """Publish an earlier version of an environment as the current one.

        Returns:
            Code Manager's per-environment answer shape: ``environment``,
            ``status``, ``deploy-signature``, ``file-sync`` commits and
            ``rolled-back-from``.

        Raises:
            RollbackTargetNotFound: the environment is not deployed, or no
                earlier version matches.
            UnsafeRollbackTarget: the version holds a link storage refuses today.
        """
        env = request.environment
        with self._env_lock(env):
            current = self.storage.published_one(env)
            if current is None:
                raise RollbackTargetNotFound(env, request.to, f"environment {env} is not deployed")
            target = self._pick(env, current, request.to)
            if target.tree == current.tree:
                code = self.storage.code_commit()
                return self._answer(env, target, current.commit, code, current, changed=False)
            try:
                self.storage.check_links(pygit2.Oid(hex=target.tree))
            except UnsafeSymlink as ex:
                raise UnsafeRollbackTarget(env, target.signature, str(ex)) from ex
            message = (
                f"Roll back {env} to {target.signature[:12]}\n\n"
                f"Signature: {target.signature}\n"
                f"Rolled-back-from: {current.signature}\n"
                f"Restores: {target.commit}\n"
                f"Actor: {actor}\n"
            )
            env_commit = self.storage.commit_environment(env, pygit2.Oid(hex=target.tree), message)
            code = self.storage.publish(
                {
                    env: Published(
                        env, env_commit, target.tree, target.signature, f"rollback:{target.commit}"
                    )
                },
                f"Roll back {env} to {target.signature[:12]}",
            )
        self._record(env, target, current, env_commit, code, actor, request_id)
        log.info(
            "%s rolled %s back to %s (was %s)",
            actor,
            env,
            target.signature[:12],
            current.signature[:12],
            extra={"notable": True},
        )
        return self._answer(env, target, env_commit, code, current, changed=True)

    def _pick(self, env: str, current: Published, to: str | None) -> Version:
        for version in self.history(env):
            if to is None:
                if version.tree != current.tree:
                    return version
            elif version.signature.startswith(to) or version.commit.startswith(to):
                return version
        if to is None:
            raise RollbackTargetNotFound(env, None, f"{env} has no earlier version to roll back to")
        raise RollbackTargetNotFound(env, to, f"{env} was never deployed at {to}")

    def _record(
        self,
        env: str,
        target: Version,
        current: Published,
        env_commit: str,
        code: str | None,
        actor: str,
        request_id: str | None,
    ) -> None:
        subject = (
            f"{actor} rolled back {env} to {target.signature[:12]} (was {current.signature[:12]})"
        )

        def change(draft: Draft) -> None:
            draft.put(
                environment_path(env),
                {
                    "schema_version": SCHEMA_VERSION,
                    "environment": env,
                    "deployed_at": now_iso(),
                    "signature": target.signature,
                    "environment_commit": env_commit,
                    "code_commit": code,
                    "rollback": {
                        "by": actor,
                        "from_signature": current.signature,
                        "from_environment_commit": current.commit,
                        "restores": target.commit,
                    },
                },
            )
            draft.subject = subject

        self.store.transact(
            change,
            subject=subject,
            operation="deploy.rollback",
            identity=Identity(actor, request_id),
        )

    @staticmethod
    def _answer(
        env: str,
        target: Version,
        env_commit: str,
        code: str | None,
        current: Published,
        *,
        changed: bool,
    ) -> dict[str, Any]:
        return {
            "environment": env,
            "status": "complete",
            "deploy-signature": target.signature,
            "rolled-back-from": current.signature,
            "changed": changed,
            "file-sync": {"environment-commit": env_commit, "code-commit": code},
        }

    def _env_lock(self, env: str) -> contextlib.AbstractContextManager[None]:
        # NOTE(filesync): the same lock the deployer takes for ``env``.
        return flocked(environment_lock_path(self.lockdir, env))


def _signature(repo: pygit2.Repository, commit: pygit2.Commit) -> str:
    """Return the deploy signature of an environment-commit.

    From the ``Signature:`` line the deployer writes in the message, else
    from ``.r10k-deploy.json`` in the tree.
    """
    for line in commit.message.splitlines():
        if line.startswith("Signature:"):
            return line.split(":", 1)[1].strip()
    if DEPLOY_RECORD in commit.tree:
        with contextlib.suppress(ValueError, KeyError):
            return str(json.loads(repo[commit.tree[DEPLOY_RECORD].id].data).get("signature", ""))
    return ""


__all__ = [
    "InvalidRollback",
    "RollbackRequest",
    "RollbackTargetNotFound",
    "Rollbacks",
    "UnsafeRollbackTarget",
]
