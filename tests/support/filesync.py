"""The file-sync harness: the app in process with one deploy worker thread.

Shared by the API, system and interop tests of file sync: a config on the
sample repositories, pushes to the control repository, and comparisons of a
live directory with what storage published.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pygit2

from gitstate.cli.sample import SampleRepos
from gitstate.config import Config
from gitstate.deploys.worker import DeployWorker
from gitstate.engine.storage import CODE_REF, Storage
from gitstate.services import Services
from gitstate.web.app import create_app
from tests.support.client import Client
from tests.support.helpers import git

CM = "/code-manager/v1"


def make_config(tmp_path: Path, sample: SampleRepos, **file_sync: Any) -> Config:
    sync_timeout = file_sync.pop("sync_timeout", 30)
    return Config.from_mapping(
        {
            "datadir": str(tmp_path / "data"),
            "state": {"fsync": False},
            "auth": {"enabled": False},
            "sources": {"puppet": {"remote": sample.control_url, "invalid_branches": "correct"}},
            "deploy": {
                "timeouts": {"wait": 60, "sync": sync_timeout},
                "local_module_sources": [str(sample.modules)],
            },
            "file_sync": {"token": "s3cret", **file_sync},
        }
    )


class Harness:
    """The app in-process with one deploy worker thread."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.services = Services(config)
        self.client = Client(create_app(services=self.services))
        code_manager = self.services.code_manager
        self.worker = DeployWorker(
            code_manager.queue, code_manager.engine, 0, config.datadir / "locks"
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop,), daemon=True)
        self.thread.start()

    @property
    def storage_path(self) -> Path:
        return self.config.datadir / "storage.git"

    def deploy(self, *environments: str, wait: bool = True) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"wait": wait}
        if environments:
            body["environments"] = list(environments)
        else:
            body["deploy-all"] = True
        result = self.client.simulate_post(f"{CM}/deploys", json=body)
        assert result.status_code == 200, result.text
        return result.json

    def code_commit(self) -> str:
        repo = pygit2.Repository(str(self.storage_path))
        return str(repo.references[CODE_REF].target)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def push(sample: SampleRepos, work: Path, branch: str, files: dict[str, str | None]) -> str:
    """Commit ``files`` (None deletes) on ``branch`` of the control repo; return the sha."""
    if not work.exists():
        git("clone", "-q", str(sample.control), str(work))
    git("checkout", "-q", branch, cwd=work)
    git("pull", "-q", "--ff-only", "origin", branch, cwd=work)
    for name, content in files.items():
        path = work / name
        if content is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", f"change {', '.join(files)}", cwd=work)
    git("push", "-q", "origin", branch, cwd=work)
    return git("rev-parse", "HEAD", cwd=work).strip()


def live_files(root: Path) -> dict[str, bytes]:
    """Return path → bytes under ``root`` (symlinks as ``-> target``)."""
    out = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(directory, d))]:
            full = os.path.join(directory, name)
            rel = os.path.relpath(full, root)
            if os.path.islink(full):
                out[rel] = b"-> " + os.readlink(full).encode()
            else:
                out[rel] = Path(full).read_bytes()
    return out


def assert_matches_storage(live: Path, storage_path: Path, code_commit: str) -> None:
    """Every environment of ``code_commit`` is in ``live`` exactly, and nothing else."""
    storage = Storage(storage_path)
    published = storage.published(code_commit)
    assert sorted(os.listdir(live / "environments")) == sorted(published)
    for env, item in published.items():
        assert live_files(live / "environments" / env) == storage.files(item.tree), env
