"""File sync with many environments: work per change, cheap checks, bounded check-ins.

Storage content is written with the storage API (many environments sharing
trees, as environments share modules), so hundreds of environments cost
milliseconds to publish.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pygit2
import pytest
import requests
from pygit2.enums import FileMode

from gitstate.config import Config
from gitstate.engine.storage import Published, Storage
from gitstate.filesync.checkins import CheckIns
from gitstate.filesync.client import (
    CACHE,
    CHECK_IN_PATH,
    RemoteSource,
    SyncClient,
    check_in_report,
)
from gitstate.filesync.livedir import LiveDir
from gitstate.services import Services
from gitstate.settings import FileSyncSettings
from gitstate.web.app import create_app
from gitstate.web.request import MAX_BODY
from tests.support.filesync import live_files
from tests.support.helpers import free_port, serve_app

TOKEN = "scale-s3cret"
MODULE = {f"manifests/part{index}.pp": f"class shared::part{index} {{}}\n" for index in range(12)}


def env_tree(storage: Storage, files: Mapping[str, str]) -> str:
    """Write an environment's tree: the shared module plus ``files``."""
    blobs = {
        f"modules/shared/{path}": (storage.write_blob(text.encode()), FileMode.BLOB)
        for path, text in MODULE.items()
    }
    blobs.update(
        {path: (storage.write_blob(text.encode()), FileMode.BLOB) for path, text in files.items()}
    )
    return str(storage.write_tree(blobs))


def publish(storage: Storage, trees: Mapping[str, str | None]) -> str:
    """Publish environment → tree (None removes it); return the code-commit."""
    updates = {
        env: None if tree is None else Published(env, "1" * 40, tree, "2" * 40, f"key-{tree}")
        for env, tree in trees.items()
    }
    code = storage.publish(updates, "publish")
    assert code is not None
    return code


def env_names(count: int) -> list[str]:
    return [f"env_{index:04d}" for index in range(count)]


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(tmp_path / "data" / "storage.git")


def _repo(storage: Storage) -> pygit2.Repository:
    return pygit2.Repository(str(storage.path))


def test_a_sync_looks_only_at_the_environments_whose_tree_changed(
    storage: Storage, tmp_path: Path
) -> None:
    common = env_tree(storage, {"data/common.yaml": "a: 1\n"})
    first = publish(storage, dict.fromkeys(env_names(200), common))
    live = LiveDir(tmp_path / "live")
    with live.locked():
        cold = live.apply(_repo(storage), first)
        assert len(cold.updated) == 200
        # 200 environments of 13 files, of 13 distinct blobs: written once each.
        assert (cold.written, cold.linked) == (13, 200 * 13 - 13)
        before = {env: os.readlink(live.environments / env) for env in env_names(200)}

        changed = env_tree(storage, {"data/common.yaml": "a: 2\n"})
        second = publish(storage, {"env_0042": changed})
        report = live.apply(_repo(storage), second)
        assert report.updated == ["env_0042"]
        assert report.examined == 1
        # The changed file is written; every other file is a link to what is on disk.
        assert (report.written, report.linked) == (1, 12)
        after = {env: os.readlink(live.environments / env) for env in env_names(200)}
        assert {env for env in after if after[env] != before[env]} == {"env_0042"}
        assert live_files(live.environments / "env_0042")["data/common.yaml"] == b"a: 2\n"

        # A removed environment is the only other thing a sync looks at.
        third = publish(storage, {"env_0007": None})
        gone = live.apply(_repo(storage), third)
        assert (gone.removed, gone.examined, gone.updated) == (["env_0007"], 0, [])
        assert not os.path.lexists(live.environments / "env_0007")


def test_a_sync_to_the_code_commit_shown_reads_no_version(storage: Storage, tmp_path: Path) -> None:
    tree = env_tree(storage, {"data/common.yaml": "a: 1\n"})
    code = publish(storage, dict.fromkeys(env_names(50), tree))
    live = LiveDir(tmp_path / "live")
    with live.locked():
        live.apply(_repo(storage), code)
        # Spoil what a sync would have to read to look at a version.
        for marker in live.versions.glob("*/*.json"):
            marker.write_text("not json")
        again = live.apply(_repo(storage), code)
        assert (again.examined, again.updated, again.written, again.linked) == (0, [], 0, 0)
        # The full check does read them: versions it cannot vouch for are rebuilt.
        checked = live.apply(_repo(storage), code, verify=True)
        assert checked.examined == 50
        assert sorted(checked.updated) == env_names(50)
        assert checked.written == 0  # every blob is still an object on disk


