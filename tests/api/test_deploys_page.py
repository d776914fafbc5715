"""The page's reads: environments overview, audit trail and its diffs, whoami."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gitstate.auth import Tokens
from gitstate.cli.sample import SampleRepos
from gitstate.config import Config
from tests.support.filesync import Harness, make_config, push

ENVS = "/api/deploys/environments"
AUDIT = "/api/audit"
BROKEN = "mod 'broken', :git => 'file:///nonexistent/broken.git'\n"


def _rows(harness: Harness, **headers: str) -> dict[str, dict[str, Any]]:
    answer = harness.client.simulate_get(ENVS, headers=headers)
    assert answer.status_code == 200, answer.text
    return {row["environment"]: row for row in answer.json["environments"]}


def test_environments_name_commit_branch_who_and_failures(
    harness: Harness, sample: SampleRepos, tmp_path: Path
) -> None:
    (done,) = harness.client.simulate_post(
        "/code-manager/v1/deploys",
        json={"environments": ["feature/login-banner"], "wait": True},
        headers={"X-Gitstate-Actor": "alice"},
    ).json
    assert done["status"] == "complete"
    harness.deploy("nosuchenv")
    rows = _rows(harness)
    row = rows["feature_login_banner"]
    assert row["signature"] == done["deploy-signature"]
    assert row["branch"] == "feature/login-banner"
    assert row["source"] == "puppet"
    assert row["deployed_by"] == "alice"
    assert row["deploy_id"] == done["id"]
    assert row["deploying"] is None and row["queued"] == []
    assert row["last_failure"] is None
    assert row["may_roll_back"] is True
    assert rows["nosuchenv"]["signature"] is None
    failure = rows["nosuchenv"]["last_failure"]
    assert "cannot be found in any source" in failure["error"]["msg"]
    assert rows["nosuchenv"]["may_roll_back"] is False  # nothing to roll back

    # A failure after a good deploy is shown beside the version still deployed.
    push(sample, tmp_path / "work", "feature/login-banner", {"Puppetfile": BROKEN})
    (failed,) = harness.deploy("feature_login_banner")
    assert failed["status"] == "failed"
    row = _rows(harness)["feature_login_banner"]
    assert row["signature"] == done["deploy-signature"]
    assert row["last_failure"]["id"] == failed["id"]


def test_environments_report_each_file_sync_clients_copy(harness: Harness) -> None:
    (done,) = harness.deploy("production")
    harness.client.simulate_post(
        "/file-sync/v1/check-ins",
        json={"name": "web1", "code_commit": done["file-sync"]["code-commit"]},
        headers={"X-Authentication": "s3cret"},
    )
    clients = {c["client"]: c for c in _rows(harness)["production"]["clients"]}
    assert clients["web1"]["status"] == "synced"
    assert clients["web1"]["environment_commit"] == done["file-sync"]["environment-commit"]


def test_rollback_shows_who_rolled_back(
    harness: Harness, sample: SampleRepos, tmp_path: Path
) -> None:
    first = harness.deploy("production")[0]["deploy-signature"]
    push(sample, tmp_path / "work", "production", {"data/common.yaml": "v: 2\n"})
    harness.deploy("production")
    answer = harness.client.simulate_post(
        "/code-manager/v1/rollbacks",
        json={"environment": "production"},
        headers={"X-Gitstate-Actor": "carol"},
    )
    assert answer.status_code == 200, answer.text
    row = _rows(harness)["production"]
    assert row["signature"] == first
    assert row["deployed_by"] == "carol"
    assert row["rollback"]["by"] == "carol"
    assert row["branch"] == "production"


def _auth_config(tmp_path: Path, sample: SampleRepos) -> Config:
    raw = make_config(tmp_path, sample)
    return Config.from_mapping(
        {
            "datadir": str(raw.datadir),
            "state": {"fsync": False},
            "auth": {"enabled": True},
            "sources": {"puppet": {"remote": sample.control_url, "invalid_branches": "correct"}},
            "deploy": {"local_module_sources": [str(sample.modules)]},
        }
    )


def test_reads_need_a_token_and_rollback_follows_deploy_permission(
    tmp_path: Path, sample: SampleRepos
) -> None:
    running = Harness(_auth_config(tmp_path, sample))
    try:
        tokens = Tokens(running.services.store, running.services.config.auth)
        admin = tokens.issue("root", permissions=["admin"], actor="test").token
        deployer = tokens.issue("dee", permissions=["deploy:production"], actor="test").token
        gates = tokens.issue("gina", permissions=["gates:*"], actor="test").token
        client = running.client
        answer = client.simulate_post(
            "/code-manager/v1/deploys",
            json={"environments": ["production", "development"], "wait": True},
            headers={"X-Authentication": admin},
        )
        assert all(entry["status"] == "complete" for entry in answer.json), answer.text

        for path in (ENVS, AUDIT):
            refused = client.simulate_get(path)
            assert refused.status_code == 401
            assert refused.json["reason"] == "Route requires authentication"
        may = {
            row["environment"]: row["may_roll_back"]
            for row in client.simulate_get(ENVS, headers={"X-Authentication": deployer}).json[
                "environments"
            ]
        }
        assert may == {"development": False, "production": True}
        rows = client.simulate_get(ENVS, headers={"X-Authentication": gates}).json
        assert not any(row["may_roll_back"] for row in rows["environments"])
        assert rows["environments"][0]["deployed_by"] == "root"

        me = client.simulate_get("/api/whoami", headers={"X-Authentication": deployer}).json
        assert me["user"] == "dee"
        assert me["permissions"] == ["deploy:production"]
        assert me["authentication"] is True
        nobody = client.simulate_get("/api/whoami").json
        assert nobody["user"] == "anonymous" and nobody["permissions"] == []
        assert (
            client.simulate_get("/api/whoami", headers={"X-Authentication": "x"}).status_code == 401
        )
        # The gates' own reads stay open.
        assert client.simulate_get("/api/gates").status_code == 200
    finally:
        running.close()


def test_whoami_without_authentication_is_an_admin(harness: Harness) -> None:
    me = harness.client.simulate_get("/api/whoami").json
    assert me == {
        "user": "anonymous",
        "permissions": ["admin"],
        "token_id": None,
        "authentication": False,
    }


# -- the audit trail ----------------------------------------------------------------


def _audit(harness: Harness, **params: str) -> dict[str, Any]:
    answer = harness.client.simulate_get(AUDIT, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json


def test_audit_lists_every_commit_newest_first_with_what_it_touched(harness: Harness) -> None:
    client = harness.client
    client.simulate_post(
        "/api/gates/shop/cart",
        json={"environments": ["develop", "live"]},
        headers={"X-Gitstate-Actor": "alice"},
    )
    client.simulate_put(
        "/api/gates/shop/cart/live", json={"state": "closed"}, headers={"X-Gitstate-Actor": "bob"}
    )
    (done,) = harness.deploy("production")
    answer = _audit(harness)
    entries = answer["entries"]
    assert answer["commit"] == harness.services.store.head() == entries[0]["commit"]
    assert answer["next"] is None
    assert len(entries) == answer["scanned"]
    close = next(e for e in entries if e["actor"] == "bob")
    assert close["gates"] == ["shop/cart/live"]
    assert close["environments"] == []
    assert close["paths"] == [{"path": "gates/shop/cart.yaml", "change": "modified"}]
    assert close["link"] == f"/api/audit/{close['commit']}"
    create = next(e for e in entries if e["actor"] == "alice")
    assert create["gates"] == ["shop/cart/develop", "shop/cart/live"]
    deploys = [e for e in entries if done["id"] in e["deploys"]]
    assert {e["operation"] for e in deploys} >= {"deploy.request", "deploy.start", "deploy.finish"}
    assert all("production" in e["environments"] for e in deploys)
    times = [e["time"] for e in entries]
    assert times == sorted(times, reverse=True)


def test_audit_filters_and_pages(harness: Harness) -> None:
    client = harness.client
    client.simulate_post("/api/gates/shop/cart", json={"environments": ["develop", "live"]})
    client.simulate_post("/api/gates/infra/dns", json={"environments": ["live"]})
    for state in ("closed", "open", "closed"):
        client.simulate_put(
            "/api/gates/shop/cart/live", json={"state": state}, headers={"X-Gitstate-Actor": "bob"}
        )
    harness.deploy("production")

    by_bob = _audit(harness, actor="bob")["entries"]
    assert len(by_bob) == 3 and {e["actor"] for e in by_bob} == {"bob"}
    assert len(_audit(harness, gate="shop/cart/live")["entries"]) == 4
    assert len(_audit(harness, gate="shop")["entries"]) == 4
    assert [e["gates"] for e in _audit(harness, gate="infra/dns")["entries"]] == [
        ["infra/dns/live"]
    ]
    live = _audit(harness, environment="live")["entries"]
    assert len(live) == 5  # two creations and three changes of a "live" gate
    production = _audit(harness, environment="production")["entries"]
    assert production and all("production" in e["environments"] for e in production)
    everything = _audit(harness)["entries"]
    newest = everything[0]["time"]
    assert _audit(harness, since=newest)["entries"][0]["commit"] == everything[0]["commit"]
    assert _audit(harness, until="2000-01-01T00:00:00Z")["entries"] == []
    assert _audit(harness, since="2999-01-01T00:00:00+01:00")["entries"] == []

    page = _audit(harness, limit="2")
    assert [e["commit"] for e in page["entries"]] == [e["commit"] for e in everything[:2]]
    assert page["next"] == everything[1]["commit"]
    rest = _audit(harness, before=page["next"], limit="200")
    assert [e["commit"] for e in rest["entries"]] == [e["commit"] for e in everything[2:]]
    assert rest["next"] is None and rest["commit"] is None


def test_audit_pages_stop_at_the_scan_budget(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gitstate.trail.SCAN_BUDGET", 3)
    for env in ("a", "b", "c", "d"):
        harness.client.simulate_post(f"/api/gates/g/{env}", json={"environments": ["x"]})
    first = _audit(harness, actor="nobody")
    assert first["entries"] == [] and first["scanned"] == 3 and first["next"]
    second = _audit(harness, actor="nobody", before=first["next"])
    assert second["scanned"] == 1 and second["next"] is None


def test_audit_detail_gives_each_record_before_and_after(harness: Harness) -> None:
    client = harness.client
    client.simulate_post("/api/gates/shop/cart", json={"environments": ["live"]})
    client.simulate_put("/api/gates/shop/cart/live", json={"state": "closed", "message": "freeze"})
    newest = _audit(harness, limit="1")["entries"][0]
    answer = client.simulate_get(newest["link"])
    assert answer.status_code == 200, answer.text
    detail = answer.json
    assert detail["commit"] == newest["commit"]
    assert detail["subject"] == newest["subject"]
    (change,) = detail["changes"]
    assert change["path"] == "gates/shop/cart.yaml" and change["change"] == "modified"
    assert "state: open" in change["before"] and "state: closed" in change["after"]
    assert "-      state: open" in change["diff"] or "-    state: open" in change["diff"]
    assert "+" in change["diff"] and "freeze" in change["diff"]
    oldest = _audit(harness)["entries"][-1]
    first = client.simulate_get(f"{AUDIT}/{oldest['commit'][:12]}").json
    assert first["parent"] is None
    assert all(c["change"] == "added" and c["before"] is None for c in first["changes"])


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"bogus": "1"}, "bogus"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"since": "2026-02-01", "until": "2026-01-01"}, "since"),
        ({"limit": "0"}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"before": "HEAD~1"}, "before"),
        ({"gate": "a/b/c/d"}, "gate"),
        ({"environment": "../x"}, "environment"),
    ],
)
def test_audit_refuses_bad_parameters(harness: Harness, params: dict, parameter: str) -> None:
    answer = harness.client.simulate_get(AUDIT, params=params)
    assert answer.status_code == 400, answer.text
    assert answer.json["status"] == "error"
    assert answer.json["parameter"] == parameter


def test_audit_refuses_a_repeated_parameter(harness: Harness) -> None:
    answer = harness.client.simulate_get(AUDIT, query_string="actor=a&actor=b")
    assert answer.status_code == 400
    assert answer.json["parameter"] == "actor"


@pytest.mark.parametrize(
    ("commit", "status"),
    [
        ("nothex", 400),
        ("abc", 400),
        ("A" * 40, 400),
        ("0" * 41, 400),
        ("HEAD", 400),
        ("0123456789abcdef0123456789abcdef01234567", 404),
    ],
)
def test_audit_detail_refuses_what_is_no_state_commit(
    harness: Harness, commit: str, status: int
) -> None:
    harness.client.simulate_post("/api/gates/shop/cart", json={"environments": ["live"]})
    answer = harness.client.simulate_get(f"{AUDIT}/{commit}")
    assert answer.status_code == status, answer.text
    assert answer.json["status"] == "error"


def test_audit_detail_refuses_a_commit_of_another_branch(harness: Harness) -> None:
    harness.client.simulate_post("/api/gates/shop/cart", json={"environments": ["live"]})
    (done,) = harness.deploy("production")
    # A commit of the storage repository is no state commit.
    answer = harness.client.simulate_get(f"{AUDIT}/{done['file-sync']['code-commit']}")
    assert answer.status_code == 404
    paged = harness.client.simulate_get(AUDIT, params={"before": done["deploy-signature"]})
    assert paged.status_code == 404
