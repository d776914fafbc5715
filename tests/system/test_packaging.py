"""A plain (non-editable) install carries the web app and hooks inside gitstate."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _build_wheel(out: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        cwd=out,
    )
    (wheel,) = out.glob("gitstate-*.whl")
    return wheel


def test_wheel_maps_web_and_hooks_under_gitstate(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "gitstate/web/app.py" in names
    assert "gitstate/hooks/__init__.py" in names
    assert "gitstate/py.typed" in names
    assert "gitstate/web/static/index.html" in names
    assert "gitstate/sample_control_repo/branches.yaml" in names
    top_level = {name.split("/", 1)[0] for name in names}
    assert "web" not in top_level
    assert "hooks" not in top_level
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "gitstate = gitstate.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_plain_install_runs_outside_the_source_tree(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # Reuse this interpreter's installed dependencies through a plain path
    # entry: .pth files in that folder (such as an editable install of
    # gitstate itself) are not processed, so only the wheel provides gitstate.
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(site) / "deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        cwd=tmp_path,
    )
    probe = (
        "import gitstate, gitstate.web.app, gitstate.hooks, pathlib;"
        "print(pathlib.Path(gitstate.web.app.__file__).relative_to(pathlib.Path(gitstate.__file__).parent))"
    )
    out = subprocess.run(
        [str(python), "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "web/app.py"
    version = subprocess.run(
        [str(env_dir / "bin" / "gitstate"), "--version"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert version.stdout.startswith("gitstate ")
