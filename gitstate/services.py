"""The service layer's front door: one object holding every service.

``gitstate.web`` and the CLI build one :class:`Services` per process and call
only what it offers; they never touch the store directly (see
docs/architecture.md).
"""

from __future__ import annotations

import time
from typing import Any

from gitstate.auth import Tokens
from gitstate.codemanager.internal_status import internal_status
from gitstate.codemanager.service import CodeManager
from gitstate.codemanager.webhooks import Webhooks
from gitstate.config import Config
from gitstate.deploys.guard import DeployGuard
from gitstate.engine.sources import Sources
from gitstate.engine.storage import CODE_REF
from gitstate.gates.service import Gates
from gitstate.store.branch import DEFAULT_REF, Store
from gitstate.store.rewind import BranchRewound
from gitstate.store.turns import waiting_refspec
from gitstate.store.upstream import SharedRef
from gitstate.trail import AuditTrail


def open_store(config: Config) -> Store:
    """Open the state store with the configured durability, deadline, lock age and remote."""
    upstream = None
    if config.state.remote:
        upstream = SharedRef(
            config.state_repo,
            config.state.remote,
            DEFAULT_REF,
            timeout=config.state.remote_timeout,
            also=(waiting_refspec(),),
        )
    return Store(
        config.state_repo,
        fsync=config.state.fsync,
        deadline=config.state.deadline,
        stale_lock_after=config.state.stale_lock_after,
        upstream=upstream,
    )


class Services:
    """The services of one gitstate process, sharing one state store."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.started_at = time.time()
        self.store = open_store(config)
        self.tokens = Tokens(self.store, config.auth)
        self.gates = Gates(self.store, config.gates)
        self.deploy_guard = DeployGuard(
            self.gates,
            config.deploy.gates,
            {source.name: source.prefix_text for source in Sources.from_settings(config.sources)},
        )
        self.code_manager = CodeManager(config, self.store, guard=self.deploy_guard)
        self.file_sync = self.code_manager.file_sync
        self.audit = AuditTrail(self.store)
        self.webhooks = Webhooks(self.code_manager, self.store, config.webhooks, hooks=config.hooks)
        #: The refs this node shares through a git server (none on a single server).
        self.shared_refs: list[SharedRef] = []
        if self.store.upstream is not None:
            self.shared_refs.append(self.store.upstream)
        if config.storage.remote:
            self.shared_refs.append(
                SharedRef(config.datadir / "storage.git", config.storage.remote, CODE_REF)
            )

    def health(self) -> tuple[dict[str, Any], str | None]:
        """Report that the process can read the state branch and write on it.

        Returns gatekeeper's body (``{"status": "ok"}``) and the state commit
        the process sees (None before the first write).

        Raises:
            BranchRewound: the state branch moved back behind gitstate's
                back, and writes are refused until an operator acts (a 503,
                so a load balancer or monitor sees it).
        """
        rewind = self.store.rewound()
        if rewind is not None:
            raise BranchRewound(rewind.ref, rewind.expected, rewind.found)
        body: dict[str, Any] = {"status": "ok"}
        # A node cut off from the git server still answers reads, so it
        # stays in service (200), but says it cannot write (docs/cluster.md).
        cut_off = [
            seen.as_dict(shared.shown_url)
            for shared in self.shared_refs
            if (seen := shared.reachability()) is not None and not seen.reachable
        ]
        if cut_off:
            body["status"] = "read-only"
            body["unreachable"] = cut_off
        return body, self.store.head()

    def internal_status(self) -> dict[str, Any]:
        """Return gatekeeper's ``/internal/status.json`` document, with gitstate's parts.

        See :mod:`gitstate.codemanager.internal_status`: the state commit,
        the deploy workers and the file-sync clients, each also summed up in
        ``application.statusDetails``.
        """
        return internal_status(
            self.config,
            self.store,
            self.code_manager.queue,
            self.file_sync,
            started_at=self.started_at,
        )
