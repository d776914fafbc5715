"""File sync on one host: live dirs, versions, hard links, the local client, wait."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest

from gitstate.cli.sample import SampleRepos
from gitstate.engine.storage import CODE_REF
from gitstate.filesync.client import LocalSource, SyncClient
from gitstate.filesync.livedir import LiveDir
from tests.support.filesync import (
    CM,
    Harness,
    assert_matches_storage,
    live_files,
    make_config,
    push,
)
from tests.support.helpers import git


@pytest.fixture
def harness(tmp_path: Path, sample: SampleRepos) -> Iterator[Harness]:
    running = Harness(make_config(tmp_path, sample))
    yield running
    running.close()


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
