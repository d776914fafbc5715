"""Conformance with real r10k: same fixture, same files, same contents.

The fixture is built here with the git CLI so the test needs nothing outside
the repository: several branches, git modules by tag, branch, commit and
``:control_branch`` with a ``:default_branch`` fallback, a ``:local``
module, an undeclared directory in ``modules/`` (r10k purges it), a module
``spec/`` directory (excluded), an ``:install_path``, a ``moduledir`` and
symlinks inside the environment. r10k deploys it into directories, gitstate
into the storage repository; every environment must hold the same paths
with the same bytes (``.git`` and the record's timestamps aside).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.deploy_fixtures import Link, Remote, deployer, module_files

R10K = shutil.which("r10k")
_TIMES = re.compile(rb'  "(started_at|finished_at)": "[^"]*",\n')


def r10k_files(env_dir: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(env_dir):
        dirnames[:] = [name for name in dirnames if name != ".git"]
        entries = filenames + [name for name in dirnames if (Path(dirpath) / name).is_symlink()]
        for name in entries:
            path = Path(dirpath) / name
            rel = path.relative_to(env_dir).as_posix()
            if path.is_symlink():
                out[rel] = b"-> " + os.readlink(path).encode()
            else:
                out[rel] = path.read_bytes()
    return out


def without_times(files: dict[str, bytes]) -> dict[str, bytes]:
    record = files.get(".r10k-deploy.json")
    if record is not None:
        files = {**files, ".r10k-deploy.json": _TIMES.sub(b"", record)}
    return files


@pytest.fixture
def fixture(tmp_path):
    root = tmp_path / "remotes"
    root.mkdir()
    mods = {}
    for name in ("alpha", "beta", "gamma"):
        remote = Remote(root, name, "main")
        remote.commit("main", module_files(name, "1.0.0"))
        remote.tag("v1.0.0", "main")
        remote.commit("main", {"README.md": f"{name} 1.1\n", "files/link": Link("../README.md")})
        mods[name] = remote
    mods["beta"].commit("development", {"README.md": "beta development\n"}, base="main")
    first = mods["gamma"].head("v1.0.0")
    control = Remote(root, "control")

    def puppetfile(extra: str = "") -> str:
        return (
            "forge 'https://forge.example.test'\n"
            f"mod 'alpha', :git => '{mods['alpha'].url}', :tag => 'v1.0.0'\n"
            f"mod 'acme-beta', :git => '{mods['beta'].url}', :branch => :control_branch,\n"
            "  :default_branch => 'main'\n"
            f"mod 'gamma', :git => '{mods['gamma'].url}', :commit => '{first}'\n"
            "mod 'sitelocal', :local => true\n" + extra
        )

    control.commit(
        "production",
        {
            "environment.conf": "modulepath = site:modules:$basemodulepath\n",
            "manifests/site.pp": "node default {}\n",
            "data/common.yaml": "---\nmotd: production\n",
            "data/link.yaml": Link("common.yaml"),
            "site/profile/manifests/base.pp": "class profile::base {}\n",
            "modules/sitelocal/manifests/init.pp": "class sitelocal {}\n",
            "modules/stray/manifests/init.pp": "class stray {}\n",
            "Puppetfile": puppetfile(),
        },
    )
    control.commit(
        "development",
        {
            "data/common.yaml": "---\nmotd: development\n",
            "Puppetfile": puppetfile(
                f"mod 'delta', :git => '{mods['alpha'].url}', :ref => 'main',\n"
                "  :install_path => 'vendor', :exclude_spec => false\n"
            ),
        },
        base="production",
    )
    control.commit(
        "thirdparty",
        {"Puppetfile": "moduledir 'thirdparty'\n" + puppetfile()},
        base="production",
    )
    return tmp_path, control


@pytest.mark.skipif(R10K is None, reason="r10k is not installed (apt-get install r10k)")
def test_gitstate_deploys_what_r10k_deploys(fixture):
    tmp_path, control = fixture
    basedir = tmp_path / "r10k" / "environments"
    config = tmp_path / "r10k.yaml"
    config.write_text(
        "---\n"
        f"cachedir: '{tmp_path / 'r10k' / 'cache'}'\n"
        "sources:\n"
        "  puppet:\n"
        f"    remote: '{control.url}'\n"
        f"    basedir: '{basedir}'\n"
        "    invalid_branches: error\n"
        "deploy:\n"
        "  exclude_spec: true\n"
    )
    dep = deployer(tmp_path / "data", control)

    def deploy_both_and_compare() -> None:
        run = subprocess.run(
            [R10K, "deploy", "environment", "--modules", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
        collection = dep.collect()
        for env in collection.names():
            dep.deploy(env, collection=collection)
        assert sorted(dep.environments()) == sorted(path.name for path in basedir.iterdir())
        for env in collection.names():
            ours = without_times(dep.storage.files(dep.environments()[env]))
            theirs = without_times(r10k_files(basedir / env))
            assert sorted(ours) == sorted(theirs), env
            for path in theirs:
                assert ours[path] == theirs[path], f"{env}: {path}"

    deploy_both_and_compare()
    # Second round: a branch deleted, a module branch moved, a Puppetfile
    # changed. r10k updates its directories in place and purges; gitstate
    # composes new versions and unpublishes; the results must still agree.
    control.delete_branch("thirdparty")
    beta_work = tmp_path / "remotes" / "beta-work"
    (beta_work / "README.md").write_text("beta main moved\n")
    for args in (["add", "-A"], ["commit", "-q", "-m", "move"], ["push", "-q", "origin", "main"]):
        subprocess.run(["git", *args], cwd=beta_work, check=True, capture_output=True)
    # Drop one module from the moduledir: r10k's Puppetfile purge removes it.
    # (A module whose install_path is no longer named, or all modules of a
    # deleted Puppetfile, r10k leaves behind; gitstate never has leftovers.)
    puppetfile = subprocess.run(
        ["git", "show", "development:Puppetfile"],
        cwd=control.work,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    kept = [line for line in puppetfile.splitlines(keepends=True) if "mod 'gamma'" not in line]
    control.commit("development", {"Puppetfile": "".join(kept), "data/common.yaml": "x: 2\n"})
    deploy_both_and_compare()


@pytest.mark.skipif(R10K is None, reason="r10k is not installed (apt-get install r10k)")
def test_benchmark_fixture_matches_r10k(tmp_path):
    from bench.fixture import make_fixture
    from gitstate.engine.environments import Deployer
    from gitstate.engine.sources import Sources
    from gitstate.settings import SourceSettings

    out = make_fixture(tmp_path / "fx", envs=5, modules=3, files_per_module=4)
    run = subprocess.run(
        [R10K, "deploy", "environment", "--modules", "-c", str(out / "r10k.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    sources = Sources.from_settings({"main": SourceSettings(remote=(out / "control.git").as_uri())})
    dep = Deployer(tmp_path / "data", sources, local_module_sources=[out / "modules"])
    collection = dep.collect()
    for env in collection.names():
        dep.deploy(env, collection=collection)
    basedir = out / "r10k" / "environments"
    assert collection.names() == sorted(path.name for path in basedir.iterdir())
    for env in collection.names():
        ours = without_times(dep.storage.files(dep.environments()[env]))
        assert ours == without_times(r10k_files(basedir / env)), env
