"""``/metrics``: in-process for the app and CLI, merged across processes under gunicorn."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import pygit2
import pytest
import requests

from gitstate.config import Config
from gitstate.deploys.worker import DeployWorker
from gitstate.engine.environments import Collection
from gitstate.engine.storage import CODE_REF
from gitstate.filesync.checkins import CheckIns
from gitstate.gauges import SyncLagGauge
from gitstate.settings import DeploySettings, DeployTimeouts
from gitstate.web.app import create_app
from tests.support.client import Client
from tests.support.helpers import free_port, wait_for_http
from tests.support.metrics import samples, total

# -- in-process (no PROMETHEUS_MULTIPROC_DIR) -----------------------------------------------


@pytest.fixture
def client(tmp_path: Path) -> falcon.testing.TestClient:
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    config = Config.from_mapping(
        {
            "datadir": str(tmp_path / "data"),
            "state": {"fsync": False},
            "auth": {"enabled": False},
        }
    )
    return Client(create_app(config))


def test_commits_and_requests_are_counted_in_process(client: falcon.testing.TestClient) -> None:
    before = client.simulate_get("/metrics").text
    created = client.simulate_post("/api/gates/grp/svc", json={"environments": ["live"]})
    assert created.status_code in (200, 201), created.text
    client.simulate_get("/nowhere/at/all")
    after = client.simulate_get("/metrics")
    assert after.status_code == 200
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    commits = "gitstate_state_commits_total"
    assert total(text, commits, operation="gates.create") == (
        total(before, commits, operation="gates.create") + 1
    )
    route = "/api/gates/{group}/{service}"
    assert total(text, "gitstate_http_requests_total", method="POST", route=route) >= 1
    assert total(text, "gitstate_http_request_seconds_count", route=route) >= 1
    # Unrouted paths share one label instead of making a series per path.
    assert total(text, "gitstate_http_requests_total", route="unrouted", status="404") >= 1
    assert samples(text, "gitstate_deploy_queue", status="queued") == [0.0]
    assert samples(text, "gitstate_deploy_queue", status="deploying") == [0.0]


def test_metrics_is_a_read_that_may_require_a_token(tmp_path: Path) -> None:
    config = Config.from_mapping(
        {
            "datadir": str(tmp_path / "data"),
            "state": {"fsync": False},
            "auth": {"enabled": True, "read_requires_token": True},
        }
    )
    client = Client(create_app(config))
    assert client.simulate_get("/metrics").status_code == 401


class _Queue:
    settings = DeploySettings(timeouts=DeployTimeouts(deploy=60.0))

    def __init__(self) -> None:
        self.finished: list[Any] = []

    def finish(self, outcomes: list[Any], worker: str, **options: Any) -> None:
        self.finished.extend(outcomes)


class _Engine:
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def collect(self, **options: Any) -> Any:
        return Collection(environments={}, collected_at=0.0)

    def prefetch(self, collection: Any, environments: list[str]) -> None:
        pass

    def purge(self, collection: Any) -> list[str]:
        return []

    def deploy(self, environment: str, **options: Any) -> Any:
        if self.fail:
            raise RuntimeError("boom")
        return type(
            "Result",
            (),
            {
                "signature": "abc",
                "environment_commit": "e",
                "code_commit": "c",
                "skipped": False,
                "module_deploys": [],
            },
        )()


def test_deploy_durations_are_observed_by_outcome(tmp_path: Path) -> None:
    from gitstate.base import metrics

    def count(status: str) -> float:
        text = metrics.exposition()[0].decode()
        return total(text, "gitstate_deploy_duration_seconds_count", status=status)

    complete, failed = count("complete"), count("failed")
    for fail in (False, True, False):
        worker = DeployWorker(_Queue(), _Engine(fail), 0, tmp_path)  # type: ignore[arg-type]
        worker._run_batch([{"id": 1, "environment": "production"}])
    assert count("complete") == complete + 2
    assert count("failed") == failed + 1


# -- file-sync lag, from check-ins and the code ref ------------------------------------------


def _code_commits(path: Path, times: list[int]) -> list[str]:
    repo = pygit2.init_repository(str(path), bare=True)
    tree = repo.TreeBuilder().write()
    parents: list[Any] = []
    made = []
    for when in times:
        sig = pygit2.Signature("gitstate", "gitstate@test", when, 0)
        oid = repo.create_commit(None, sig, sig, f"publish at {when}", tree, parents)
        parents = [oid]
        made.append(str(oid))
    repo.references.create(CODE_REF, parents[0])
    return made


def test_sync_lag_is_the_age_of_the_oldest_commit_a_client_lacks(tmp_path: Path) -> None:
    storage = tmp_path / "storage.git"
    first, second, third = _code_commits(storage, [1000, 2000, 3000])
    check_ins = CheckIns(tmp_path / "clients")
    check_ins.record("current", {"code_commit": third})
    check_ins.record("behind", {"code_commit": first})
    check_ins.record("empty", {})
    gauge = SyncLagGauge(storage, check_ins, ["current", "never"], clock=lambda: 5000.0)
    assert gauge.lags() == {
        "behind": 3000.0,  # lacks the commit made at 2000
        "current": 0.0,
        "empty": 4000.0,  # lacks everything since the first commit
        "never": 4000.0,  # configured, never checked in
    }
    assert second


# -- real gunicorn: several workers, one /metrics --------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    datadir = tmp_path / "data"
    stale = datadir / "metrics" / "counter_1.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an earlier run")
    config = tmp_path / "gitstate.yaml"
    config.write_text(
        f"datadir: {datadir}\n"
        f"listen: 127.0.0.1:{port}\n"
        "workers: 3\n"
        "threads: 1\n"
        "state:\n  fsync: false\n"
        "auth:\n  enabled: false\n"
        "deploy:\n  pool_size: 0\n"
        "logging:\n  json: false\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "gitstate", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/internal/health", timeout=60)
        assert not stale.exists(), "the metrics directory is wiped on start"
        yield base, datadir
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _worker_pids(directory: Path) -> set[str]:
    return {path.stem.rsplit("_", 1)[-1] for path in directory.glob("counter_*.db")}


def test_gunicorn_workers_are_summed_in_one_scrape(served: tuple[str, Path]) -> None:
    base, datadir = served
    services = 24
    errors: list[str] = []

    def create(numbers: range) -> None:
        session = requests.Session()
        for number in numbers:
            answer = session.post(
                f"{base}/api/gates/grp/svc{number}",
                json={"environments": ["live"]},
                headers={"Connection": "close"},
                timeout=60,
            )
            if answer.status_code not in (200, 201):
                errors.append(answer.text)

    threads = [
        threading.Thread(target=create, args=(range(start, services, 6),)) for start in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    # Sync workers answer one request at a time, so concurrent clients spread
    # over them; read more until at least two workers have answered.
    for _ in range(200):
        if len(_worker_pids(datadir / "metrics")) >= 2:
            break
        requests.get(f"{base}/api/gates", timeout=30)
    assert len(_worker_pids(datadir / "metrics")) >= 2

    # A process outside gunicorn (as a deploy worker is) lands in the same scrape.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from gitstate.base import metrics; metrics.deploy_finished('complete', 3.0)",
        ],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(datadir / "metrics")},
        check=True,
    )

    commits = int(
        subprocess.run(
            ["git", "--git-dir", str(datadir / "state.git"), "rev-list", "--count", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    route = "/api/gates/{group}/{service}"
    # Every scrape, whichever worker answers it, sees every worker's counts.
    for _ in range(6):
        text = requests.get(f"{base}/metrics", headers={"Connection": "close"}, timeout=30).text
        assert total(text, "gitstate_http_requests_total", method="POST", route=route) == services
        assert total(text, "gitstate_state_commits_total") == commits
        assert total(text, "gitstate_state_commits_total", operation="gates.create") == services
        assert total(text, "gitstate_http_request_seconds_count", route=route) == services
        assert samples(text, "gitstate_deploy_duration_seconds_count", status="complete") == [1.0]
        assert samples(text, "gitstate_deploy_queue", status="queued") == [0.0]
