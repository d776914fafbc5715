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
from gitstate.gates.service import Gates
from gitstate.store.branch import Store
from gitstate.store.rewind import BranchRewound
from gitstate.trail import AuditTrail


def open_store(config: Config) -> Store:
    """Open the state store with the configured durability, deadline and lock age."""
    return Store(
        config.state_repo,
        fsync=config.state.fsync,
        deadline=config.state.deadline,
        stale_lock_after=config.state.stale_lock_after,
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
        return {"status": "ok"}, self.store.head()

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
