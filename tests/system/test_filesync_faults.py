"""File sync under faults: a client killed with SIGKILL mid-sync, then restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pygit2

from gitstate.cli.sample import SampleRepos
from gitstate.engine.storage import Storage
from gitstate.filesync.livedir import LiveDir
from tests.support.filesync import Harness, assert_matches_storage, live_files, push

BIG = 1500


def _big(version: int) -> dict[str, str | None]:
    return {f"big/d{index % 30}/f{index}.txt": f"{version}:{index}\n" * 40 for index in range(BIG)}


def _assert_every_environment_complete(live: Path, storage: Storage) -> None:
    """Each live environment is exactly the tree its version was written from."""
    for env in os.listdir(live / "environments"):
        link = live / "environments" / env
        assert link.is_symlink(), env
        version = os.path.basename(os.readlink(link))
        tree = version.split("~", 1)[0]
        assert live_files(link) == storage.files(tree), f"{env} at {version} is not complete"


def _sync(storage: Path, live: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gitstate",
            "sync",
            "--storage",
            str(storage),
            "--live",
            str(live),
            "--name",
            "victim",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_sigkill_mid_sync_leaves_complete_versions_and_restart_converges(
    harness: Harness, sample: SampleRepos, tmp_path: Path
) -> None:
    push(sample, tmp_path / "work", "production", _big(1))
    harness.deploy()
    old = harness.code_commit()
    live = tmp_path / "live"
    storage_repo = pygit2.Repository(str(harness.storage_path))
    with LiveDir(live).locked():
        LiveDir(live).apply(storage_repo, old)
    # Every big file changes: the client has a lot to write.
    push(sample, tmp_path / "work", "production", _big(2))
    harness.deploy("production")
    new = harness.code_commit()
    storage = Storage(harness.storage_path)
    staging = live / ".versions" / "production"

    killed_mid_build = 0
    for _attempt in range(3):
        process = _sync(harness.storage_path, live)
        until = time.monotonic() + 60
        while time.monotonic() < until and process.poll() is None:
            if any(name.startswith(".tmp-") for name in os.listdir(staging)):
                process.send_signal(signal.SIGKILL)
                killed_mid_build += 1
                break
            time.sleep(0.001)
        else:
            process.kill()
        process.wait(30)
        _assert_every_environment_complete(live, storage)
        if LiveDir(live).state().get("code_commit") == new:
            break
    assert killed_mid_build > 0, "never caught the client while it was writing"

    # Restarted, it converges and cleans up what the killed one left.
    process = _sync(harness.storage_path, live)
    try:
        until = time.monotonic() + 60
        while LiveDir(live).state().get("code_commit") != new:
            assert time.monotonic() < until, "the restarted client did not converge"
            assert process.poll() is None, "the client exited"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert process.returncode == 0
    assert_matches_storage(live, harness.storage_path, new)
    assert not [name for name in os.listdir(staging) if name.startswith(".tmp-")]
