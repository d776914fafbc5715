"""Permission and gate policy of deploys and rollbacks lives in the Code Manager service.

The web resources only hand over the caller's principal; these tests call
the service directly, with no HTTP, so a check that moved back into a
handler would leave them failing. A rollback refused by its closed gate is
also checked through the app, since no other test closes a gate before a
rollback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gitstate.auth import PermissionDenied, Principal
from gitstate.codemanager.service import DeployRequest
from gitstate.config import Config
from gitstate.deploys.guard import GateClosed
from gitstate.services import Services
from gitstate.web.app import create_app
from tests.support.client import Client


class ClosedGates:
    """A deploy guard whose every gate is closed."""

    def blocked(self, environment: str, holder: str | None = None) -> GateClosed:
        return GateClosed(environment, f"code/main/{environment}", "closed by hand")


@pytest.fixture
def services(tmp_path: Path) -> Services:
    config = Config.from_mapping(
        {"datadir": str(tmp_path / "data"), "state": {"fsync": False}, "auth": {"enabled": False}}
    )
    return Services(config)


def alice(*permissions: str) -> Principal:
    return Principal("alice", frozenset(permissions), token_id="t1")


def test_deploy_all_needs_every_environment(services: Services) -> None:
    request = DeployRequest.from_json({"deploy-all": True})
    with pytest.raises(PermissionDenied) as refused:
        services.code_manager.submit(request, principal=alice("deploy:production"), actor="alice")
    assert refused.value.permission == "deploy:*"


def test_environments_not_allowed_are_answered_failed(services: Services) -> None:
    request = DeployRequest.from_json({"environments": ["Feature-X"]})
    answer: list[dict[str, Any]] = services.code_manager.submit(
        request, principal=alice("deploy:production"), actor="alice"
    )
    assert answer == [
        {
            "environment": "Feature-X",
            "status": "failed",
            "error": {
                "kind": "puppetlabs.rbac/permission-denied",
                "msg": "alice is not allowed to deploy 'Feature_X' "
                "(needs permission 'deploy:Feature_X')",
                "details": {"corrected-env-name": "Feature_X"},
            },
        }
    ]


def test_rollback_needs_the_deploy_permission(services: Services) -> None:
    with pytest.raises(PermissionDenied) as refused:
        services.code_manager.rollback(
            {"environment": "production"}, principal=alice("deploy:testing"), actor="alice"
        )
    assert refused.value.permission == "deploy:production"


def test_rollback_is_refused_while_the_gate_is_closed(services: Services) -> None:
    services.code_manager.guard = ClosedGates()  # type: ignore[assignment]
    with pytest.raises(GateClosed):
        services.code_manager.rollback(
            {"environment": "production"}, principal=alice("deploy:production"), actor="alice"
        )
    client = Client(create_app(services.config, services=services))
    result = client.simulate_post("/code-manager/v1/rollbacks", json={"environment": "production"})
    assert result.status_code == 409
    assert result.json == {
        "kind": "puppetlabs.code-manager/gate-closed",
        "msg": "gate code/main/production is closed (closed by hand); production is not deployed",
        "details": {"gate": "code/main/production", "reason": "closed by hand"},
    }
