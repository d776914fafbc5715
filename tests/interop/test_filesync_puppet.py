"""Real Puppet compiles a catalog from a live environment written by file sync."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pygit2
import pytest

from gitstate.filesync.livedir import LiveDir
from tests.support.filesync import Harness

PUPPET = shutil.which("puppet")


@pytest.mark.skipif(PUPPET is None, reason="the puppet binary is absent (apt-get install puppet)")
def test_puppet_apply_noop_on_a_synced_environment(harness: Harness, tmp_path: Path) -> None:
    harness.deploy()
    live = LiveDir(tmp_path / "live")
    with live.locked():
        live.apply(pygit2.Repository(str(harness.storage_path)), harness.code_commit())
    scratch = tmp_path / "puppet"
    assert PUPPET is not None
    result = subprocess.run(
        [
            PUPPET,
            "apply",
            "--noop",
            "--color=false",
            "--confdir",
            str(scratch / "conf"),
            "--vardir",
            str(scratch / "var"),
            "--codedir",
            str(scratch / "code"),
            "--logdir",
            str(scratch / "log"),
            "--rundir",
            str(scratch / "run"),
            "--environmentpath",
            str(live.root / "environments"),
            "--environment",
            "production",
            "-e",
            "include role::base",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Compiled catalog" in result.stdout
    # The classes came from the live dir: hiera data and both git modules.
    assert "Managed by Puppet from the production environment" in result.stdout
    assert "server 0.pool.ntp.org" in result.stdout
