"""Git maintenance: packs the repositories while writers commit, losing nothing."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from gitstate.base.schema import SettingError, read_section
from gitstate.cli.main import main
from gitstate.process.maintenance import (
    MaintenanceConfigError,
    count_objects,
    maintain,
    repositories,
)
from gitstate.settings import MaintenanceSettings
from gitstate.store.branch import Store
from tests.support.helpers import git


def _write(store: Store, start: int, count: int) -> None:
    for number in range(start, start + count):
        store.transact(
            lambda draft, n=number: draft.put(
                f"records/r{n % 50}.yaml", {"schema_version": 1, "n": n, "note": "x" * (n % 7)}
            ),
            subject=f"write {number}",
            operation="test.write",
        )


@pytest.mark.parametrize("strategy", ["incremental", "gc"])
def test_maintenance_during_writes_loses_nothing(tmp_path: Path, strategy: str) -> None:
    repo = tmp_path / "state.git"
    store = Store(repo, deadline=60)
    _write(store, 0, 60)
    assert count_objects(repo).loose > 0

    writes = 300
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            _write(Store(repo, deadline=60), 60, writes)
        except BaseException as ex:  # reported below
            failures.append(ex)

    thread = threading.Thread(target=writer)
    thread.start()
    runs = 0
    while thread.is_alive() or runs < 2:
        maintain(repo, strategy)
        runs += 1
    thread.join()
    assert not failures

    # Every commit is there, in order, and the tip holds the last write of each record.
    subjects = git("--git-dir", str(repo), "log", "--format=%s", "refs/heads/state").splitlines()
    assert subjects == [f"write {n}" for n in reversed(range(60 + writes))]
    git("--git-dir", str(repo), "fsck", "--strict", "--no-dangling")
    fresh = Store(repo, create=False)
    last = {n % 50: n for n in range(60 + writes)}
    snapshot = fresh.snapshot()
    for key, number in last.items():
        assert snapshot.get(f"records/r{key}.yaml")["n"] == number

    # A final run with no writer leaves nothing loose and packed refs behind.
    report = maintain(repo, strategy)
    assert report.after.loose == 0
    assert report.after.packs >= 1
    assert "refs/heads/state" in (repo / "packed-refs").read_text()
    assert (repo / "objects" / "info" / "commit-graphs").exists() or (
        repo / "objects" / "info" / "commit-graph"
    ).exists()
    # The store keeps writing on top of packed refs.
    _write(fresh, 1000, 3)
    assert fresh.log(limit=1)[0].subject == "write 1002"


def test_loose_objects_shrink(tmp_path: Path) -> None:
    repo = tmp_path / "state.git"
    _write(Store(repo), 0, 200)
    report = maintain(repo)
    assert report.before.loose > 200 * 3
    assert report.after.loose == 0
    assert report.after.total_bytes < report.before.total_bytes


def test_the_command_maintains_every_repository(tmp_path: Path, capsys) -> None:
    datadir = tmp_path / "data"
    _write(Store(datadir / "state.git"), 0, 20)
    git("init", "--bare", "--quiet", str(datadir / "storage.git"))
    config = tmp_path / "gitstate.yaml"
    config.write_text(f"datadir: {datadir}\nmaintenance:\n  strategy: gc\n")
    assert repositories(datadir) == [datadir / "state.git", datadir / "storage.git"]
    assert main(["maintenance", "--config", str(config), "--format", "json"]) == 0
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["repo"]).name for r in reports] == ["state.git", "storage.git"]
    assert reports[0]["before"]["loose"] > 0
    assert reports[0]["after"]["loose"] == 0


def test_settings_are_checked() -> None:
    def read(data: object) -> MaintenanceSettings:
        return read_section(MaintenanceSettings, data, "maintenance")

    assert read(None) == MaintenanceSettings(strategy="incremental", interval=3600.0)
    assert read({"interval": 60}).interval == 60
    assert read({"interval": "1h"}).interval == 3600
    for bad in ({"interval": 0}, {"strategy": "aggressive"}, {"interval": "hourly"}):
        with pytest.raises(SettingError, match=rf"^maintenance\.{next(iter(bad))}: "):
            read(bad)
    with pytest.raises(MaintenanceConfigError):
        maintain(Path("/nonexistent"), "aggressive")
