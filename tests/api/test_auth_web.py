"""Tokens on the HTTP API: who may write what, and the errors when not."""

from __future__ import annotations

from pathlib import Path

import falcon.testing
import pytest

from gitstate.config import Config
from gitstate.services import Services
from gitstate.web.app import create_app
from tests.support.client import Client
from tests.support.helpers import git

CM = "/code-manager/v1"


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


def _app(tmp_path: Path, **auth: object) -> tuple[falcon.testing.TestClient, Services, Clock]:
    config = Config.from_mapping(
        {
            "datadir": str(tmp_path / "data"),
            "state": {"fsync": False},
            "auth": {"enabled": True, **auth},
            "sources": {"puppet": {"remote": str(tmp_path / "nowhere.git")}},
        }
    )
    services = Services(config)
    clock = Clock()
    services.tokens.clock = clock
    return Client(create_app(services=services)), services, clock


@pytest.fixture
def app(tmp_path: Path) -> tuple[falcon.testing.TestClient, Services, Clock]:
    return _app(tmp_path)


def _token(services: Services, user: str, *permissions: str, lifetime: str = "1h") -> str:
    return services.tokens.issue(
        user, permissions=permissions, lifetime=lifetime, actor="root"
    ).token


def test_writes_without_token_are_refused_and_write_nothing(app) -> None:
    client, services, _ = app
    head = services.store.head()
    result = client.simulate_post("/api/gates/shop/cart", json={"environments": ["live"]})
    assert result.status_code == 401
    assert result.json["kind"] == "puppetlabs.rbac/user-unauthenticated"
    assert result.json["status"] == "error"
    assert result.json["reason"] == "Route requires authentication"
    assert services.store.head() == head
    deploy = client.simulate_post(f"{CM}/deploys", json={"environments": ["production"]})
    assert deploy.status_code == 401
    assert deploy.json["kind"] == "puppetlabs.rbac/user-unauthenticated"


def test_reads_are_open_unless_configured(app, tmp_path: Path) -> None:
    client, _, _ = app
    assert client.simulate_get("/api/gates/g/s").status_code == 404  # open, and absent
    closed, _, _ = _app(tmp_path / "other", read_requires_token=True)
    assert closed.simulate_get("/api/gates/g/s").status_code == 401
    assert closed.simulate_get(f"{CM}/deploys/status").status_code == 401
    assert closed.simulate_get("/internal/health").status_code == 200


# -- each API family reads as its product does (issue 20) ---------------------------------


def test_code_manager_reads_need_a_token_as_code_manager_asks(app) -> None:
    client, services, _ = app
    refused = client.simulate_get(f"{CM}/deploys/status")
    assert refused.status_code == 401
    assert refused.json["kind"] == "puppetlabs.rbac/user-unauthenticated"
    token = _token(services, "viewer")
    assert client.simulate_get(f"{CM}/deploys/status", params={"token": token}).status_code == 200
    header = {"X-Authentication": token}
    assert client.simulate_get(f"{CM}/deploys/status", headers=header).status_code == 200


def test_gatekeeper_reads_and_page_are_open_as_gatekeeper_has_them(app) -> None:
    client, _, _ = app
    assert client.simulate_get("/api/gates/g/s").json["reason"] == "Service or Group not found"
    assert client.simulate_get("/api/holidays/").status_code == 200
    assert client.simulate_get("/internal/status.json").status_code == 200
    assert client.simulate_get("/").status_code == 200


def test_each_family_can_be_configured(tmp_path: Path) -> None:
    client, _, _ = _app(tmp_path, anonymous_reads={"code_manager": True, "gates": False})
    assert client.simulate_get(f"{CM}/deploys/status").status_code == 200
    assert client.simulate_get("/api/holidays/").status_code == 401
    assert client.simulate_get("/internal/status.json").status_code == 401
    assert client.simulate_get("/").status_code == 200  # the page carries no data


