"""File sync across processes: ``gitstate serve`` with a local and a network client.

The server is real gunicorn on 127.0.0.1; the clients are the ``gitstate
sync`` children ``serve`` starts from ``file_sync.clients``: ``primary``
reads the storage repository, ``compiler`` fetches over smart HTTP with the
token and learns of new commits by the long poll.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pygit2
import pytest
import requests
from ruamel.yaml import YAML

from gitstate.cli.sample import SampleRepos, build
from gitstate.engine.storage import CODE_REF
from tests.support.filesync import assert_matches_storage, push
from tests.support.helpers import free_port, git, wait_for_http

TOKEN = "network-s3cret"


class Server:
    def __init__(self, root: Path, sample: SampleRepos) -> None:
        self.root = root
        self.sample = sample
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.datadir = root / "data"
        self.live = {"primary": root / "live" / "primary", "compiler": root / "live" / "compiler"}
        config = {
            "datadir": str(self.datadir),
            "listen": f"127.0.0.1:{self.port}",
            "workers": 1,
            "threads": 8,
            "state": {"fsync": False},
            "auth": {"enabled": False},
            "sources": {"puppet": {"remote": sample.control_url, "invalid_branches": "correct"}},
            "deploy": {
                "pool_size": 1,
                "timeouts": {"wait": 120, "sync": 60},
                "local_module_sources": [str(sample.modules)],
            },
            "file_sync": {
                "token": TOKEN,
                "long_poll_timeout": 20,
                "clients": [
                    {"name": "primary", "live": str(self.live["primary"])},
                    {
                        "name": "compiler",
                        "live": str(self.live["compiler"]),
                        "storage": self.base,
                    },
                ],
            },
        }
        self.config_path = root / "gitstate.yaml"
        with self.config_path.open("w") as stream:
            YAML(typ="safe").dump(config, stream)
        env = {**os.environ, "HOME": str(root), "GIT_CONFIG_NOSYSTEM": "1"}
        self.log = (root / "serve.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gitstate", "serve", "--config", str(self.config_path)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        wait_for_http(f"{self.base}/internal/health", timeout=60)

    def deploy(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        answer = requests.post(f"{self.base}/code-manager/v1/deploys", json=body, timeout=300)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def code_commit(self) -> str:
        repo = pygit2.Repository(str(self.datadir / "storage.git"))
        return str(repo.references[CODE_REF].target)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("filesync-remote")
    running = Server(root, build(root / "repos"))
    yield running
    running.stop()


def test_both_clients_sync_and_wait_returns_when_they_have(server: Server) -> None:
    answers = server.deploy({"deploy-all": True, "wait": True})
    assert {a["status"] for a in answers} == {"complete"}, answers
    assert not [a for a in answers if "error" in a], answers
    code = server.code_commit()
    for live in server.live.values():
        assert_matches_storage(live, server.datadir / "storage.git", code)
    # The network client fetched into its own copy, over HTTP.
    assert (server.live["compiler"] / ".gitstate-cache.git" / "HEAD").is_file()
    status = requests.get(f"{server.base}/code-manager/v1/deploys/status", timeout=30).json()
    clients = status["file-sync-client-status"]
    assert clients["all-synced"] is True
    assert sorted(clients["file-sync-clients"]) == ["compiler", "primary"]
    for item in clients["file-sync-clients"].values():
        assert item["synced-with-file-sync-storage"] is True
        assert item["last_check_in_time"].endswith("Z")
        assert sorted(d["environment"] for d in item["deployed"]) == [
            "development",
            "feature_login_banner",
            "production",
        ]


def test_long_poll_answers_when_a_new_code_commit_lands(server: Server, tmp_path: Path) -> None:
    server.deploy({"environments": ["production"], "wait": True})
    known = server.code_commit()
    answers: list[Any] = []

    def poll() -> None:
        answers.append(
            requests.get(
                f"{server.base}/file-sync/v1/latest-commit",
                params={"known": known, "timeout": "20"},
                headers={"X-Authentication": TOKEN},
                timeout=60,
            )
        )

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.3)  # let the request start waiting; correctness does not depend on it
    push(server.sample, tmp_path / "work", "production", {"data/common.yaml": "poll: 1\n"})
    server.deploy({"environments": ["production"], "wait": False})
    thread.join(60)
    (answer,) = answers
    assert answer.status_code == 200
    # changed is False only when the wait ran out without a new commit.
    assert answer.json()["changed"] is True
    assert answer.json()["code-commit"] != known
    # Unchanged storage: the poll is held, then answered with the same commit.
    same = requests.get(
        f"{server.base}/file-sync/v1/latest-commit",
        params={"known": answer.json()["code-commit"], "timeout": "0.2", "token": TOKEN},
        timeout=30,
    ).json()
    assert same == {"code-commit": answer.json()["code-commit"], "changed": False}


def test_git_transport_is_read_only_and_needs_the_token(server: Server, tmp_path: Path) -> None:
    url = f"{server.base}/file-sync/v1/git"
    header = ["-c", f"http.extraHeader=X-Authentication: {TOKEN}"]
    refs = git(*header, "ls-remote", url, CODE_REF)
    assert refs.split()[0] == server.code_commit()
    denied = subprocess.run(["git", "ls-remote", url], capture_output=True, text=True)
    assert denied.returncode != 0
    clone = tmp_path / "clone"
    git(*header, "clone", "-q", "--bare", url, str(clone))
    pushed = subprocess.run(
        ["git", *header, "--git-dir", str(clone), "push", url, f"{CODE_REF}:refs/heads/evil"],
        capture_output=True,
        text=True,
    )
    assert pushed.returncode != 0


def test_rollback_reaches_both_clients(server: Server, tmp_path: Path) -> None:
    first = push(server.sample, tmp_path / "work", "production", {"data/common.yaml": "v: 1\n"})
    server.deploy({"environments": ["production"], "wait": True})
    push(server.sample, tmp_path / "work", "production", {"data/common.yaml": "v: 2\n"})
    server.deploy({"environments": ["production"], "wait": True})
    for live in server.live.values():
        assert (live / "environments/production/data/common.yaml").read_text() == "v: 2\n"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gitstate",
            "rollback",
            "production",
            "--to",
            first[:10],
            "--wait",
            "--service-url",
            server.base,
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for live in server.live.values():
        assert (live / "environments/production/data/common.yaml").read_text() == "v: 1\n"
    history = git("log", "--format=%s", "-3", "state", cwd=server.datadir / "state.git")
    assert f"rolled back production to {first[:12]}" in history
    status = requests.get(f"{server.base}/code-manager/v1/deploys/status", timeout=30).json()
    deployed = {d["environment"]: d for d in status["file-sync-storage-status"]["deployed"]}
    assert deployed["production"]["deploy-signature"] == first


def test_wait_reports_failed_where_a_client_refuses_the_environment(
    server: Server, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    git("clone", "-q", str(server.sample.control), str(work))
    git("push", "-q", "origin", "origin/production:refs/heads/refused", cwd=work)
    # Something the compiler's client cannot replace stands where the versions go.
    blocker = server.live["compiler"] / ".versions" / "refused"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory\n")
    try:
        (answer,) = server.deploy({"environments": ["refused"], "wait": True})
        assert answer["status"] == "failed", answer
        assert answer["error"]["kind"] == "puppetlabs.code-manager/file-sync-refused"
        assert sorted(answer["error"]["details"]["refusing-clients"]) == ["compiler"]
        assert "compiler" in answer["error"]["msg"]
        # The other client has it; one refusal does not hide that.
        assert (server.live["primary"] / "environments" / "refused" / "Puppetfile").exists()
    finally:
        blocker.unlink()
        git("push", "-q", "origin", ":refs/heads/refused", cwd=work)
    answers = server.deploy({"deploy-all": True, "wait": True})
    assert {a["status"] for a in answers} == {"complete"}, answers
