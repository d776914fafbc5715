"""File sync on one host: live dirs, versions, hard links, the local client, wait."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pygit2
from pygit2.enums import FileMode

from gitstate.cli.sample import SampleRepos
from gitstate.engine.sources import ENVIRONMENT_NAME_MAX
from gitstate.engine.storage import CODE_REF
from gitstate.filesync.client import LocalSource, SyncClient
from gitstate.filesync.livedir import LiveDir
from gitstate.settings import FileSyncSettings
from tests.support.deploy_fixtures import Link
from tests.support.filesync import (
    CM,
    Harness,
    assert_matches_storage,
    live_files,
    make_config,
    push,
)
from tests.support.helpers import git


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


def crafted_storage(
    path: Path, environments: dict[str, dict[str, bytes | Link]], parent: str | None = None
) -> tuple[pygit2.Repository, str]:
    """Publish trees straight into a storage repository, bypassing the engine.

    Returns the repository and the new code-commit.
    """
    repo = pygit2.init_repository(str(path), bare=True)
    envs = repo.TreeBuilder()
    for name, files in environments.items():
        envs.insert(name, _tree(repo, files), FileMode.TREE)
    root = repo.TreeBuilder()
    root.insert("environments", envs.write(), FileMode.TREE)
    sig = pygit2.Signature("t", "t@example.test")
    parents = [pygit2.Oid(hex=parent)] if parent else []
    commit = repo.create_commit(None, sig, sig, "code", root.write(), parents)
    repo.references.create(CODE_REF, commit, force=True)
    return repo, str(commit)


def _tree(repo: pygit2.Repository, files: dict[str, bytes | Link]) -> pygit2.Oid:
    nested: dict[str, dict[str, bytes | Link]] = {}
    builder = repo.TreeBuilder()
    for path, content in files.items():
        head, _, rest = path.partition("/")
        if rest:
            nested.setdefault(head, {})[rest] = content
        elif isinstance(content, Link):
            builder.insert(head, repo.create_blob(content.target.encode()), FileMode.LINK)
        else:
            builder.insert(head, repo.create_blob(content), FileMode.BLOB)
    for name, inside in nested.items():
        builder.insert(name, _tree(repo, inside), FileMode.TREE)
    return builder.write()


DEEP = "a/b/c/d/e/f/g/h/i/j"
HOSTILE_LINKS: dict[str, dict[str, bytes | Link]] = {
    "textual": {"README": b"x\n", "dir/escape": Link("../../../etc/passwd")},
    "chained": {
        f"{DEEP}/l": Link("/".join([".."] * 10)),
        "x": Link("/".join([DEEP, "l", *[".."] * 10, "etc/passwd"])),
    },
    "chained_dir": {
        f"{DEEP}/l": Link("/".join([".."] * 10)),
        "x": Link("/".join([DEEP, "l", *[".."] * 10, "etc"])),
    },
    "looped": {"one": Link("two"), "two": Link("one")},
}


def test_a_client_refuses_environments_whose_links_leave_and_syncs_the_others(
    tmp_path: Path,
) -> None:
    # Storage refuses such trees; a client never trusts that alone.
    production = {"README": b"hello\n", "dir/ok": Link("../README"), "up": Link("dir/../dir/ok")}
    repo, commit = crafted_storage(
        tmp_path / "storage.git", {"production": production, **HOSTILE_LINKS}
    )
    live = LiveDir(tmp_path / "live")
    with live.locked():
        report = live.apply(repo, commit)
    assert report.updated == ["production"]
    assert sorted(report.failed) == sorted(HOSTILE_LINKS)
    assert "points outside the environment" in report.failed["chained"]
    assert "loop" in report.failed["looped"]
    assert sorted(os.listdir(live.root / "environments")) == ["production"]
    assert not os.path.lexists(live.root / ".versions" / "chained")
    shown = live.root / "environments" / "production"
    assert (shown / "up").read_bytes() == b"hello\n"
    assert live.state()["failed"] == report.failed
    assert live.state()["code_commit"] == commit


def test_a_client_keeps_syncing_when_one_environment_cannot_be_written(tmp_path: Path) -> None:
    longest = "n" * ENVIRONMENT_NAME_MAX
    too_long = "l" * 250
    envs: dict[str, dict[str, bytes | Link]] = {
        name: {"README": name.encode()} for name in ("production", "blocked", longest, too_long)
    }
    _repo, first = crafted_storage(tmp_path / "data" / "storage.git", envs)
    live = LiveDir(tmp_path / "live")
    live.root.mkdir()
    (live.root / ".versions").mkdir()
    # Something the client cannot replace stands where blocked's versions go.
    (live.root / ".versions" / "blocked").write_text("not a directory\n")
    source = LocalSource(tmp_path / "data" / "storage.git")
    client = SyncClient("primary", live, source, FileSyncSettings())
    try:
        with live.locked():
            report = client.sync(first, verify=False)
            client.check_in(force=True)
        assert sorted(report.updated) == sorted(["production", longest])
        assert sorted(report.failed) == sorted(["blocked", too_long])
        assert "bytes long" in report.failed[too_long]
        assert (live.root / "environments" / longest / "README").read_bytes() == longest.encode()
        check_in = source.check_ins.get("primary")
        assert check_in is not None
        assert check_in["code_commit"] == first
        assert sorted(check_in["failed_environments"]) == sorted(["blocked", too_long])

        # Once the obstacle is gone, the next sync writes blocked, though its tree did not change.
        (live.root / ".versions" / "blocked").unlink()
        del envs[too_long]
        envs["staging"] = {"README": b"staging"}
        _repo, second = crafted_storage(tmp_path / "data" / "storage.git", envs, parent=first)
        with live.locked():
            report = client.sync(second, verify=False)
            client.check_in(force=True)
        assert sorted(report.updated) == ["blocked", "staging"]
        assert report.failed == {}
        check_in = source.check_ins.get("primary")
        assert check_in is not None
        assert check_in["code_commit"] == second
        assert check_in["failed_environments"] == {}
    finally:
        source.close()


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
