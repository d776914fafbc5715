"""Create a bare repository once, however many processes try at the same moment.

gunicorn starts its workers together and each opens the state and storage
repositories, creating them on a first start. Two processes configuring
one new repository collide on ``config.lock`` ("failed to create locked
file"). So a repository is made and configured in a private directory
beside its place and renamed into it: a rename onto a directory that
already exists fails, and the loser just removes its copy.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import pygit2


def create_bare(path: Path, head: str, config: Mapping[str, str | bool]) -> None:
    """Create the bare repository ``path`` with branch ``head`` and ``config``, unless it exists."""
    path = Path(path)
    if (path / "HEAD").exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.new-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    repo = pygit2.init_repository(str(scratch), bare=True, initial_head=head)
    try:
        settings = repo.config
        for key, value in config.items():
            settings[key] = value
    finally:
        repo.free()
    try:
        os.rename(scratch, path)
    except OSError:
        # Another process got there first (or an empty directory was made
        # for it): use what is there.
        shutil.rmtree(scratch, ignore_errors=True)
        if not (path / "HEAD").exists():
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
                create_bare(path, head, config)
                return
            raise
