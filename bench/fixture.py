"""The shared benchmark fixture: ../shared/bench/make_control_repo.py's repos."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

#: The fixture builder, beside this repository in ../shared/bench.
FIXTURE_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "bench" / "make_control_repo.py"


def make_fixture(out: Path, envs: int, modules: int, env: Mapping[str, str] | None = None) -> Path:
    """Build the control repo and module repos into ``out``; return ``out``."""
    subprocess.run(
        [
            sys.executable,
            str(FIXTURE_SCRIPT),
            str(out),
            "--envs",
            str(envs),
            "--modules",
            str(modules),
        ],
        check=True,
        capture_output=True,
        env=dict(env) if env is not None else os.environ.copy(),
    )
    return out