def test_token_user_is_the_actor_of_the_commit(app, tmp_path: Path) -> None:
    client, services, _ = app
    token = _token(services, "alice", "gates:shop")
    created = client.simulate_post(
        "/api/gates/shop/cart",
        json={"environments": ["live"]},
        headers={"X-Authentication": token, "X-Gitstate-Actor": "mallory"},
    )
    assert created.status_code == 200
    author = git("log", "-1", "--format=%an", "state", cwd=tmp_path / "data" / "state.git").strip()
    assert author == "alice"
    # ?token= works as well as the header.
    closed = client.simulate_put(
        "/api/gates/shop/cart/live", json={"state": "closed"}, params={"token": token}
    )
    assert closed.status_code == 200


def test_permission_denied_names_the_permission(app) -> None:
    client, services, _ = app
    token = _token(services, "alice", "gates:shop")
    head = services.store.head()
    result = client.simulate_post(
        "/api/gates/ops/db", json={"environments": ["live"]}, headers={"X-Authentication": token}
    )
    assert result.status_code == 403
    assert result.json["kind"] == "puppetlabs.rbac/permission-denied"
    assert "gates:ops" in result.json["msg"]
    assert services.store.head() == head
    tas = client.simulate_put(
        "/api/gates", json={"gates": {"ops": {"db": "live"}}}, headers={"X-Authentication": token}
    )
    assert tas.status_code == 403
    holidays = client.simulate_post(
        "/api/holidays/", json={"holidays": []}, headers={"X-Authentication": token}
    )
    assert holidays.status_code == 403


def test_releasing_a_ticket_needs_every_group_it_holds(app) -> None:
    client, services, _ = app
    admin = {"X-Authentication": _token(services, "root", "gates:*")}
    shop_only = {"X-Authentication": _token(services, "alice", "gates:shop")}
    for group, service in (("shop", "cart"), ("ops", "db")):
        created = client.simulate_post(
            f"/api/gates/{group}/{service}", json={"environments": ["live"]}, headers=admin
        )
        assert created.status_code == 200
    both = client.simulate_put(
        "/api/gates",
        json={"gates": {"shop": {"cart": "live"}, "ops": {"db": "live"}}},
        headers=admin,
    )
    ticket = both.json["ticket"]["id"]
    head = services.store.head()
    refused = client.simulate_delete(f"/api/tickets/{ticket}", headers=shop_only)
    assert refused.status_code == 403
    assert "gates:ops" in refused.json["msg"]
    assert services.store.head() == head
    holders = client.simulate_get("/api/gates/ops/db/live").json["queue"]
    assert [item["id"] for item in holders] == [ticket]
    released = client.simulate_delete(f"/api/tickets/{ticket}", headers=admin)
    assert released.status_code == 200
    assert client.simulate_get("/api/gates/ops/db/live").json["queue"] == []
    # A ticket of the caller's own group is theirs to release.
    own = client.simulate_put(
        "/api/gates", json={"gates": {"shop": {"cart": "live"}}}, headers=shop_only
    )
    mine = own.json["ticket"]["id"]
    assert client.simulate_delete(f"/api/tickets/{mine}", headers=shop_only).status_code == 200


def test_expired_revoked_and_unknown_tokens(app) -> None:
    client, services, clock = app
    token = _token(services, "bob", "admin", lifetime="10m")
    clock.now += 11 * 60
    expired = client.simulate_post(
        "/api/gates/shop/cart", json={"environments": ["live"]}, headers={"X-Authentication": token}
    )
    assert expired.status_code == 401
    assert expired.json["kind"] == "puppetlabs.rbac/token-expired"
    assert expired.json["msg"] == "The provided token has expired."
    fresh = services.tokens.issue("bob", permissions=["admin"], actor="root")
    services.tokens.revoke(fresh.token_id, actor="root")
    revoked = client.simulate_post(
        "/api/gates/shop/cart",
        json={"environments": ["live"]},
        headers={"X-Authentication": fresh.token},
    )
    assert revoked.status_code == 401
    assert revoked.json["kind"] == "puppetlabs.rbac/token-revoked"
    unknown = client.simulate_get(f"{CM}/deploys/status", headers={"X-Authentication": "gst_nope"})
    assert unknown.status_code == 401
    assert unknown.json["kind"] == "puppetlabs.rbac/invalid-token"


