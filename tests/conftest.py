"""Shared fixtures: a git environment scrubbed of the developer's setup.

Every test builds its own repositories under ``tmp_path``; nothing reads the
user's ~/.gitconfig, system config or GIT_* variables, so results do not
depend on who runs them (dulwich's habit).
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitstate.cli.sample import SampleRepos, build
from tests.support.filesync import Harness, make_config

_GIT_ENV_SCRUB = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_CONFIG",
    "GIT_CONFIG_GLOBAL",
    "GIT_CONFIG_SYSTEM",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_AUTHOR_NAME",
    "GIT_AUTHOR_EMAIL",
    "GIT_AUTHOR_DATE",
    "GIT_COMMITTER_NAME",
    "GIT_COMMITTER_EMAIL",
    "GIT_COMMITTER_DATE",
    "GIT_NAMESPACE",
    "XDG_CONFIG_HOME",
    "GITSTATE_CONFIG",
    "GITSTATE_DATADIR",
    "GITSTATE_LISTEN",
)


@pytest.fixture(autouse=True)
def clean_git_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Run every test with a private HOME and no inherited git configuration."""
    home = tmp_path_factory.mktemp("home")
    for name in _GIT_ENV_SCRUB:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test Author")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "author@example.test")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Test Committer")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "committer@example.test")
    yield


@pytest.fixture(scope="session")
def sample_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample control repo and its modules, built once per test session."""
    return build(tmp_path_factory.mktemp("sample-template") / "repos").control.parent


@pytest.fixture
def sample(tmp_path: Path, sample_template: Path) -> SampleRepos:
    """A private copy of the sample repositories (tests push to it).

    Module URLs inside the Puppetfiles point at the template's modules,
    which no test changes; ``modules`` says so, for the configs that allow
    them (``deploy.local_module_sources``).
    """
    subprocess.run(["cp", "-a", str(sample_template), str(tmp_path / "repos")], check=True)
    copy = build(tmp_path / "repos")
    return dataclasses.replace(copy, modules=sample_template / "modules")


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    """Path of a state repository that does not exist yet."""
    return tmp_path / "data" / "state.git"


@pytest.fixture
def harness(tmp_path: Path, sample: SampleRepos) -> Iterator[Harness]:
    """The app with a deploy worker and file-sync clients on the sample repositories."""
    running = Harness(make_config(tmp_path, sample))
    yield running
    running.close()
