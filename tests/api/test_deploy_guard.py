"""Gates guard deploys: closed gates stop deploys from every entry point."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from gitstate.cli.sample import SampleRepos, git
from gitstate.store.codec import decode
from tests.support.deploy_harness import CM, Running, deploy_config

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
    deploy_id = result[0]["id"]
    state = tmp_path / "data" / "state.git"
    log = git("log", "--reverse", "--format=%H %s", "state", cwd=state).splitlines()
    started = next(line.split()[0] for line in log if "started deploying production" in line)
    finished = next(line.split()[0] for line in log if "of production complete" in line)

    def read(commit: str, path: str) -> dict:
        return decode(git("show", f"{commit}:{path}", cwd=state).encode(), path, commit)

    def production_queue(commit: str) -> list[str]:
        return read(commit, "gates/code/puppet.yaml")["environments"]["production"]["queue"]

    # The commit that starts the deploy takes the gate with the deploy's
    # ticket, and the commit that finishes it gives the ticket back: a
    # pipeline's test-and-set sees the gate held exactly while it runs.
    (ticket,) = production_queue(started)
    assert read(started, f"deploys/00000/{deploy_id}.yaml")["ticket"] == ticket
    held = read(started, f"tickets/{ticket[:2]}/{ticket}.yaml")
    assert held["link"] == f"gitstate deploy #{deploy_id}"
    assert production_queue(finished) == []
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


class HeldEngine:
    """The real engine, except that each deploy first waits to be let through."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.started = threading.Event()
        self.go = threading.Event()

    def deploy(self, *args, **kwargs):
        self.started.set()
        assert self.go.wait(60), "the test never let the deploy through"
        return self._engine.deploy(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._engine, name)


def test_running_deploy_is_listed_and_a_second_request_queues_behind_it(
    guarded: Running,
) -> None:
    held = guarded.worker.engine = HeldEngine(guarded.worker.engine)
    (first,) = guarded.client.simulate_post(
        f"{CM}/deploys", json={"environments": ["production"]}
    ).json
    assert held.started.wait(60)
    deploying = _status(guarded)["deploys-status"]["deploying"]
    assert [(d["id"], d["environment"]) for d in deploying] == [(first["id"], "production")]
    # The running deploy holds the gate with its own ticket; a new request
    # for the environment is queued behind it, as Code Manager queues it.
    (second,) = guarded.client.simulate_post(
        f"{CM}/deploys", json={"environments": ["production"]}
    ).json
    assert second == {"environment": "production", "id": first["id"] + 1, "status": "queued"}
    held.go.set()
    done = guarded.services.code_manager.queue.wait([first["id"], second["id"]], 60)
    assert [record["status"] for record in done] == ["complete", "complete"]
    assert _status(guarded)["deploys-status"]["deploying"] == []


def test_deploy_all_with_wait_answers_a_closed_gate_at_once(guarded: Running) -> None:
    guarded.client.simulate_put(f"{GATE}/production", json={"state": "closed", "message": "no"})
    answer = guarded.client.simulate_post(
        f"{CM}/deploys", json={"deploy-all": True, "wait": True}
    ).json
    by_env = {entry["environment"]: entry for entry in answer}
    assert by_env["production"]["status"] == "failed"
    assert by_env["production"]["error"]["kind"] == "puppetlabs.code-manager/gate-closed"
    others = [entry for name, entry in by_env.items() if name != "production"]
    assert others and {entry["status"] for entry in others} == {"complete"}
    assert _status(guarded)["deploys-status"]["queued"] == []


def test_wait_answers_a_deploy_that_a_gate_closed_after_the_request(guarded: Running) -> None:
    held = guarded.worker.engine = HeldEngine(guarded.worker.engine)
    (first,) = guarded.client.simulate_post(
        f"{CM}/deploys", json={"environments": ["development"]}
    ).json
    assert held.started.wait(60)
    # Queued while development's deploy runs; then a pipeline takes the gate.
    result: list = []
    waiter = threading.Thread(
        target=lambda: result.append(
            guarded.client.simulate_post(
                f"{CM}/deploys", json={"environments": ["development"], "wait": True}
            ).json
        )
    )
    waiter.start()
    assert _wait_for(lambda: _status(guarded)["deploys-status"]["queued"])
    guarded.client.simulate_put(f"{GATE}/development", json={"state": "closed"})
    held.go.set()
    waiter.join(60)
    (entry,) = result[0]
    assert entry["status"] == "queued"
    assert entry["error"]["kind"] == "puppetlabs.code-manager/gate-closed"
    assert "code/puppet/development is closed" in entry["error"]["msg"]
    assert guarded.services.code_manager.queue.get(first["id"])["status"] == "complete"


def test_an_environment_no_gate_can_name_deploys_and_blocks_no_one(
    guarded: Running, sample: SampleRepos, tmp_path: Path
) -> None:
    # 120 characters: a valid directory, but longer than any gate name may be.
    long_name = "e" * 120
    work = tmp_path / "long-work"
    git("clone", "-q", "--branch", "production", str(sample.control), str(work))
    git("checkout", "-q", "-b", long_name, cwd=work)
    git("push", "-q", "origin", long_name, cwd=work)
    first = guarded.client.simulate_post(
        f"{CM}/deploys", json={"environments": [long_name], "wait": True}
    ).json
    assert first[0]["status"] == "complete", first
    after = guarded.client.simulate_post(
        f"{CM}/deploys", json={"environments": ["development"], "wait": True}
    ).json
    assert after[0]["status"] == "complete", after
