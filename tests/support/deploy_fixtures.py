"""Real git repositories for deploy tests, made with the git CLI.

A :class:`Remote` is a bare repository (what gitstate fetches from) plus a
work tree used to make commits and push them, so tests describe content as
``{path: text}`` and get back real commit ids.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from gitstate.engine.environments import Deployer
from gitstate.engine.sources import Sources
from gitstate.settings import SourceSettings
from tests.support.helpers import git


@dataclasses.dataclass(frozen=True)
class Link:
    """A symlink to put in a commit."""

    target: str


class Remote:
    """A bare repository at ``root/name.git`` with a work tree beside it."""

    def __init__(self, root: Path, name: str, branch: str = "production") -> None:
        self.bare = root / f"{name}.git"
        self.work = root / f"{name}-work"
        self.default = branch
        git("init", "-q", "--bare", "-b", branch, str(self.bare))
        git("init", "-q", "-b", branch, str(self.work))
        git("remote", "add", "origin", str(self.bare), cwd=self.work)
        self._has_commits = False

    @property
    def url(self) -> str:
        """The file:// URL of the bare repository."""
        return self.bare.as_uri()

    def commit(
        self,
        branch: str,
        files: dict[str, str | Link | None],
        *,
        base: str | None = None,
        message: str = "change",
        clean: bool = False,
    ) -> str:
        """Commit ``files`` (None deletes) on ``branch`` and push it; return the sha."""
        existing = git("branch", "--list", branch, cwd=self.work).strip()
        if existing:
            git("checkout", "-q", branch, cwd=self.work)
        elif not self._has_commits:
            git("checkout", "-q", "--orphan", branch, cwd=self.work)
        else:
            git("checkout", "-q", "-b", branch, base or self.default, cwd=self.work)
        if clean:
            git("rm", "-rq", "--ignore-unmatch", ".", cwd=self.work)
        for path, content in files.items():
            target = self.work / path
            if content is None:
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                target.unlink()
            if isinstance(content, Link):
                os.symlink(content.target, target)
            else:
                target.write_text(content)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "-q", "-f", "origin", branch, cwd=self.work)
        self._has_commits = True
        return self.head(branch)

    def head(self, ref: str) -> str:
        """Return the commit ``ref`` points to in the work tree."""
        return git("rev-parse", f"{ref}^{{commit}}", cwd=self.work).strip()

    def tag(self, name: str, ref: str) -> str:
        """Tag ``ref`` and push the tag."""
        git("tag", "-f", name, ref, cwd=self.work)
        git("push", "-q", "-f", "origin", f"refs/tags/{name}", cwd=self.work)
        return self.head(name)

    def delete_branch(self, branch: str) -> None:
        """Delete ``branch`` in the bare repository."""
        git("push", "-q", "origin", f":refs/heads/{branch}", cwd=self.work)


def module_files(name: str, version: str = "1.0.0") -> dict[str, str | Link | None]:
    """Return a small Puppet module's files."""
    return {
        "metadata.json": f'{{"name": "test-{name}", "version": "{version}"}}\n',
        "manifests/init.pp": f"class {name} {{\n}}\n",
        "spec/classes/init_spec.rb": "describe 'x' do\nend\n",
        "README.md": f"{name} {version}\n",
    }


def deployer(datadir: Path, *remotes: Remote, **options: object) -> Deployer:
    """Return a Deployer over one source per remote (the first is ``puppet``).

    Module repositories are built beside the data directory, so its parent
    is where local module sources may come from, unless the test says.
    """
    options.setdefault("local_module_sources", (Path(datadir).parent,))
    names = ["puppet", *(f"s{index}" for index in range(1, len(remotes)))]
    sources = {
        name: SourceSettings(remote=remote.url) for name, remote in zip(names, remotes, strict=True)
    }
    return Deployer(datadir, Sources.from_settings(sources), **options)  # type: ignore[arg-type]


def tree_files(dep: Deployer, environment: str) -> dict[str, bytes]:
    """Return path → bytes of a published environment, read from storage."""
    commit = dep.environments()[environment]
    return dep.storage.files(commit)
