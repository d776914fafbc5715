"""What one node of several servers answers, and how it joins (issue 22).

The shared repository is a bare repository reached by path (the same
receive-pack as a git daemon runs); taking it away is a git server that is
down.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gitstate.config import Config
from gitstate.process.follower import HistoryMismatch, join
from gitstate.services import Services
from gitstate.web.app import create_app
from tests.support.client import Client
from tests.support.helpers import git


def _config(tmp_path: Path, name: str, remote: Path | None) -> Config:
    data: dict = {
        "datadir": str(tmp_path / name),
        "state": {"fsync": False},
        "auth": {"enabled": False},
    }
    if remote is not None:
        data["state"]["remote"] = str(remote)
    return Config.from_mapping(data)


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    path = tmp_path / "server" / "state.git"
    path.parent.mkdir()
    git("init", "-q", "--bare", str(path), cwd=tmp_path)
    return path


def _node(tmp_path: Path, name: str, remote: Path) -> tuple[Client, Services]:
    config = _config(tmp_path, name, remote)
    services = Services(config)
    return Client(create_app(config, services=services)), services


def test_a_gate_made_on_one_node_is_changed_on_another_and_followed(
    tmp_path: Path, shared: Path
) -> None:
    a, a_services = _node(tmp_path, "a", shared)
    b, b_services = _node(tmp_path, "b", shared)
    made = a.simulate_post("/api/gates/grp/svc", json={"environments": ["live"]})
    assert made.status_code == 200, made.text
    # b has not fetched: a write there still runs on the git server's tip.
    closed = b.simulate_put("/api/gates/grp/svc/live", json={"state": "closed"})
    assert closed.status_code == 200, closed.text
    assert b_services.store.head() == git("rev-parse", "refs/heads/state", cwd=shared).strip()
    # a reads its copy until it fetches (the follower does, every second).
    assert a.simulate_get("/api/gates/grp/svc/live").json["state"] == "open"
    a_services.store.refresh()
    assert a.simulate_get("/api/gates/grp/svc/live").json["state"] == "closed"


def test_with_the_git_server_gone_writes_are_503_reads_go_on_and_health_says_so(
    tmp_path: Path, shared: Path
) -> None:
    node, _ = _node(tmp_path, "a", shared)
    assert (
        node.simulate_post("/api/gates/grp/svc", json={"environments": ["live"]}).status_code == 200
    )
    away = shared.with_name("away.git")
    shared.rename(away)
    try:
        write = node.simulate_put("/api/gates/grp/svc/live", json={"state": "closed"})
        assert write.status_code == 503
        assert "git server" in write.json["reason"]
        assert write.headers.get("retry-after") == "5"
        read = node.simulate_get("/api/gates/grp/svc/live")
        assert read.status_code == 200
        assert read.json["state"] == "open"
        health = node.simulate_get("/internal/health")
        assert health.status_code == 200
        assert health.json["status"] == "read-only"
        assert health.json["unreachable"][0]["url"] == str(shared)
    finally:
        away.rename(shared)
    again = node.simulate_put("/api/gates/grp/svc/live", json={"state": "closed"})
    assert again.status_code == 200, again.text
    assert node.simulate_get("/internal/health").json == {"status": "ok"}


def test_the_first_node_brings_its_history_and_a_foreign_history_is_refused(
    tmp_path: Path, shared: Path
) -> None:
    # A single server with history of its own becomes the first node.
    single = _config(tmp_path, "single", None)
    services = Services(single)
    client = Client(create_app(single, services=services))
    assert (
        client.simulate_post("/api/gates/grp/svc", json={"environments": ["live"]}).status_code
        == 200
    )
    history = services.store.head()
    join(_config(tmp_path, "single", shared))
    assert git("rev-parse", "refs/heads/state", cwd=shared).strip() == history
    # A second server with another history of its own cannot join.
    other = _config(tmp_path, "other", None)
    other_services = Services(other)
    other_client = Client(create_app(other, services=other_services))
    assert (
        other_client.simulate_post("/api/gates/x/y", json={"environments": ["e"]}).status_code
        == 200
    )
    with pytest.raises(HistoryMismatch):
        join(_config(tmp_path, "other", shared))
    # A fresh datadir joins with the shared history.
    join(_config(tmp_path, "fresh", shared))
    fresh = Services(_config(tmp_path, "fresh", shared))
    assert fresh.store.head() == history
