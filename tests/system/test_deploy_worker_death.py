"""A deploy whose worker is killed runs again on another worker, never on two at once.

Real processes: ``gitstate deploy-worker`` for slots 0 and 1. The deploy of
branch ``slow`` fetches a module from an HTTP server that never answers
the first worker, which is then killed with SIGKILL mid-deploy. The worker
of slot 1 finds the dead worker's deploy, queues it again and runs it; the
server then refuses the module, so the deploy fails quickly and for good.
The state branch's history shows each attempt started once and the deploy
finished once.
"""

from __future__ import annotations

import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

from ruamel.yaml import YAML

from gitstate.cli.sample import SampleRepos, git
from gitstate.config import Config
from gitstate.deploys.audit import replay_deploys
from gitstate.deploys.queue import DeployQueue
from gitstate.settings import DeploySettings
from gitstate.store.branch import Store


class StallThenRefuse(socketserver.ThreadingTCPServer):
    """Hold the first connection open until released; answer 404 to the others."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.connections = 0
        self.first = threading.Event()
        self.release = threading.Event()
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                server.connections += 1
                if server.connections == 1:
                    server.first.set()
                    server.release.wait(120)
                    return
                self.request.recv(65536)
                self.request.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

        super().__init__(("127.0.0.1", 0), Handler)


def _push_slow_branch(sample: SampleRepos, url: str, work: Path) -> None:
    git("clone", "-q", "--branch", "production", str(sample.control), str(work))
    git("checkout", "-q", "-b", "slow", cwd=work)
    (work / "Puppetfile").write_text(f"mod 'slow',\n  :git => '{url}',\n  :branch => 'main'\n")
    git("commit", "-qam", "a module behind a slow server", cwd=work)
    git("push", "-q", "origin", "slow", cwd=work)


def _worker(config_path: Path, slot: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gitstate",
            "deploy-worker",
            "--config",
            str(config_path),
            "--slot",
            str(slot),
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def test_a_killed_workers_deploy_runs_again_elsewhere_and_finishes_once(
    tmp_path: Path, sample: SampleRepos
) -> None:
    server = StallThenRefuse()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    _push_slow_branch(sample, f"http://127.0.0.1:{port}/slow.git", tmp_path / "work")
    config = {
        "datadir": str(tmp_path / "data"),
        "state": {"fsync": False},
        "sources": {"puppet": {"remote": sample.control_url}},
        "deploy": {"timeouts": {"fetch": 120}, "local_module_sources": [str(sample.modules)]},
    }
    config_path = tmp_path / "gitstate.yaml"
    with config_path.open("w") as stream:
        YAML(typ="safe").dump(config, stream)
    store = Store(Config.load(config_path).state_repo)
    queue = DeployQueue(store, DeploySettings())
    (queued,) = queue.request([("slow", "slow")], actor="test")
    first = _worker(config_path, 0, tmp_path / "worker-0.log")
    second = None
    try:
        assert server.first.wait(60), "the first worker never fetched the module"
        assert queue.get(queued.deploy_id)["status"] == "deploying"
        # A second worker that starts while the first is alive leaves its
        # deploy alone, however long it takes.
        second = _worker(config_path, 1, tmp_path / "worker-1.log")
        until = time.monotonic() + 60
        while "ready (recovered nothing)" not in (tmp_path / "worker-1.log").read_text():
            assert second.poll() is None and time.monotonic() < until
            time.sleep(0.1)
        record = queue.get(queued.deploy_id)
        assert record["status"] == "deploying"
        assert record["worker"].startswith("deploy-worker-0@")
        assert server.connections == 1
        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
        until = time.monotonic() + 90
        while queue.get(queued.deploy_id)["status"] not in ("complete", "failed"):
            assert time.monotonic() < until, (tmp_path / "worker-1.log").read_text()
            time.sleep(0.1)
    finally:
        server.release.set()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
        server.shutdown()

    record = queue.get(queued.deploy_id)
    assert record["status"] == "failed"
    assert record["attempts"] == 2
    assert record["interruptions"] == 1
    assert record["worker"].startswith("deploy-worker-1@")
    assert "slow" in record["error"]["msg"]
    replay = replay_deploys(tmp_path / "data" / "state.git")
    assert replay.violations == []
    assert replay.starts == {(queued.deploy_id, 1): 1, (queued.deploy_id, 2): 1}
    assert replay.finishes == {queued.deploy_id: 1}
    assert queue.active() == []
