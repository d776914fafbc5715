"""Gates guard deploys: closed gates stop deploys from every entry point."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gitstate.sample import SampleRepos, git
from tests.deploy_harness import CM, Running, deploy_config

GATE = "/api/gates/code/puppet"


def _wait_for(check, timeout: float = 60.0):
    """Poll ``check`` until it returns something truthy (bounded, not timed)."""
    until = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > until:
            return value
        time.sleep(0.05)


@pytest.fixture
def guarded(tmp_path: Path, sample: SampleRepos):
    with Running(deploy_config(tmp_path, sample)) as harness:
        created = harness.client.simulate_post(
            GATE, json={"environments": ["production", "development"]}
        )
        assert created.status_code == 200
        yield harness


def _status(harness: Running) -> dict:
    return harness.client.simulate_get(f"{CM}/deploys/status").json


def test_api_deploy_of_closed_environment_is_refused(guarded: Running) -> None:
    guarded.client.simulate_put(f"{GATE}/production", json={"state": "closed", "message": "freeze"})
    result = guarded.client.simulate_post(
        f"{CM}/deploys", json={"environments": ["production", "development"], "wait": True}
    )
    by_env = {entry["environment"]: entry for entry in result.json}
    refused = by_env["production"]
    assert refused["status"] == "failed"
    assert refused["error"]["kind"] == "puppetlabs.code-manager/gate-closed"
    assert refused["error"]["details"]["gate"] == "code/puppet/production"
    assert refused["error"]["details"]["reason"] == "closed manually"
    assert "id" not in refused
    assert by_env["development"]["status"] == "complete"
    deployed = [d["environment"] for d in _status(guarded)["file-sync-storage-status"]["deployed"]]
    assert deployed == ["development"]


def test_queued_deploy_waits_visibly_and_latest_commit_wins(
    guarded: Running,
    sample: SampleRepos,
) -> None:
    guarded.client.simulate_put(f"{GATE}/production", json={"state": "closed"})
    # A webhook or hook queues deploys without asking the gate first.
    (entry,) = guarded.services.code_manager.queue.request(
        [("production", "production")], actor="webhook:github", reason="webhook"
    )
    waiting = _wait_for(
        lambda: [q for q in _status(guarded)["deploys-status"]["queued"] if q.get("waiting-for")]
    )
    assert waiting[0]["id"] == entry.deploy_id
    assert "code/puppet/production is closed (closed manually)" in waiting[0]["waiting-for"]
    fetched = guarded.client.simulate_post(
        f"{CM}/deploys", json={"environments": ["development"], "wait": True}
    ).json
    assert fetched[0]["status"] == "complete"
    # While it waits, the branch moves on; the deploy must take the new tip.
    work = Path(str(sample.control) + "-work")
    git("clone", "-q", "--branch", "production", str(sample.control), str(work))
    (work / "data" / "common.yaml").write_text("---\nprofile::base::motd: 'newer'\n")
    git("commit", "-qam", "newer motd", cwd=work)
    git("push", "-q", "origin", "production", cwd=work)
    latest = git("rev-parse", "HEAD", cwd=work)
    deployed = _status(guarded)["file-sync-storage-status"]["deployed"]
    assert [d["environment"] for d in deployed] == ["development"]
    # Another deploy fetches the control repo in between (before the push
    # above reaches the queue), and the push's webhook joins the waiting
    # deploy: the deploy must still fetch again and take the new tip.
    (again,) = guarded.services.code_manager.queue.request(
        [("production", "production")], actor="webhook:github", reason="webhook"
    )
    assert again.deploy_id == entry.deploy_id

    guarded.client.simulate_put(f"{GATE}/production", json={"state": "open"})
    done = guarded.services.code_manager.queue.wait([entry.deploy_id], 60)
    assert done[0]["status"] == "complete"
    assert done[0]["signature"] == latest


def test_deploy_waits_for_a_pipeline_holding_the_gate(guarded: Running) -> None:
    held = guarded.client.simulate_put(
        "/api/gates", json={"gates": {"code": {"puppet": "production"}}}
    ).json
    assert held["status"] == "ok"
    (entry,) = guarded.services.code_manager.queue.request(
        [("production", "production")], actor="hook", reason="hook"
    )
    waiting = _wait_for(lambda: _status(guarded)["deploys-status"]["queued"])
    assert _wait_for(
        lambda: (
            "held by ticket"
            in (_status(guarded)["deploys-status"]["queued"] or [{}])[0].get("waiting-for", "")
        )
    )
    assert waiting[0]["id"] == entry.deploy_id
    guarded.client.simulate_delete(f"/api/tickets/{held['ticket']['id']}")
    done = guarded.services.code_manager.queue.wait([entry.deploy_id], 60)
    assert done[0]["status"] == "complete"


def test_running_deploy_holds_a_ticket_on_its_gate(guarded: Running, tmp_path: Path) -> None:
    result = guarded.client.simulate_post(
        f"{CM}/deploys", json={"environments": ["production"], "wait": True}
    ).json
    assert result[0]["status"] == "complete"

    def log_once_released() -> list[str] | None:
        # The worker gives the ticket back after it records the deploy
        # complete, which is what the waiting request returns on.
        state = tmp_path / "data" / "state.git"
        lines = git("log", "--reverse", "--format=%s", "state", cwd=state).splitlines()
        return lines if any("releases ticket" in line for line in lines) else None

    log = _wait_for(log_once_released)
    assert log is not None
    took = next(i for i, line in enumerate(log) if "takes code/puppet/production" in line)
    started = next(i for i, line in enumerate(log) if "started deploying production" in line)
    finished = next(i for i, line in enumerate(log) if "of production complete" in line)
    released = next(i for i, line in enumerate(log) if "releases ticket" in line)
    assert took < started < finished < released
    # The gate is free again for pipelines.
    again = guarded.client.simulate_put(
        "/api/gates", json={"gates": {"code": {"puppet": "production"}}}
    ).json
    assert again["status"] == "ok"


def test_unguarded_environment_deploys_normally(guarded: Running) -> None:
    result = guarded.client.simulate_post(
        f"{CM}/deploys", json={"environments": ["feature/login-banner"], "wait": True}
    ).json
    assert result[0]["status"] == "complete"
