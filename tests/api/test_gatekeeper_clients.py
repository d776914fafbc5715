"""What gatekeeper's clients call besides the gate API: status pages and page paths (issue 20)."""

from __future__ import annotations

from pathlib import Path

import falcon.testing
import pytest

from gitstate.config import Config
from gitstate.deploys.worker import hold_slot
from gitstate.services import Services
from gitstate.web.app import create_app
from tests.support.client import Client


@pytest.fixture
def app(tmp_path: Path) -> tuple[falcon.testing.TestClient, Services]:
    config = Config.from_mapping(
        {
            "datadir": str(tmp_path / "data"),
            "state": {"fsync": False},
            "auth": {"enabled": False},
            "deploy": {"pool_size": 2},
            "file_sync": {"clients": [{"name": "compile-1", "live": str(tmp_path / "live")}]},
        }
    )
    services = Services(config)
    return Client(create_app(services=services)), services


@pytest.mark.parametrize(
    ("path", "headers"),
    [("/internal/status.json", {}), ("/internal/status", {"Accept": "application/json"})],
)
def test_status_has_gatekeepers_shape(app, path: str, headers: dict[str, str]) -> None:
    client, services = app
    client.simulate_post("/api/gates/g/s", json={"environments": ["live"]})
    result = client.simulate_get(path, headers=headers)
    assert result.status_code == 200
    document = result.json
    assert set(document) >= {"application", "system", "team", "serviceSpecs"}
    application = document["application"]
    assert application["status"] == "OK"
    assert application["name"] == "gitstate"
    assert application["commit"] == services.store.head()
    assert set(application["statusDetails"]) == {"state", "deploy-workers", "file-sync"}
    assert document["system"]["uptime"] >= 0
    assert document["system"]["port"] == 8170


def test_status_lists_the_state_commit_workers_and_clients(app, tmp_path: Path) -> None:
    client, services = app
    client.simulate_post("/api/gates/g/s", json={"environments": ["live"]})
    with hold_slot(tmp_path / "data" / "locks", 1):
        document = client.simulate_get("/internal/status.json").json
    assert document["state"] == {"ref": "refs/heads/state", "commit": services.store.head()}
    assert [(w["slot"], w["alive"], w["deploying"]) for w in document["deploy-workers"]] == [
        (0, False, []),
        (1, True, []),
    ]
    (name,) = document["file-sync-clients"]
    assert name == "compile-1"
    assert document["file-sync-clients"][name]["last_check_in_time"] is None


def test_status_warns_when_deploys_wait_for_no_worker(app) -> None:
    client, services = app
    services.code_manager.queue.request([("production", "production")], actor="alice")
    application = client.simulate_get("/internal/status.json").json["application"]
    assert application["status"] == "WARNING"
    assert application["statusDetails"]["deploy-workers"]["status"] == "WARNING"
    assert "1 deploys queued" in application["statusDetails"]["deploy-workers"]["message"]


def test_status_page_for_browsers_is_html(app) -> None:
    client, _ = app
    result = client.simulate_get("/internal/status", headers={"Accept": "text/html"})
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/html")
    assert "&quot;statusDetails&quot;" in result.text


@pytest.mark.parametrize("path", ["/gates", "/gates/", "/index"])
def test_gatekeepers_page_paths_lead_to_the_page(app, path: str) -> None:
    client, _ = app
    result = client.simulate_get(path, query_string="tab=shop")
    assert result.status_code == 301
    assert result.headers["location"] == "/?tab=shop"
    assert client.simulate_get(result.headers["location"].split("?")[0]).status_code == 200