def test_an_edit_in_place_is_found_in_every_environment_showing_it(
    storage: Storage, tmp_path: Path
) -> None:
    code = publish(
        storage,
        {
            "production": env_tree(storage, {"data/common.yaml": "a: 1\n"}),
            "development": env_tree(storage, {"data/common.yaml": "a: 2\n"}),
        },
    )
    live = LiveDir(tmp_path / "live")
    with live.locked():
        live.apply(_repo(storage), code)
        production = live.environments / "production"
        development = live.environments / "development"
        # Both environments hold the shared module's files: one inode for both.
        with (production / "modules/shared/manifests/part3.pp").open("a") as stream:
            stream.write("# edited on the server\n")
        (development / "data" / "stray.yaml").write_text("x: 1\n")
        (development / "modules/shared/manifests/part5.pp").unlink()

        report = live.apply(_repo(storage), code, verify=True)
        found = {(edit.environment, edit.path, edit.change) for edit in report.local_edits}
        assert found == {
            ("production", "modules/shared/manifests/part3.pp", "modified"),
            ("development", "modules/shared/manifests/part3.pp", "modified"),
            ("development", "data/stray.yaml", "added"),
            ("development", "modules/shared/manifests/part5.pp", "removed"),
        }
        assert sorted(report.updated) == ["development", "production"]
        for env in ("production", "development"):
            files = live_files(live.environments / env)
            assert files == storage.files(storage.published_one(env).tree), env
        # Nothing left to report.
        assert live.apply(_repo(storage), code, verify=True).local_edits == []


def test_touching_a_file_is_hashed_once_and_is_not_an_edit(
    storage: Storage, tmp_path: Path
) -> None:
    code = publish(storage, {"production": env_tree(storage, {"data/common.yaml": "a: 1\n"})})
    live = LiveDir(tmp_path / "live")
    with live.locked():
        live.apply(_repo(storage), code)
        live.apply(_repo(storage), code, verify=True)
        quiet = live.apply(_repo(storage), code, verify=True)
        assert (quiet.hashed, quiet.local_edits, quiet.updated) == (0, [], [])
        os.utime(live.environments / "production" / "data" / "common.yaml")
        touched = live.apply(_repo(storage), code, verify=True)
        assert (touched.hashed, touched.local_edits, touched.updated) == (1, [], [])
        assert live.apply(_repo(storage), code, verify=True).hashed == 0


def test_edits_in_a_version_being_replaced_are_reported_with_the_deploy(
    storage: Storage, tmp_path: Path
) -> None:
    first = publish(storage, {"production": env_tree(storage, {"data/common.yaml": "a: 1\n"})})
    live = LiveDir(tmp_path / "live")
    with live.locked():
        live.apply(_repo(storage), first)
        production = live.environments / "production"
        (production / "modules/shared/manifests/part0.pp").write_text("class edited {}\n")
        (production / "notes.txt").write_text("left by hand\n")
        second = publish(storage, {"production": env_tree(storage, {"data/common.yaml": "a: 2\n"})})
        report = live.apply(_repo(storage), second)  # no full check
        found = {(edit.path, edit.change) for edit in report.local_edits}
        assert found == {
            ("modules/shared/manifests/part0.pp", "modified"),
            ("notes.txt", "added"),
        }
        # The edited file was not carried into the new version.
        assert live_files(production) == storage.files(storage.published_one("production").tree)
        assert live.state()["local_edits"]


def test_a_full_check_costs_at_most_its_budget_of_a_core(tmp_path: Path) -> None:
    settings = FileSyncSettings(reconcile_interval=60.0, reconcile_budget=0.02)
    client = SyncClient("c", LiveDir(tmp_path / "live"), _NoSource(), settings)
    assert client._full_interval(0.3) == 60.0
    assert client._full_interval(3.0) == pytest.approx(150.0)
    with pytest.raises(ValueError, match=r"file_sync\.reconcile_budget"):
        Config.from_mapping({"datadir": "/x", "file_sync": {"reconcile_budget": 0}})


class _NoSource:
    def check_in(self, name: str, report: Mapping[str, Any]) -> None:
        raise AssertionError("not used")


def test_a_check_in_is_woken_by_a_file_another_process_writes(tmp_path: Path) -> None:
    check_ins = CheckIns(tmp_path / "clients")
    check_ins.watch()
    try:
        seen = check_ins.generation
        writer = threading.Timer(
            0.2,
            lambda: CheckIns(tmp_path / "clients").record("compiler", {"code_commit": None}),
        )
        writer.start()
        # The writer is another CheckIns, as another process's would be: only
        # the directory's inotify event can end this wait before its timeout.
        assert check_ins.wait_for_change(seen, 120) != seen
        writer.join()
        assert check_ins.get("compiler") is not None
    finally:
        check_ins.close()


# -- a remote client with 1,000 environments, over HTTP -------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Services]]:
    port = free_port()
    config = Config.from_mapping(
        {
            "datadir": str(tmp_path / "data"),
            "state": {"fsync": False},
            "auth": {"enabled": False},
            "file_sync": {
                "token": TOKEN,
                "clients": [
                    {
                        "name": "compiler",
                        "live": str(tmp_path / "live"),
                        "storage": f"http://127.0.0.1:{port}",
                    }
                ],
            },
        }
    )
    services = Services(config)
    with serve_app(create_app(services=services), port) as base:
        yield base, services


