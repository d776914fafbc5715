"""File sync on one host: live dirs, versions, hard links, the local client, wait."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import pygit2
import pytest

from gitstate.cli.sample import SampleRepos
from gitstate.config import Config
from gitstate.deploys.worker import DeployWorker
from gitstate.engine.storage import CODE_REF, Storage
from gitstate.filesync.client import LocalSource, SyncClient
from gitstate.filesync.livedir import LiveDir
from gitstate.services import Services
from gitstate.web.app import create_app
from tests.helpers import git

CM = "/code-manager/v1"


def make_config(tmp_path: Path, sample: SampleRepos, **file_sync: Any) -> Config:
    sync_timeout = file_sync.pop("sync_timeout", 30)
    return Config.from_mapping(
        {
            "datadir": str(tmp_path / "data"),
            "state": {"fsync": False},
            "auth": {"enabled": False},
            "sources": {"puppet": {"remote": sample.control_url, "invalid_branches": "correct"}},
            "deploy": {"timeouts": {"wait": 60, "sync": sync_timeout}},
            "file_sync": {"token": "s3cret", **file_sync},
        }
    )


class Harness:
    """The app in-process with one deploy worker thread."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.services = Services(config)
        self.client = falcon.testing.TestClient(create_app(services=self.services))
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


@pytest.fixture
def harness(tmp_path: Path, sample: SampleRepos) -> Iterator[Harness]:
    running = Harness(make_config(tmp_path, sample))
    yield running
    running.close()


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


def test_apply_writes_every_environment_then_only_what_changed(
    harness: Harness, sample: SampleRepos, tmp_path: Path
) -> None:
    harness.deploy()
    storage = pygit2.Repository(str(harness.storage_path))
    live = LiveDir(tmp_path / "live")
    with live.locked():
        first = live.apply(storage, harness.code_commit())
        assert sorted(first.updated) == ["development", "feature_login_banner", "production"]
        # Environments share modules: files already written in this run are linked.
        assert first.linked > 0
        assert_matches_storage(live.root, harness.storage_path, harness.code_commit())
        before = live_files(live.root / "environments" / "production")
        old_version = os.path.realpath(live.root / "environments" / "production")

        push(sample, tmp_path / "work", "production", {"data/common.yaml": "changed: true\n"})
        harness.deploy("production")
        second = live.apply(storage, harness.code_commit())
        assert second.updated == ["production"]
        # The changed file and the deploy record (new times) are written; the rest is linked.
        assert second.written == 2
        assert second.linked == len(before) - 2
        new_version = os.path.realpath(live.root / "environments" / "production")
        assert new_version != old_version
        for rel in before:
            if rel in ("data/common.yaml", ".r10k-deploy.json"):
                continue
            old_stat = os.lstat(os.path.join(old_version, rel))
            new_stat = os.lstat(os.path.join(new_version, rel))
            assert old_stat.st_ino == new_stat.st_ino, rel
        assert (
            os.lstat(os.path.join(new_version, "data/common.yaml")).st_ino
            != os.lstat(os.path.join(old_version, "data/common.yaml")).st_ino
        )
        assert_matches_storage(live.root, harness.storage_path, harness.code_commit())

        # Nothing changed: nothing written.
        third = live.apply(storage, harness.code_commit(), verify=True)
        assert (third.updated, third.written, third.linked) == ([], 0, 0)

        # A deleted branch: the environment disappears with its versions.
        git("push", "-q", "origin", "--delete", "development", cwd=tmp_path / "work")
        harness.deploy()
        fourth = live.apply(storage, harness.code_commit())
        assert fourth.removed == ["development"]
        assert not os.path.lexists(live.root / "environments" / "development")
        assert not (live.root / ".versions" / "development").exists()
        assert_matches_storage(live.root, harness.storage_path, harness.code_commit())


def test_versions_are_kept_pruned_and_reused(
    harness: Harness, sample: SampleRepos, tmp_path: Path
) -> None:
    harness.deploy("production")
    storage = pygit2.Repository(str(harness.storage_path))
    live = LiveDir(tmp_path / "live", keep_versions=2)
    commits = [harness.code_commit()]
    for number in range(3):
        push(sample, tmp_path / "work", "production", {"data/common.yaml": f"n: {number}\n"})
        harness.deploy("production")
        commits.append(harness.code_commit())
    with live.locked():
        for commit in commits:
            live.apply(storage, commit)
        versions = [
            name
            for name in os.listdir(live.root / ".versions" / "production")
            if not name.endswith(".json")
        ]
        assert len(versions) == 2
        # Going back to the previous code-commit swaps to the kept version: nothing written.
        back = live.apply(storage, commits[-2])
        assert back.updated == ["production"]
        assert (back.written, back.linked) == (0, 0)
        assert_matches_storage(live.root, harness.storage_path, commits[-2])