def test_deploy_permission_per_environment(app) -> None:
    client, services, _ = app
    token = _token(services, "carol", "deploy:production")
    result = client.simulate_post(
        f"{CM}/deploys",
        json={"environments": ["development", "production"]},
        headers={"X-Authentication": token},
    )
    assert result.status_code == 200
    by_env = {entry["environment"]: entry for entry in result.json}
    assert by_env["development"]["status"] == "failed"
    assert by_env["development"]["error"]["kind"] == "puppetlabs.rbac/permission-denied"
    assert by_env["production"]["status"] == "queued"
    status = client.simulate_get(f"{CM}/deploys/status", headers={"X-Authentication": token})
    queued = status.json["deploys-status"]["queued"]
    assert [entry["environment"] for entry in queued] == ["production"]
    everything = client.simulate_post(
        f"{CM}/deploys", json={"deploy-all": True}, headers={"X-Authentication": token}
    )
    assert everything.status_code == 403
    assert "deploy:*" in everything.json["msg"]


def test_webhook_token_permissions_apply_and_the_actor_is_the_webhook(app, tmp_path: Path) -> None:
    client, services, _ = app
    token = _token(services, "ci-bot", "deploy:dev")
    payload = {
        "ref": "refs/heads/dev",
        "before": "1" * 40,
        "after": "2" * 40,
        "deleted": False,
        "repository": {"name": "control"},
    }
    missing = client.simulate_post(f"{CM}/webhook", params={"type": "github"}, json=payload)
    assert missing.status_code == 401
    ok = client.simulate_post(
        f"{CM}/webhook",
        params={"type": "github", "token": token},
        json=payload,
        headers={"X-GitHub-Event": "push"},
    )
    assert ok.status_code == 200
    reader = {"X-Authentication": token}
    queued = client.simulate_get(f"{CM}/deploys/status", headers=reader).json
    assert [entry["environment"] for entry in queued["deploys-status"]["queued"]] == ["dev"]
    author = git("log", "-1", "--format=%an", "state", cwd=tmp_path / "data" / "state.git").strip()
    assert author == "webhook:github"  # docs/webhooks.md; the token only admits and limits
    # A branch the token may not deploy is not queued.
    other = dict(payload, ref="refs/heads/production")
    client.simulate_post(
        f"{CM}/webhook",
        params={"type": "github", "token": token},
        json=other,
        headers={"X-GitHub-Event": "push"},
    )
    queued = client.simulate_get(f"{CM}/deploys/status", headers=reader).json
    assert [entry["environment"] for entry in queued["deploys-status"]["queued"]] == ["dev"]


def test_webhook_authentication_off_does_not_open_a_type_without_secret(tmp_path: Path) -> None:
    # Until issue 18, turning webhook authentication off opened every type
    # without a secret to anyone; now a token or the type's secret must vouch.
    client, services, _ = _app(tmp_path, webhook_authentication=False)
    payload = {"ref": "refs/heads/dev", "after": "2" * 40, "deleted": False}
    result = client.simulate_post(
        f"{CM}/webhook", params={"type": "github"}, json=payload, headers={"X-GitHub-Event": "push"}
    )
    assert result.status_code == 401
    assert result.json["kind"] == "puppetlabs.code-manager/webhook-unauthenticated"
    assert "webhooks.github.secret" in result.json["details"]["configure"]
    token = _token(services, "ci-bot", "deploy:dev")
    result = client.simulate_post(
        f"{CM}/webhook",
        params={"type": "github", "token": token},
        json=payload,
        headers={"X-GitHub-Event": "push"},
    )
    assert result.status_code == 200
    assert result.json == {"status": "OK"}
    # Other writes still need a token.
    assert client.simulate_post(f"{CM}/deploys", json={"environments": ["dev"]}).status_code == 401


def test_rollback_needs_deploy_permission(app) -> None:
    client, services, _ = app
    body = {"environment": "production"}
    assert client.simulate_post(f"{CM}/rollbacks", json=body).status_code == 401
    token = _token(services, "dave", "deploy:development")
    refused = client.simulate_post(
        f"{CM}/rollbacks", json=body, headers={"X-Authentication": token}
    )
    assert refused.status_code == 403
    assert "deploy:production" in refused.json["msg"]
    allowed = _token(services, "erin", "deploy:production")
    # Permitted: it gets past auth (and finds nothing to roll back to).
    missing = client.simulate_post(
        f"{CM}/rollbacks", json=body, headers={"X-Authentication": allowed}
    )
    assert missing.status_code == 404
