"""Turn ``sample-control-repo/`` into real git repositories.

Used by ``gitstate demo`` and by the tests: a bare control repository with
the branches ``branches.yaml`` describes, and one bare repository per module
folder, with the module branches ``modules.yaml`` adds. Only the ``git``
command is used, as an operator would, so the result does not depend on the
code it is used to test.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from gitstate.errors import GitStateError

MODULES_PLACEHOLDER = "@MODULES@"
_DATE = "2026-01-01T00:00:00Z"


class SampleError(GitStateError):
    """The sample folder is inconsistent or git failed while building it."""


@dataclasses.dataclass(frozen=True)
class SampleRepos:
    """Where the built repositories are."""

    control: Path
    modules: Path
    branches: tuple[str, ...]

    @property
    def control_url(self) -> str:
        """The control repository as a ``file://`` URL."""
        return self.control.as_uri()


def sample_folder() -> Path:
    """Return the packaged ``sample-control-repo`` folder."""
    return Path(str(resources.files("gitstate.sample_control_repo")))


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git with a fixed identity and no user configuration."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "gitstate demo",
        "GIT_AUTHOR_EMAIL": "demo@gitstate.invalid",
        "GIT_COMMITTER_NAME": "gitstate demo",
        "GIT_COMMITTER_EMAIL": "demo@gitstate.invalid",
        "GIT_AUTHOR_DATE": _DATE,
        "GIT_COMMITTER_DATE": _DATE,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SampleError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def _load(path: Path) -> Mapping[str, Any]:
    return YAML(typ="safe").load(path.read_text(encoding="utf-8")) or {}


def _copy_into(source: Path, target: Path, substitutions: Mapping[str, str]) -> None:
    for item in sorted(source.rglob("*")):
        if item.is_dir():
            continue
        destination = target / item.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        text = item.read_text(encoding="utf-8")
        for old, new in substitutions.items():
            text = text.replace(old, new)
        destination.write_text(text, encoding="utf-8")


def _layers(branches: Mapping[str, Any], branch: str) -> list[str]:
    """Return the overlay folders of ``branch``, base first."""
    layers: list[str] = []
    seen = set()
    while branch:
        if branch in seen or branch not in branches:
            raise SampleError(f"branches.yaml: branch {branch!r} is unknown or its bases loop")
        seen.add(branch)
        layers.insert(0, str(branches[branch]["dir"]))
        branch = branches[branch].get("base") or ""
    return layers


def build(dest: Path, source: Path | None = None) -> SampleRepos:
    """Build the repositories under ``dest`` (reused when already built).

    Returns where they are: ``dest/control.git`` and ``dest/modules/*.git``.
    """
    source = source or sample_folder()
    dest = dest.absolute()
    control = dest / "control.git"
    modules = dest / "modules"
    branches = _load(source / "branches.yaml")
    if (control / "HEAD").exists():
        return SampleRepos(control, modules, tuple(branches))
    module_branches = _load(source / "modules.yaml")
    overlays = {folder for extra in module_branches.values() for folder in extra.values()}
    modules.mkdir(parents=True, exist_ok=True)
    substitutions = {MODULES_PLACEHOLDER: modules.as_uri()}
    with tempfile.TemporaryDirectory(prefix="gitstate-sample-") as scratch:
        for folder in sorted((source / "modules").iterdir()):
            if folder.name in overlays or not folder.is_dir():
                continue
            work = Path(scratch) / f"module-{folder.name}"
            git("init", "-q", "-b", "main", str(work))
            _copy_into(folder, work, substitutions)
            git("add", "-A", cwd=work)
            git("commit", "-q", "-m", f"{folder.name} 1.0.0", cwd=work)
            git("tag", "v1.0.0", cwd=work)
            for branch, overlay in (module_branches.get(folder.name) or {}).items():
                git("checkout", "-q", "-b", branch, "main", cwd=work)
                _copy_into(source / "modules" / overlay, work, substitutions)
                git("add", "-A", cwd=work)
                git("commit", "-q", "-m", f"{folder.name} on {branch}", cwd=work)
                git("checkout", "-q", "main", cwd=work)
            git("clone", "-q", "--bare", str(work), str(modules / f"{folder.name}.git"))
        work = Path(scratch) / "control"
        git("init", "-q", "-b", "production", str(work))
        for branch in branches:
            git("checkout", "-q", "--orphan", branch, cwd=work)
            git("rm", "-rfq", "--ignore-unmatch", ".", cwd=work)
            for layer in _layers(branches, branch):
                _copy_into(source / "control" / layer, work, substitutions)
            git("add", "-A", cwd=work)
            git("commit", "-q", "-m", f"Environment {branch}", cwd=work)
        git("clone", "-q", "--bare", str(work), str(control))
        for branch in branches:
            git("fetch", "-q", str(work), f"+refs/heads/{branch}:refs/heads/{branch}", cwd=control)
        git("symbolic-ref", "HEAD", f"refs/heads/{next(iter(branches))}", cwd=control)
    return SampleRepos(control, modules, tuple(branches))


def push_change(control: Path, branch: str, path: str, text: str, message: str) -> str:
    """Commit ``text`` as ``path`` on ``branch`` of ``control`` and push it, as a person would.

    The push runs the control repository's hooks (the demo's post-receive
    hook deploys it). Returns what the push printed (the hook's lines).
    """
    with tempfile.TemporaryDirectory(prefix="gitstate-sample-") as scratch:
        work = Path(scratch) / "control"
        git("clone", "-q", "--branch", branch, str(control), str(work))
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", message, cwd=work)
        env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
        result = subprocess.run(
            ["git", "push", "origin", branch], cwd=work, env=env, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise SampleError(f"git push failed: {result.stderr.strip()}")
        return result.stderr