def test_local_edits_are_overwritten_and_reported(harness: Harness, tmp_path: Path) -> None:
    harness.deploy("production")
    storage = pygit2.Repository(str(harness.storage_path))
    live = LiveDir(tmp_path / "live")
    with live.locked():
        live.apply(storage, harness.code_commit())
        env = live.root / "environments" / "production"
        (env / "manifests" / "site.pp").write_text("node default { }\n")
        (env / "stray.txt").write_text("left by hand\n")
        (env / "hiera.yaml").unlink()
        report = live.apply(storage, harness.code_commit(), verify=True)
        changes = {(edit.path, edit.change) for edit in report.local_edits}
        assert changes == {
            ("manifests/site.pp", "modified"),
            ("stray.txt", "added"),
            ("hiera.yaml", "removed"),
        }
        assert_matches_storage(live.root, harness.storage_path, harness.code_commit())
        state = live.state()
        assert {edit["path"] for edit in state["local_edits"]} == {
            "manifests/site.pp",
            "stray.txt",
            "hiera.yaml",
        }


def test_symlinks_leaving_the_environment_are_not_written(tmp_path: Path) -> None:
    # Storage refuses such trees; the client checks again on its own.
    repo = pygit2.init_repository(str(tmp_path / "storage.git"), bare=True)
    blob = repo.create_blob(b"hello\n")
    inside = repo.create_blob(b"../README")
    outside = repo.create_blob(b"../../../etc/passwd")
    sub = repo.TreeBuilder()
    sub.insert("ok", inside, pygit2.enums.FileMode.LINK)
    sub.insert("escape", outside, pygit2.enums.FileMode.LINK)
    env = repo.TreeBuilder()
    env.insert("README", blob, pygit2.enums.FileMode.BLOB)
    env.insert("dir", sub.write(), pygit2.enums.FileMode.TREE)
    env_tree = env.write()
    envs = repo.TreeBuilder()
    envs.insert("production", env_tree, pygit2.enums.FileMode.TREE)
    manifest = repo.create_blob(
        b'{"environments": {"production": {"commit": "", "tree": "%s"}}}' % str(env_tree).encode()
    )
    root = repo.TreeBuilder()
    root.insert("environments", envs.write(), pygit2.enums.FileMode.TREE)
    root.insert("environments.json", manifest, pygit2.enums.FileMode.BLOB)
    sig = pygit2.Signature("t", "t@example.test")
    commit = repo.create_commit(CODE_REF, sig, sig, "code", root.write(), [])
    live = LiveDir(tmp_path / "live")
    with live.locked():
        report = live.apply(repo, str(commit))
    assert report.refused_links == ["dir/escape"]
    production = live.root / "environments" / "production"
    assert os.readlink(production / "dir" / "ok") == "../README"
    assert not os.path.lexists(production / "dir" / "escape")


