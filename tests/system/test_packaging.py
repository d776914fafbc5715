"""A plain (non-editable) install carries the web app and hooks inside gitstate."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import venv
import zipfile
from pathlib import Path

from tests.support.helpers import free_port, wait_for_http

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


def _plain_install(tmp_path: Path) -> Path:
    """Install the wheel, not editable, into a fresh venv; return its ``bin``."""
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
    return env_dir / "bin"


def test_plain_install_runs_outside_the_source_tree(tmp_path: Path) -> None:
    bin_dir = _plain_install(tmp_path)
    probe = (
        "import gitstate, gitstate.web.app, gitstate.hooks, pathlib;"
        "print(pathlib.Path(gitstate.web.app.__file__).relative_to(pathlib.Path(gitstate.__file__).parent))"
    )
    out = subprocess.run(
        [str(bin_dir / "python"), "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.stdout.strip() == "web/app.py"
    version = subprocess.run(
        [str(bin_dir / "gitstate"), "--version"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert version.stdout.startswith("gitstate ")


def test_the_quick_start_runs_from_the_root_of_the_checkout(tmp_path: Path) -> None:
    """README: ``pip install . && gitstate demo``, in the repository's root.

    There, the checkout's ``gitstate/`` folder (which has no ``web/``) is
    the first thing a ``python -m`` child would import; the demo's web
    server must still start from the installed package.
    """
    bin_dir = _plain_install(tmp_path)
    port = free_port()
    demo = subprocess.Popen(
        [str(bin_dir / "gitstate"), "demo", "--dir", str(tmp_path / "demo"), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)
    reader.start()
    try:
        health = wait_for_http(f"http://127.0.0.1:{port}/internal/health", timeout=120)
        assert health.json() == {"status": "ok"}
        until = time.monotonic() + 300  # bounds the wait for a broken demo, times nothing
        while not any(line.startswith("Try:") for line in lines) and demo.poll() is None:
            assert time.monotonic() < until, "".join(lines)
            time.sleep(0.2)
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=60)
        reader.join(10)
    out = "".join(lines)
    assert "Try:" in out, out
    assert "ModuleNotFoundError" not in out, out


def test_ci_runs_the_readmes_quick_start_command_literally() -> None:
    """.ci/run calls .ci/quickstart, which takes its command from the README."""
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("```sh\n", 1)[1].split("\n", 1)[0]
    assert quick_start == (
        "python3 -m venv .venv && . .venv/bin/activate && pip install . && gitstate demo"
    )
    printed = subprocess.run(
        [str(ROOT / ".ci" / "quickstart")],
        env={**os.environ, "QUICKSTART_PRINT": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed.stdout.strip() == quick_start
    run = (ROOT / ".ci" / "run").read_text()
    assert "\n.ci/quickstart\n" in run
