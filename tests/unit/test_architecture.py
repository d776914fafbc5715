"""The rule of imports in docs/architecture.md holds, and breaking it fails.

``lint-imports`` (import-linter) checks the contracts in ``.importlinter``
against the package as it installs: ``web/`` and ``hooks/`` become
``gitstate.web`` and ``gitstate.hooks`` only through ``package_dir`` in
``setup.cfg``, so the check runs on a copy laid out the same way.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def installed_layout(target: Path) -> Path:
    """Copy the sources into ``target`` as ``setup.cfg`` installs them."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    mapped = {}
    for line in setup["options"]["package_dir"].strip().splitlines():
        package, _, folder = (part.strip() for part in line.partition("="))
        mapped[package] = folder
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "gitstate", target / "gitstate", ignore=ignore)
    for package, folder in mapped.items():
        if package.count(".") == 1 and (ROOT / folder / "__init__.py").exists():
            shutil.copytree(ROOT / folder, target / package.replace(".", "/"), ignore=ignore)
    return target


def lint_imports(layout: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(script), "--config", str(ROOT / ".importlinter"), "--no-cache"],
        cwd=layout,
        env={"PYTHONPATH": str(layout), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_contract_is_kept(tmp_path):
    result = lint_imports(installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_wrong_import_breaks_the_build(tmp_path):
    layout = installed_layout(tmp_path)
    planted = layout / "gitstate" / "store" / "planted.py"
    planted.write_text('"""An import against the rule."""\n\nimport gitstate.web.app  # noqa\n')
    (layout / "gitstate" / "gates" / "planted.py").write_text("import falcon  # noqa\n")
    result = lint_imports(layout)
    assert result.returncode != 0
    assert "gitstate.store.planted -> gitstate.web.app" in result.stdout
    assert "gitstate.gates is not allowed to import falcon" in result.stdout