def test_readers_never_see_a_mix_of_two_versions(
    harness: Harness, sample: SampleRepos, tmp_path: Path
) -> None:
    # Three versions whose marker files all say which version they belong to.
    commits = []
    for number in range(3):
        marker = f"version {number}\n"
        push(
            sample,
            tmp_path / "work",
            "production",
            {f"markers/m{index}.txt": marker for index in range(20)},
        )
        harness.deploy("production")
        commits.append(harness.code_commit())
    storage = pygit2.Repository(str(harness.storage_path))
    live = LiveDir(tmp_path / "live", keep_versions=3)
    link = live.root / "environments" / "production"
    done = threading.Event()
    seen: list[set[bytes]] = []
    errors: list[str] = []

    def reader() -> None:
        while not done.is_set():
            try:
                # Resolve the environment once, as a compile does with lockless deploys.
                root = os.path.realpath(link)
            except OSError as ex:
                errors.append(f"link missing: {ex}")
                continue
            if not os.path.isdir(root):
                errors.append(f"{root} is not a complete version")
                continue
            markers = {
                Path(root, "markers", name).read_bytes()
                for name in sorted(os.listdir(os.path.join(root, "markers")))
            }
            seen.append(markers)

    with live.locked():
        live.apply(storage, commits[0])
        threads = [threading.Thread(target=reader) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            for round_ in range(30):
                live.apply(storage, commits[round_ % 3])
        finally:
            done.set()
            for thread in threads:
                thread.join(30)
    assert not errors
    assert seen
    assert all(len(markers) == 1 for markers in seen), [m for m in seen if len(m) > 1][:3]
    assert len({next(iter(markers)) for markers in seen}) >= 2


def test_local_client_follows_deploys_and_checks_in(tmp_path: Path, sample: SampleRepos) -> None:
    config = make_config(
        tmp_path,
        sample,
        clients=[{"name": "primary", "live": str(tmp_path / "live")}],
        reconcile_interval=60,
    )
    harness = Harness(config)
    stop = threading.Event()
    settings = config.file_sync
    source = LocalSource(harness.storage_path)
    client = SyncClient("primary", LiveDir(tmp_path / "live"), source, settings)
    thread = threading.Thread(target=client.run, args=(stop,), daemon=True)
    thread.start()
    try:
        # wait: true returns once the client has the new code-commit.
        answers = harness.deploy()
        assert {answer["status"] for answer in answers} == {"complete"}
        assert not [answer for answer in answers if "error" in answer]
        code = harness.code_commit()
        assert LiveDir(tmp_path / "live").state()["code_commit"] == code
        assert_matches_storage(tmp_path / "live", harness.storage_path, code)

        status = harness.client.simulate_get(f"{CM}/deploys/status").json
        clients = status["file-sync-client-status"]
        assert clients["all-synced"] is True
        primary = clients["file-sync-clients"]["primary"]
        assert primary["synced-with-file-sync-storage"] is True
        assert primary["last_check_in_time"].endswith("Z")
        assert sorted(item["environment"] for item in primary["deployed"]) == [
            "development",
            "feature_login_banner",
            "production",
        ]
        # Check-ins stay out of the state branch.
        log = git("log", "--format=%s", "state", cwd=config.state_repo)
        assert "check" not in log.lower()
        assert (config.datadir / "clients" / "primary.json").is_file()

        # The watcher notices a new code-commit without any deploy wait.
        push(sample, tmp_path / "work", "development", {"README.md": "news\n"})
        harness.deploy("development", wait=False)
        until = time.monotonic() + 30
        while LiveDir(tmp_path / "live").state().get("code_commit") == code:
            assert time.monotonic() < until, "the client did not follow the new code-commit"
            time.sleep(0.05)
        assert (tmp_path / "live" / "environments" / "development" / "README.md").read_text() == (
            "news\n"
        )
    finally:
        stop.set()
        source.close()
        thread.join(30)
        harness.close()


def test_wait_times_out_when_a_client_never_syncs(tmp_path: Path, sample: SampleRepos) -> None:
    config = make_config(
        tmp_path,
        sample,
        clients=[{"name": "ghost", "live": str(tmp_path / "ghost")}],
        sync_timeout=1,
    )
    harness = Harness(config)
    try:
        (answer,) = harness.deploy("production")
        assert answer["status"] == "complete"
        assert answer["error"]["kind"] == "puppetlabs.code-manager/timeout"
        assert answer["error"]["details"]["unsynced-clients"] == ["ghost"]
        status = harness.client.simulate_get(f"{CM}/deploys/status").json
        ghost = status["file-sync-client-status"]["file-sync-clients"]["ghost"]
        assert ghost["last_check_in_time"] is None
        assert ghost["synced-with-file-sync-storage"] is False
        assert status["file-sync-client-status"]["all-synced"] is False
    finally:
        harness.close()


def test_file_sync_endpoints_need_the_token(harness: Harness) -> None:
    client = harness.client
    assert client.simulate_get("/file-sync/v1/latest-commit").status_code == 401
    bad = client.simulate_get("/file-sync/v1/latest-commit", headers={"X-Authentication": "no"})
    assert bad.status_code == 401
    good = client.simulate_get(
        "/file-sync/v1/latest-commit", params={"token": "s3cret", "timeout": "0"}
    )
    assert good.status_code == 200
    assert good.json == {"code-commit": None, "changed": False}
    refs = client.simulate_get(
        "/file-sync/v1/git/info/refs",
        params={"service": "git-receive-pack"},
        headers={"X-Authentication": "s3cret"},
    )
    assert refs.status_code == 403
    push_ = client.simulate_post(
        "/file-sync/v1/git/git-receive-pack", headers={"X-Authentication": "s3cret"}
    )
    assert push_.status_code == 403
    check_in = client.simulate_post(
        "/file-sync/v1/check-ins",
        json={"name": "../etc", "code_commit": None},
        headers={"X-Authentication": "s3cret"},
    )
    assert check_in.status_code == 400
