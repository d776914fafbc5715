"""Puppetfile modules on this host come only from allowed directories (issue 18, item 5).

A local path or ``file://`` URL in a Puppetfile reads whatever the server can
read; ``DATADIR/state.git`` holds token hashes and gate records. Such sources
must resolve (symlinks and ``..`` followed) under a directory
``deploy.local_module_sources`` lists, and never under the data directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gitstate.auth import Tokens
from gitstate.base.schema import SettingError
from gitstate.config import Config
from gitstate.engine.environments import Deployer, DeployFailure
from gitstate.engine.mirrors import LocalSourceRefused, LocalSources, local_path
from gitstate.store.branch import Store, init_repository
from tests.support.deploy_fixtures import Remote, deployer, module_files, tree_files

SETTING = "deploy.local_module_sources"


@pytest.fixture
def site(tmp_path: Path) -> tuple[Remote, Remote, Path]:
    """A control repo and a module repo in ``remotes/``, and ``data/state.git``."""
    control = Remote(tmp_path / "control", "control")
    module = Remote(tmp_path / "remotes", "mod")
    module.commit("main", module_files("mod"))
    state = tmp_path / "data" / "state.git"
    init_repository(state)
    # A token's hash on the state branch: what a hostile Puppetfile is after.
    Tokens(Store(state, fsync=False)).issue("root", permissions=["admin"], actor="test")
    return control, module, state


def _puppetfile(control: Remote, url: str, branch: str = "main") -> None:
    control.commit(
        "production",
        {"Puppetfile": f"mod 'mod', :git => '{url}', :branch => '{branch}'\n", "site.pp": "#\n"},
    )


def _refused(dep: Deployer) -> str:
    with pytest.raises(DeployFailure) as info:
        dep.deploy("production")
    message = str(info.value)
    assert "mod 'mod'" in message and SETTING in message, message
    return message


@pytest.mark.parametrize("form", ["path", "file-url"])
def test_state_repository_is_refused_even_under_an_allowed_directory(
    tmp_path: Path, site: tuple[Remote, Remote, Path], form: str
) -> None:
    control, _, state = site
    _puppetfile(control, str(state) if form == "path" else state.as_uri(), "state")
    dep = deployer(tmp_path / "data", control, local_module_sources=[tmp_path])
    assert "inside gitstate's data directory" in _refused(dep)
    assert "production" not in dep.environments()


def test_state_repository_through_a_symlink_is_refused(
    tmp_path: Path, site: tuple[Remote, Remote, Path]
) -> None:
    control, _, state = site
    (tmp_path / "remotes" / "innocent.git").symlink_to(state)
    _puppetfile(control, str(tmp_path / "remotes" / "innocent.git"), "state")
    dep = deployer(tmp_path / "data", control, local_module_sources=[tmp_path / "remotes"])
    assert "inside gitstate's data directory" in _refused(dep)


@pytest.mark.parametrize("form", ["path", "file-url"])
def test_a_source_outside_the_allowed_directories_is_refused(
    tmp_path: Path, site: tuple[Remote, Remote, Path], form: str
) -> None:
    control, module, _ = site
    _puppetfile(control, str(module.bare) if form == "path" else module.url)
    (tmp_path / "allowed").mkdir()
    dep = deployer(tmp_path / "data", control, local_module_sources=[tmp_path / "allowed"])
    assert "under no allowed directory" in _refused(dep)


def test_no_local_source_is_allowed_by_default(
    tmp_path: Path, site: tuple[Remote, Remote, Path]
) -> None:
    control, module, _ = site
    _puppetfile(control, module.url)
    config = Config.from_mapping(
        {"datadir": str(tmp_path / "data"), "sources": {"puppet": {"remote": control.url}}}
    )
    dep = Deployer.from_config(config)
    assert "(allowed: none)" in _refused(dep)


def test_a_symlink_inside_an_allowed_directory_leading_out_is_refused(
    tmp_path: Path, site: tuple[Remote, Remote, Path]
) -> None:
    control, module, _ = site
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "mod.git").symlink_to(module.bare)
    _puppetfile(control, str(allowed / "mod.git"))
    dep = deployer(tmp_path / "data", control, local_module_sources=[allowed])
    assert str(module.bare) in _refused(dep)


@pytest.mark.parametrize("form", ["path", "file-url"])
def test_dot_dot_out_of_an_allowed_directory_is_refused(
    tmp_path: Path, site: tuple[Remote, Remote, Path], form: str
) -> None:
    control, _, _ = site
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    escape = f"{allowed}/../remotes/mod.git"
    _puppetfile(control, escape if form == "path" else f"file://{escape}")
    dep = deployer(tmp_path / "data", control, local_module_sources=[allowed])
    _refused(dep)


def test_a_refused_source_is_not_even_fetched(
    tmp_path: Path, site: tuple[Remote, Remote, Path]
) -> None:
    control, _, state = site
    _puppetfile(control, str(state))
    dep = deployer(tmp_path / "data", control, local_module_sources=[tmp_path])
    dep.prefetch(dep.collect())
    assert not dep.mirrors.exists(str(state))


@pytest.mark.parametrize("form", ["path", "file-url"])
def test_a_source_in_an_allowed_directory_deploys(
    tmp_path: Path, site: tuple[Remote, Remote, Path], form: str
) -> None:
    control, module, _ = site
    _puppetfile(control, str(module.bare) if form == "path" else module.url)
    dep = deployer(tmp_path / "data", control, local_module_sources=[tmp_path / "remotes"])
    dep.deploy("production")
    assert "modules/mod/metadata.json" in tree_files(dep, "production")


def test_an_allowed_directory_reached_through_a_symlink_is_the_same_directory(
    tmp_path: Path, site: tuple[Remote, Remote, Path]
) -> None:
    control, module, _ = site
    (tmp_path / "alias").symlink_to(tmp_path / "remotes")
    _puppetfile(control, module.url)
    dep = deployer(tmp_path / "data", control, local_module_sources=[tmp_path / "alias"])
    dep.deploy("production")


def test_network_sources_are_not_limited(tmp_path: Path) -> None:
    sources = LocalSources((), (tmp_path,))
    for url in (
        "https://github.com/puppetlabs/puppetlabs-stdlib.git",
        "ssh://git@example.com/x.git",
        "git@github.com:puppetlabs/puppetlabs-stdlib.git",
        "git://example.com/x.git",
    ):
        assert local_path(url) is None
        sources.check("x", url)


def test_file_urls_are_read_as_git_reads_them() -> None:
    assert local_path("file:///srv/mods/a%20b.git") == "/srv/mods/a b.git"
    assert local_path("file://localhost/srv/a.git") == "/srv/a.git"
    assert local_path("/srv/a.git") == "/srv/a.git"
    assert local_path("../a.git") == "../a.git"


def test_a_file_url_with_another_host_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LocalSourceRefused):
        LocalSources((tmp_path,), ()).check("x", f"file://elsewhere{tmp_path}/a.git")


def test_the_setting_takes_absolute_directories_only() -> None:
    config = Config.from_mapping({"datadir": "/d", SETTING.split(".")[0]: {}})
    assert config.deploy.local_module_sources == ()
    with pytest.raises(SettingError, match=SETTING):
        Config.from_mapping({"datadir": "/d", "deploy": {"local_module_sources": ["mods"]}})
    with pytest.raises(SettingError, match=SETTING):
        Config.from_mapping({"datadir": "/d", "deploy": {"local_module_sources": [3]}})
