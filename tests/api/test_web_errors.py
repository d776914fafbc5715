"""Every answer, including errors Falcon raises itself, is JSON with a reason."""

from __future__ import annotations

from pathlib import Path

import falcon.testing
import pytest

from gitstate.config import Config
from gitstate.web.app import create_app
from tests.support.client import Client


@pytest.fixture
def client(tmp_path: Path) -> falcon.testing.TestClient:
    config = Config.from_mapping({"datadir": str(tmp_path / "data"), "state": {"fsync": False}})
    return Client(create_app(config))


def test_health_is_ok(client: falcon.testing.TestClient) -> None:
    result = client.simulate_get("/internal/health")
    assert result.status_code == 200
    assert result.json == {"status": "ok"}
    assert result.headers["x-gitstate-state"] == "none"


def test_unknown_path_is_json_404_even_when_xml_is_asked(client: falcon.testing.TestClient) -> None:
    result = client.simulate_get("/nowhere", headers={"Accept": "application/xml"})
    assert result.status_code == 404
    assert result.headers["content-type"].startswith("application/json")
    assert result.json["status"] == "error"
    assert result.json["reason"]


def test_wrong_method_is_json_405(client: falcon.testing.TestClient) -> None:
    result = client.simulate_delete("/internal/health")
    assert result.status_code == 405
    assert result.json["status"] == "error"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/code-manager/v1/deploys", ["POST", "OPTIONS"]),
        ("PUT", "/code-manager/v1/deploys/status", ["GET", "OPTIONS"]),
    ],
)
def test_wrong_method_under_code_manager_is_in_code_managers_shape(
    tmp_path: Path, method: str, path: str, allowed: list[str]
) -> None:
    config = Config.from_mapping({"datadir": str(tmp_path / "data"), "auth": {"enabled": False}})
    result = falcon.testing.TestClient(create_app(config)).simulate_request(method, path)
    assert result.status_code == 405
    assert result.json == {
        "kind": "puppetlabs.code-manager/method-not-allowed",
        "msg": "405 Method Not Allowed",
        "details": {"allowed": allowed},
    }
    assert result.headers["allow"] == ", ".join(allowed)


def test_unknown_path_under_code_manager_is_in_code_managers_shape(
    client: falcon.testing.TestClient,
) -> None:
    result = client.simulate_get("/code-manager/v1/nope")
    assert result.status_code == 404
    assert result.json["kind"] == "puppetlabs.code-manager/not-found"
    assert "status" not in result.json
