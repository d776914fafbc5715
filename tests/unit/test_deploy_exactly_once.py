"""Each deploy runs exactly once, however many workers compete for it.

The proof is read from the audit trail: after the workers are done, the
state branch's history is replayed (:mod:`gitstate.deploys.audit`) and every deploy
must have been started once per attempt and finished once, and no
environment may have had two deploys running in the same commit.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gitstate.cli.sample import SampleRepos
from gitstate.deploys.audit import replay_deploys, unfinished
from gitstate.deploys.queue import Outcome
from gitstate.deploys.worker import DeployWorker
from gitstate.services import Services
from tests.support.deploy_harness import deploy_config
from tests.support.helpers import git


class Workers:
    """``count`` deploy workers, each with its own services (own store handles)."""

    def __init__(self, config, count: int) -> None:
        self.config = config
        self.stop = threading.Event()
        self.threads = []
        for slot in range(count):
            services = Services(config)
            worker = DeployWorker(
                services.code_manager.queue,
                services.code_manager.engine,
                slot,
                config.datadir / "locks",
                services.deploy_guard,
            )
            self.threads.append(threading.Thread(target=worker.run, args=(self.stop,), daemon=True))

    def __enter__(self) -> Workers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


@pytest.mark.parametrize("workers", [2, 4])
def test_every_deploy_is_started_once_and_finished_once(
    tmp_path: Path, sample: SampleRepos, workers: int
) -> None:
    config = deploy_config(tmp_path, sample)
    front = Services(config)
    names = front.code_manager.collect()
    ids: set[int] = set()
    with Workers(config, workers):
        # Some environments are asked for again and again, as pushes and
        # pipelines do, while the workers are busy with earlier requests.
        for round_ in range(4):
            wanted = [(name, name) for name in names] if round_ % 2 == 0 else [(names[0], names[0])]
            queued = front.code_manager.queue.request(wanted, actor="test")
            ids.update(entry.deploy_id for entry in queued)
        records = front.code_manager.queue.wait(sorted(ids), timeout=120)
    assert {record["status"] for record in records} == {"complete"}

    replay = replay_deploys(config.datadir / "state.git")
    assert replay.violations == []
    assert set(replay.finishes) == ids
    assert set(replay.finishes.values()) == {1}
    assert {deploy_id for deploy_id, _attempt in replay.starts} == ids
    assert set(replay.starts.values()) == {1}
    assert unfinished(replay) == []


def test_a_deploy_given_back_unstarted_is_queued_again_with_the_reason(
    tmp_path: Path, sample: SampleRepos
) -> None:
    """The audit trail says why a claimed deploy went back, not always "its worker stopped"."""
    config = deploy_config(tmp_path, sample)
    queue = Services(config).code_manager.queue
    name = Services(config).code_manager.collect()[0]
    queued = queue.request([(name, name)], actor="test")
    claimed = queue.claim("worker-a", limit=1)
    assert [record["id"] for record in claimed] == [queued[0].deploy_id]
    why = "its worker's batch ran slower than its pace; given back to share"

    queue.finish([Outcome(queued[0].deploy_id, requeue=why)], "worker-a")

    (record,) = queue.records([queued[0].deploy_id])
    assert record["status"] == "queued" and "worker" not in record
    subject = git("log", "-1", "--format=%s", "state", cwd=str(config.datadir / "state.git"))
    assert subject.strip() == f"deploy #{queued[0].deploy_id} of {name} queued again: {why}"
