"""Code Manager's API on the sample control repo, with a real deploy worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest

from gitstate.cli.sample import SampleRepos, git
from tests.support.deploy_harness import CM, Running, deploy_config


@pytest.fixture
def running(tmp_path: Path, sample: SampleRepos) -> Iterator[Running]:
    with Running(deploy_config(tmp_path, sample)) as harness:
        yield harness


@pytest.fixture
def idle(tmp_path: Path, sample: SampleRepos) -> Running:
    """The app without a worker: deploys stay queued."""
    return Running(deploy_config(tmp_path, sample))


def test_request_without_wait_answers_queued_with_increasing_ids(idle: Running) -> None:
    result = idle.client.simulate_post(
        f"{CM}/deploys", json={"environments": ["production", "development"]}
    )
    assert result.status_code == 200
    assert result.json == [
        {"environment": "production", "id": 1, "status": "queued"},
        {"environment": "development", "id": 2, "status": "queued"},
    ]
    again = idle.client.simulate_post(f"{CM}/deploys", json={"environments": ["production"]})
    # Still queued: the request joins the queued deploy instead of adding one.
    assert again.json == [{"environment": "production", "id": 1, "status": "queued"}]
    status = idle.client.simulate_get(f"{CM}/deploys/status").json["deploys-status"]
    assert [entry["id"] for entry in status["queued"]] == [1, 2]
    assert status["queued"][0]["queued-at"].endswith("Z")


def test_wait_returns_signature_and_commits_in_storage(
    running: Running, sample: SampleRepos, tmp_path: Path
) -> None:
    result = running.client.simulate_post(
        f"{CM}/deploys", json={"environments": ["production"], "wait": True}
    )
    assert result.status_code == 200
    (entry,) = result.json
    assert entry["status"] == "complete"
    assert entry["deploy-signature"] == git("rev-parse", "production", cwd=sample.control)
    storage = pygit2.Repository(str(tmp_path / "data" / "storage.git"))
    env_commit = storage[entry["file-sync"]["environment-commit"]]
    code_commit = storage[entry["file-sync"]["code-commit"]]
    assert "manifests" in env_commit.tree
    assert "modules" in env_commit.tree
    assert isinstance(code_commit, pygit2.Commit)
    deployed = running.client.simulate_get(f"{CM}/deploys/status").json["file-sync-storage-status"][
        "deployed"
    ]
    assert [(d["environment"], d["deploy-signature"]) for d in deployed] == [
        ("production", entry["deploy-signature"])
    ]
    one = running.client.simulate_get(f"{CM}/deploys/status", params={"id": str(entry["id"])}).json
    assert one["status"] == "complete"
    assert one["file-sync"] == entry["file-sync"]


def test_branch_names_are_corrected_and_reported_as_requested(running: Running) -> None:
    result = running.client.simulate_post(
        f"{CM}/deploys", json={"environments": ["feature/login-banner"], "wait": True}
    )
    (entry,) = result.json
    assert entry["environment"] == "feature/login-banner"
    assert entry["status"] == "complete"
    deployed = running.client.simulate_get(f"{CM}/deploys/status").json["file-sync-storage-status"][
        "deployed"
    ]
    assert [d["environment"] for d in deployed] == ["feature_login_banner"]


def test_status_list_and_one_deploy_name_it_as_requested(idle: Running) -> None:
    (entry,) = idle.client.simulate_post(
        f"{CM}/deploys", json={"environments": ["feature/login-banner"]}
    ).json
    listed = idle.client.simulate_get(f"{CM}/deploys/status").json["deploys-status"]["queued"]
    one = idle.client.simulate_get(f"{CM}/deploys/status", params={"id": str(entry["id"])}).json
    assert [item["environment"] for item in listed] == ["feature/login-banner"]
    assert one["environment"] == "feature/login-banner"


def test_unknown_environment_fails_with_deploy_failure(running: Running) -> None:
    result = running.client.simulate_post(
        f"{CM}/deploys", json={"environments": ["nosuchenv"], "wait": True}
    )
    (entry,) = result.json
    assert entry["status"] == "failed"
    assert entry["error"]["kind"] == "puppetlabs.code-manager/deploy-failure"
    assert "cannot be found in any source" in entry["error"]["msg"]
    assert entry["error"]["details"]["corrected-env-name"] == "nosuchenv"
    failed = running.client.simulate_get(f"{CM}/deploys/status").json["deploys-status"]["failed"]
    assert [f["environment"] for f in failed] == ["nosuchenv"]


def test_deploy_all_and_dry_run_follow_the_remote(
    running: Running, sample: SampleRepos, tmp_path: Path
) -> None:
    dry = running.client.simulate_post(f"{CM}/deploys", json={"dry-run": True})
    assert dry.json == [
        {"environment": "development"},
        {"environment": "feature_login_banner"},
        {"environment": "production"},
    ]
    # A branch pushed after start-up is found: deploy-all fetches afresh.
    git("branch", "hotfix", "production", cwd=sample.control)
    result = running.client.simulate_post(f"{CM}/deploys", json={"deploy-all": True, "wait": True})
    assert sorted(entry["environment"] for entry in result.json) == [
        "development",
        "feature_login_banner",
        "hotfix",
        "production",
    ]
    assert {entry["status"] for entry in result.json} == {"complete"}


def test_no_op_redeploy_changes_no_storage_commit(running: Running) -> None:
    first = running.client.simulate_post(
        f"{CM}/deploys", json={"environments": ["production"], "wait": True}
    ).json[0]
    second = running.client.simulate_post(
        f"{CM}/deploys", json={"environments": ["production"], "wait": True}
    ).json[0]
    assert second["id"] > first["id"]
    assert second["status"] == "complete"
    assert second["file-sync"] == first["file-sync"]


@pytest.mark.parametrize(
    "given", ["production, development", "production development", "production,development"]
)
def test_environments_as_one_comma_and_space_separated_string(idle: Running, given: str) -> None:
    # Code Manager's table: "Accepts a comma- and space-separated list of strings".
    result = idle.client.simulate_post(f"{CM}/deploys", json={"environments": given})
    assert result.status_code == 200, result.text
    assert [(entry["environment"], entry["status"]) for entry in result.json] == [
        ("production", "queued"),
        ("development", "queued"),
    ]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"wait": True},
        {"environments": []},
        {"environments": " , "},
        {"environments": 5},
        {"environments": [""]},
        {"deploy-all": "yes"},
        [],
    ],
)
def test_bad_requests_are_400_with_kind(idle: Running, body: object) -> None:
    result = idle.client.simulate_post(f"{CM}/deploys", json=body)
    assert result.status_code == 400
    assert result.json["kind"] == "puppetlabs.code-manager/bad-request"
    assert result.json["msg"]
    assert idle.services.store.head() is None  # nothing was queued


def test_malformed_and_oversized_bodies_are_400(idle: Running) -> None:
    bad = idle.client.simulate_post(
        f"{CM}/deploys", body="{not json", headers={"Content-Type": "application/json"}
    )
    assert bad.status_code == 400
    assert bad.json["kind"] == "puppetlabs.code-manager/bad-request"
    big = idle.client.simulate_post(f"{CM}/deploys", json={"environments": ["x" * 200] * 1000})
    assert big.status_code == 400
    assert idle.services.store.head() is None


def test_unknown_deploy_id_is_404(idle: Running) -> None:
    result = idle.client.simulate_get(f"{CM}/deploys/status", params={"id": "99"})
    assert result.status_code == 404
    assert result.json["kind"].startswith("puppetlabs.code-manager/")
    assert idle.client.simulate_get(f"{CM}/deploys/status", params={"id": "x"}).status_code == 400


def test_deploy_history_is_readable_in_git(running: Running, tmp_path: Path) -> None:
    running.client.simulate_post(
        f"{CM}/deploys",
        json={"environments": ["production"], "wait": True},
        headers={"X-Gitstate-Actor": "alice"},
    )
    log = git(
        "log", "--format=%an|%s", "state", "--", "deploys/", cwd=tmp_path / "data" / "state.git"
    ).splitlines()
    assert log[-1] == "alice|alice queued deploy of production (#1)"
    assert log[-2].startswith("deploy-worker-0@")
    assert log[-2].endswith(" started deploying production (#1)")
    assert "deploy #1 of production complete" in log[0]


def test_waiting_deploys_hold_no_thread_and_none_is_turned_away(
    tmp_path: Path, sample: SampleRepos
) -> None:
    import asyncio

    import falcon.testing

    config = deploy_config(tmp_path, sample, timeouts={"wait": 3})
    config.threads = 1  # one thread for blocking work, and more waiters than that
    idle = Running(config)  # no worker: a wait lasts until its timeout
    body = {"environments": ["production"], "wait": True}

    async def scenario() -> tuple[list, object]:
        async with falcon.testing.ASGIConductor(idle.client.app) as conductor:
            waits = [
                asyncio.create_task(conductor.simulate_post(f"{CM}/deploys", json=body))
                for _ in range(6)
            ]
            await asyncio.sleep(0.5)
            # Everything else is answered while they wait.
            status = await conductor.simulate_get(f"{CM}/deploys/status")
            assert not any(wait.done() for wait in waits)
            return await asyncio.gather(*waits), status

    answers, status = asyncio.run(scenario())
    assert status.status_code == 200
    queued = status.json["deploys-status"]["queued"] + status.json["deploys-status"]["new"]
    assert [entry["environment"] for entry in queued] == ["production"]
    for answer in answers:
        (entry,) = answer.json
        # Each one waited its whole time; none was turned away.
        assert entry["status"] == "queued"
        assert entry["error"]["kind"] == "puppetlabs.code-manager/timeout"
        assert "after 3s" in entry["error"]["msg"]
