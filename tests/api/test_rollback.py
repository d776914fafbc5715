"""Rollbacks through the API: default target, by signature, errors, audit history."""

from __future__ import annotations

from pathlib import Path

import pygit2
import pytest

from gitstate.cli.sample import SampleRepos
from gitstate.engine.storage import Published, Storage
from tests.support.filesync import Harness, push
from tests.support.helpers import git

ROLLBACKS = "/code-manager/v1/rollbacks"


def test_rollback_defaults_to_the_previous_version_and_is_audited(
    harness: Harness, sample: SampleRepos, tmp_path: Path
) -> None:
    first = harness.deploy("production")[0]["deploy-signature"]
    second = push(sample, tmp_path / "work", "production", {"data/common.yaml": "v: 2\n"})
    harness.deploy("production")
    answer = harness.client.simulate_post(
        ROLLBACKS, json={"environment": "production"}, headers={"X-Gitstate-Actor": "alice"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json["deploy-signature"] == first
    assert answer.json["rolled-back-from"] == second
    storage = Storage(harness.storage_path)
    published = storage.published()["production"]
    assert published.signature == first
    assert storage.files(published.tree)["data/common.yaml"] != b"v: 2\n"
    subject = git("log", "-1", "--format=%s", "state", cwd=harness.config.state_repo).strip()
    assert subject == f"alice rolled back production to {first[:12]} (was {second[:12]})"
    # The environment's history only moves forward: the rollback is a new commit.
    assert storage.environment_tip("production") == answer.json["file-sync"]["environment-commit"]

    # Rolling back to the signature now current changes nothing.
    again = harness.client.simulate_post(
        ROLLBACKS, json={"environment": "production", "to": first[:8]}
    )
    assert again.json["changed"] is False
    # ...and to the newer one by signature works too.
    forward = harness.client.simulate_post(
        ROLLBACKS, json={"environment": "production", "to": second[:8]}
    )
    assert forward.json["deploy-signature"] == second
    status = harness.client.simulate_get("/code-manager/v1/deploys/status").json
    deployed = {d["environment"]: d for d in status["file-sync-storage-status"]["deployed"]}
    assert deployed["production"]["deploy-signature"] == second


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, 400),
        ({"environment": "production", "to": "not-hex!"}, 400),
        ({"environment": "nosuch"}, 404),
        ({"environment": "production"}, 404),  # only one version: nothing earlier
        ({"environment": "production", "to": "deadbeef"}, 404),
    ],
)
def test_rollback_errors(harness: Harness, body: dict, code: int) -> None:
    harness.deploy("production")
    answer = harness.client.simulate_post(ROLLBACKS, json=body)
    assert answer.status_code == code, answer.text
    assert answer.json["kind"].startswith("puppetlabs.code-manager/")


def test_rollback_is_refused_while_the_gate_is_closed(
    harness: Harness, sample: SampleRepos, tmp_path: Path
) -> None:
    harness.deploy("production")
    push(sample, tmp_path / "work", "production", {"data/common.yaml": "v: 2\n"})
    current = harness.deploy("production")[0]["deploy-signature"]
    gate = "/api/gates/code/puppet"
    assert (
        harness.client.simulate_post(gate, json={"environments": ["production"]}).status_code == 200
    )
    harness.client.simulate_put(f"{gate}/production", json={"state": "closed"})
    refused = harness.client.simulate_post(ROLLBACKS, json={"environment": "production"})
    assert refused.status_code == 409
    assert refused.json["kind"] == "puppetlabs.code-manager/gate-closed"
    assert refused.json["details"]["gate"] == "code/puppet/production"
    assert Storage(harness.storage_path).published()["production"].signature == current
    harness.client.simulate_put(f"{gate}/production", json={"state": "open"})
    assert (
        harness.client.simulate_post(ROLLBACKS, json={"environment": "production"}).status_code
        == 200
    )


def test_rollback_refuses_a_version_whose_links_storage_refuses_today(
    harness: Harness, sample: SampleRepos, tmp_path: Path
) -> None:
    harness.deploy("production")
    storage = Storage(harness.storage_path)
    good = storage.published()["production"]
    # A version published before links were resolved as the file system
    # will: its link passes through another link and out of the environment.
    repo = storage.repo
    builder = repo.TreeBuilder(repo[pygit2.Oid(hex=good.tree)])
    chain = repo.TreeBuilder()
    chain.insert("l", repo.create_blob(b"../../.."), pygit2.enums.FileMode.LINK)
    tree = chain.write()  # a/b/c/l resolves to the environment's root
    for name in ("c", "b"):
        outer = repo.TreeBuilder()
        outer.insert(name, tree, pygit2.enums.FileMode.TREE)
        tree = outer.write()
    builder.insert("a", tree, pygit2.enums.FileMode.TREE)
    builder.insert(
        "x", repo.create_blob(b"a/b/c/l/../../../etc/passwd"), pygit2.enums.FileMode.LINK
    )
    unsafe_tree = builder.write()
    signature = "f" * 40
    env_commit = storage.commit_environment(
        "production", unsafe_tree, f"old version\n\nSignature: {signature}\n"
    )
    storage.publish(
        {"production": Published("production", env_commit, str(unsafe_tree), signature, "old")},
        "an old, unchecked publish",
    )
    push(sample, tmp_path / "work", "production", {"data/common.yaml": "v: 3\n"})
    harness.deploy("production")
    current = storage.published()["production"]

    answer = harness.client.simulate_post(
        ROLLBACKS, json={"environment": "production", "to": signature[:10]}
    )
    assert answer.status_code == 409, answer.text
    assert "points outside the environment" in answer.json["msg"]
    assert answer.json["kind"] == "puppetlabs.code-manager/conflict"
    assert storage.published()["production"] == current