def test_a_remote_client_with_1000_environments_checks_in_and_is_synced(
    server: tuple[str, Services], tmp_path: Path
) -> None:
    base, services = server
    storage = Storage(tmp_path / "data" / "storage.git")
    names = env_names(1000)
    trees = [env_tree(storage, {"data/common.yaml": f"group: {group}\n"}) for group in range(10)]
    code = publish(storage, {env: trees[index % 10] for index, env in enumerate(names)})
    settings = services.config.file_sync
    live = LiveDir(tmp_path / "live")
    source = RemoteSource(base, TOKEN, live.root / CACHE)
    client = SyncClient("compiler", live, source, settings)
    with live.locked():
        report = client.sync(code, verify=False)
        assert len(report.updated) == 1000
        client.check_in(force=True)

    status = requests.get(f"{base}/code-manager/v1/deploys/status", timeout=60).json()
    clients = status["file-sync-client-status"]
    assert clients["all-synced"] is True
    compiler = clients["file-sync-clients"]["compiler"]
    assert compiler["synced-with-file-sync-storage"] is True
    assert compiler["code-commit"] == code
    assert sorted(item["environment"] for item in compiler["deployed"]) == names
    assert {item["environment-commit"] for item in compiler["deployed"]} == {"1" * 40}
    # What wait: true deploys wait for.
    assert services.file_sync.wait_for_clients([code], 60) == []


def test_a_check_in_stays_small_whatever_the_live_directory_holds(
    server: tuple[str, Services],
) -> None:
    base, _services = server
    edits = [
        {"environment": f"env_{index:04d}", "path": "x" * 2000, "change": "modified"}
        for index in range(100)
    ]
    report = check_in_report({"code_commit": "a" * 40, "local_edits": edits})
    body = json.dumps({"name": "compiler", **report}).encode()
    assert len(body) <= MAX_BODY
    assert report["local_edits_total"] == 100
    assert 0 < len(report["local_edits"]) < 100
    answer = requests.post(
        base + CHECK_IN_PATH, data=body, headers={"X-Authentication": TOKEN}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["local_edits_total"] == 100


def test_a_blob_linked_more_often_than_the_file_system_allows_gets_a_second_object(
    storage: Storage, tmp_path: Path
) -> None:
    limit = os.pathconf(tmp_path, "PC_LINK_MAX")
    if limit > 100_000:
        pytest.skip(f"this file system allows {limit} links to one file")
    same = storage.write_blob(b"# the same in every module\n")
    tree = str(
        storage.write_tree({f"m{index}/LICENSE": (same, FileMode.BLOB) for index in range(3)})
    )
    live = LiveDir(tmp_path / "live")
    with live.locked():
        live.apply(_repo(storage), publish(storage, {"production": tree}))
        shared = live.environments / "production" / "m0" / "LICENSE"
        filler = tmp_path / "filler"
        filler.mkdir()
        for index in range(limit - os.lstat(shared).st_nlink - 1):
            os.link(shared, filler / str(index))
        # One link left: the second environment's second file needs another copy.
        report = live.apply(_repo(storage), publish(storage, {"development": tree}))
        assert (report.written, report.linked) == (1, 2)
        development = live.environments / "development"
        assert live_files(development) == storage.files(tree)
        # One file took the last link of the first copy; two share a new one (and its object).
        links = sorted(os.lstat(development / f"m{i}" / "LICENSE").st_nlink for i in range(3))
        assert links == [3, 3, limit]
        assert live.apply(_repo(storage), report.code_commit, verify=True).local_edits == []


def test_a_live_directory_of_the_previous_layout_is_rebuilt_not_trusted(
    storage: Storage, tmp_path: Path
) -> None:
    tree = env_tree(storage, {"data/common.yaml": "a: 1\n"})
    code = publish(storage, {"production": tree})
    live = tmp_path / "live"
    # What gitstate wrote before objects: a copy of each file and a JSON index.
    old = live / ".versions" / "production" / tree
    for path, data in storage.files(tree).items():
        (old / path).parent.mkdir(parents=True, exist_ok=True)
        (old / path).write_bytes(data)
    index = {"schema_version": 1, "tree": tree, "files": {}, "links": {}}
    (live / ".versions" / "production" / f"{tree}.json").write_text(json.dumps(index))
    (live / "environments").mkdir()
    os.symlink(f"../.versions/production/{tree}", live / "environments" / "production")
    state = {"schema_version": 1, "code_commit": code, "environments": {}}
    (live / ".gitstate-sync.json").write_text(json.dumps(state))

    live_dir = LiveDir(live)
    with live_dir.locked():
        report = live_dir.apply(_repo(storage), code)
        assert report.updated == ["production"]
        assert live_dir.current("production") != tree  # a new version of the same tree
        assert live_files(live / "environments" / "production") == storage.files(tree)
        assert live_dir.apply(_repo(storage), code, verify=True).updated == []
