"""Gates guard deploys: a closed gate stops an environment's deploys.

Each environment maps to one gate, by default group ``code``, service = the
name of the source the environment comes from, environment = the
environment's name (``deploy.gates`` in the config changes the templates).
An environment whose gate does not exist is not guarded.

* A deploy asked for through the API while the gate is closed is refused
  with the ``gate-closed`` kind and the reason.
* Deploys queued by webhooks and hooks wait in the queue, their reason
  visible in the status, and run when the gate opens; the deploy resolves
  the branch when it runs, so the latest commit wins.
* A running deploy holds a ticket on its gate, so a pipeline doing
  test-and-set on the same gate sees the deploy and waits for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from gitstate.deploys.queue import Held
from gitstate.errors import GitStateError
from gitstate.gates.records import EnvironmentNotFound, GateNotFound
from gitstate.gates.service import Gates
from gitstate.gates.tickets import TicketNotFound
from gitstate.gates.validation import InvalidName
from gitstate.settings import GuardSettings
from gitstate.store.branch import Draft

GATE_CLOSED = "puppetlabs.code-manager/gate-closed"


class GateClosed(GitStateError):
    """An environment's gate is closed, so it may not be deployed now.

    Attributes:
        environment: the environment.
        gate: ``group/service/environment`` of its gate.
        reason: why the gate is closed.
    """

    status = 409
    kind = GATE_CLOSED
    public_fields = (("gate", "gate"), ("reason", "reason"))

    def __init__(self, environment: str, gate: str, reason: str) -> None:
        self.environment = environment
        self.gate = gate
        self.reason = reason
        super().__init__(f"gate {gate} is closed ({reason}); {environment} is not deployed")


class DeployGuard:
    """Look up and hold the gate of an environment.

    Args:
        gates: the gates service.
        settings: which gate guards which environment.
        prefixes: source name → the prefix its environments carry ("" for
            none), to tell which source an environment comes from.
    """

    def __init__(self, gates: Gates, settings: GuardSettings, prefixes: Mapping[str, str]) -> None:
        self.gates = gates
        self.settings = settings
        self._prefixes = dict(prefixes)

    def _source_of(self, environment: str) -> str:
        prefixed = [
            name
            for name, prefix in self._prefixes.items()
            if prefix and environment.startswith(prefix)
        ]
        if prefixed:
            return max(prefixed, key=lambda name: len(self._prefixes[name]))
        plain = [name for name, prefix in self._prefixes.items() if not prefix]
        return plain[0] if plain else "puppet"

    def gate_of(self, environment: str) -> tuple[str, str, str]:
        """Return ``(group, service, environment)`` of the gate guarding ``environment``."""
        values = {"environment": environment, "source": self._source_of(environment)}
        return (
            self.settings.group.format(**values),
            self.settings.service.format(**values),
            self.settings.environment.format(**values),
        )

    def blocked(self, environment: str, holder: str | None = None) -> GateClosed | None:
        """Return why ``environment`` may not be deployed now, or None.

        ``holder`` is a ticket that may hold the gate itself (the deploy's own).
        """
        if not self.settings.enabled:
            return None
        group, service, env = self.gate_of(environment)
        try:
            reason = self.gates.why_closed(group, service, env, holder=holder)
        except (GateNotFound, EnvironmentNotFound, InvalidName):
            return None
        if reason is None:
            return None
        return GateClosed(environment, f"{group}/{service}/{env}", reason)

    def acquire(self, environment: str, *, actor: str, link: str) -> str | None:
        """Take the environment's gate with a new ticket for a running deploy.

        Returns the ticket id, or None when the environment is not guarded.

        Raises:
            GateClosed: the gate is closed or held by someone else.
        """
        if not self.settings.enabled:
            return None
        group, service, env = self.gate_of(environment)
        try:
            answer = self.gates.test_and_set({group: {service: env}}, link=link, actor=actor)
        except (GateNotFound, EnvironmentNotFound, InvalidName):
            return None
        if answer.body.get("status") != "ok":
            closed = self.blocked(environment)
            reason = closed.reason if closed is not None else "denied"
            raise GateClosed(environment, f"{group}/{service}/{env}", reason)
        return str(answer.body["ticket"]["id"])

    def take_on(self, draft: Draft, environment: str, *, actor: str, link: str) -> str | None:
        """Take the environment's gate inside ``draft`` (a deploy claim's commit).

        Returns the new ticket's id, or None when the environment is not
        guarded.

        Raises:
            Held: the gate is closed or held by another ticket; the reason
                is what the status shows.
        """
        if not self.settings.enabled:
            return None
        group, service, env = self.gate_of(environment)
        gates = self.gates
        now = gates.clock()
        try:
            # A name no gate can have (too long, say) guards nothing; the
            # deploy goes on and the engine says what is wrong with it.
            wanted = gates.wanted({group: {service: env}})
            answer = gates.take_on(draft, now, wanted, link=link, actor=actor)
        except (GateNotFound, EnvironmentNotFound, InvalidName):
            return None
        if answer.get("status") != "ok":
            reason = gates.why_closed_on(draft, now, group, service, env) or "denied"
            raise Held(str(GateClosed(environment, f"{group}/{service}/{env}", reason)))
        return str(answer["ticket"]["id"])

    def release_on(self, draft: Draft, ticket_id: str, *, actor: str) -> None:
        """Give a deploy's ticket back inside ``draft`` (the finishing commit)."""
        self.gates.release_on(draft, ticket_id, actor=actor)

    def release(self, ticket_id: str | None, *, actor: str) -> None:
        """Give a deploy's ticket back (a missing or expired one is fine)."""
        if ticket_id:
            with contextlib.suppress(TicketNotFound):
                self.gates.release(ticket_id, actor=actor)
