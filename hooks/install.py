"""Install gitstate's hooks into a repository (``gitstate install-hook``).

A hook is a small ``sh`` script that runs ``-m gitstate.hooks NAME`` with
the absolute path of the Python running the installer, so it works without
an activated virtualenv. It is written to a temporary file and
renamed into place, so git never runs half a hook. A hook gitstate did not
write is not replaced unless asked (``force``).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from gitstate.errors import GitStateError

#: Line marking a hook file as gitstate's (and so safe to replace).
MARKER = "# Installed by gitstate install-hook."


class HookExists(GitStateError, FileExistsError):
    """A hook that gitstate did not install is in the way.

    Attributes:
        path: the existing hook file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"{path} exists and was not installed by gitstate (use --force)")


class NotARepository(GitStateError, ValueError):
    """The path given is not a git repository."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"{path} is not a git repository: {detail}")


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise NotARepository(repo, result.stderr.strip() or f"git {args[0]} failed")
    return result.stdout.strip()


def hooks_dir(repo: Path) -> Path:
    """Return where git looks for ``repo``'s hooks (honours ``core.hooksPath``)."""
    found = Path(_git(repo, "rev-parse", "--git-path", "hooks"))
    return found if found.is_absolute() else (repo / found).absolute()


def write_hook(repo: Path, name: str, *, what: str, python: str, force: bool = False) -> Path:
    """Write the hook ``name`` of ``repo`` to run ``python -m gitstate.hooks name``.

    Raises:
        NotARepository: ``repo`` is not a git repository.
        HookExists: another hook of that name is there and ``force`` is off.
    """
    directory = hooks_dir(repo)
    path = directory / name
    if path.exists() and not force and MARKER not in path.read_text(errors="replace"):
        raise HookExists(path)
    directory.mkdir(parents=True, exist_ok=True)
    script = f"#!/bin/sh\n{MARKER}\n# {what}\nexec {shlex.quote(python)} -m gitstate.hooks {name}\n"
    staging = path.with_name(f".{name}.gitstate-tmp")
    staging.write_text(script, encoding="utf-8")
    os.chmod(staging, 0o755)
    os.replace(staging, path)
    return path


def install_post_receive(
    repo: Path,
    *,
    url: str,
    token_file: str | None = None,
    prefix: str | None = None,
    python: str = sys.executable,
    force: bool = False,
) -> Path:
    """Make pushes to the control repository ``repo`` deploy through ``url``.

    Writes the ``post-receive`` hook and the ``gitstate.*`` git config keys
    it reads (see :mod:`gitstate.hooks.post_receive`).

    Raises:
        NotARepository: ``repo`` is not a git repository.
        HookExists: another post-receive hook is there and ``force`` is off.
    """
    repo = Path(repo).absolute()
    path = write_hook(
        repo,
        "post-receive",
        what="Queues deploys of pushed branches and removes deleted ones' environments.",
        python=python,
        force=force,
    )
    _git(repo, "config", "gitstate.url", url)
    for key, value in (("gitstate.tokenFile", token_file), ("gitstate.prefix", prefix)):
        if value:
            _git(
                repo,
                "config",
                key,
                str(Path(value).expanduser().absolute()) if key.endswith("File") else value,
            )
        else:
            subprocess.run(
                ["git", "-C", str(repo), "config", "--unset", key], capture_output=True, check=False
            )
    return path


def install_state_guard(
    state_repo: Path, *, python: str = sys.executable, force: bool = False
) -> Path:
    """Make the state repository refuse pushes that rewrite or delete the state branch.

    Writes the ``pre-receive`` hook (:mod:`gitstate.hooks.state_guard`).

    Raises:
        NotARepository: ``state_repo`` is not a git repository.
        HookExists: another pre-receive hook is there and ``force`` is off.
    """
    return write_hook(
        Path(state_repo).absolute(),
        "pre-receive",
        what="Refuses non-fast-forward updates and deletion of refs/heads/state.",
        python=python,
        force=force,
    )
