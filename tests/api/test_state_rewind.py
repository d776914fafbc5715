"""Over HTTP: a state branch moved back behind the server is a 503, in health and metrics too.

The story of issue 18, item 8: a gate closed and acknowledged, the branch
moved back by ``git update-ref``, the close gone and the next write on top.
"""

from __future__ import annotations

from pathlib import Path

import falcon.testing
import pytest

from gitstate.config import Config
from gitstate.web.app import create_app
from tests.support.client import Client
from tests.support.helpers import git
from tests.support.metrics import total

GATE = "/api/gates/g/s/live"
REWOUND = "gitstate_state_branch_rewound"


@pytest.fixture
def datadir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def client(datadir: Path) -> falcon.testing.TestClient:
    config = Config.from_mapping(
        {"datadir": str(datadir), "state": {"fsync": False}, "auth": {"enabled": False}}
    )
    return Client(create_app(config))


def _git(datadir: Path, *args: str) -> str:
    return git(*args, cwd=datadir / "state.git").strip()


def _close_and_rewind(client: falcon.testing.TestClient, datadir: Path) -> tuple[str, str]:
    assert client.simulate_post("/api/gates/g/s", json={"environments": ["live"]}).status_code < 300
    assert client.simulate_put(GATE, json={"state": "closed"}).status_code == 200
    assert client.simulate_put(GATE, json={"message": "freeze"}).status_code == 200
    old = _git(datadir, "rev-parse", "refs/heads/state")
    new = _git(datadir, "rev-parse", "refs/heads/state~2")
    _git(datadir, "update-ref", "refs/heads/state", new, old)
    return old, new


def test_writes_health_and_metrics_say_so_until_the_branch_is_restored(
    client: falcon.testing.TestClient, datadir: Path
) -> None:
    assert total(client.simulate_get("/metrics").text, REWOUND) == 0
    old, new = _close_and_rewind(client, datadir)

    # Setting what the old tip says changes nothing and is answered; closing is refused.
    assert client.simulate_put(GATE, json={"state": "open"}).status_code == 200
    refused = client.simulate_put(GATE, json={"state": "closed"})
    assert refused.status_code == 503
    assert refused.json["status"] == "error"
    assert "moved back" in refused.json["reason"]
    assert (refused.json["expected"], refused.json["found"]) == (old, new)
    assert _git(datadir, "rev-parse", "refs/heads/state") == new

    health = client.simulate_get("/internal/health")
    assert health.status_code == 503
    assert health.json["status"] == "error"
    assert "operations.md" in health.json["reason"]
    assert total(client.simulate_get("/metrics").text, REWOUND) == 1
    # Reads answer from the tip as it is (the gate reads open again).
    assert client.simulate_get(GATE).json["state"] == "open"

    # Restored from the reflog, as docs/operations.md says.
    assert _git(datadir, "rev-parse", "refs/heads/state@{1}") == old
    _git(datadir, "update-ref", "refs/heads/state", old, new)
    assert client.simulate_get("/internal/health").json == {"status": "ok"}
    assert total(client.simulate_get("/metrics").text, REWOUND) == 0
    assert client.simulate_get(GATE).json["state"] == "closed"
    assert client.simulate_put(GATE, json={"state": "open"}).status_code == 200
