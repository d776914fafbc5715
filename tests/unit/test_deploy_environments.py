"""Environments built in git: composition, records, failures, purges, no-ops."""

from __future__ import annotations

import json
import subprocess

import pygit2
import pytest

from gitstate.engine.environments import CollectFailed, Deployer, DeployFailure
from gitstate.engine.sources import Sources
from gitstate.engine.storage import CODE_REF
from gitstate.settings import SourceSettings
from tests.support.deploy_fixtures import Link, Remote, deployer, module_files, tree_files
from tests.support.helpers import git


@pytest.fixture
def repos(tmp_path):
    root = tmp_path / "remotes"
    root.mkdir()
    apache = Remote(root, "apache", "main")
    v1 = apache.commit("main", module_files("apache", "1.0.0"))
    apache.tag("v1.0.0", "main")
    v2 = apache.commit("main", {"README.md": "apache 2\n"})
    apache.commit("dev", {"README.md": "apache dev\n"}, base="main")
    control = Remote(root, "control")
    control.commit(
        "production",
        {
            "environment.conf": "modulepath = modules:site\n",
            "manifests/site.pp": "node default {}\n",
            "Puppetfile": f"mod 'apache', :git => '{apache.url}', :tag => 'v1.0.0'\n",
        },
    )
    return {"root": root, "apache": apache, "control": control, "v1": v1, "v2": v2}


def code_log(dep) -> list[str]:
    return git("log", "--format=%H", CODE_REF, cwd=dep.storage.path).split()


def test_deploy_composes_branch_modules_and_record(tmp_path, repos):
    dep = deployer(tmp_path / "data", repos["control"])
    result = dep.deploy("production")
    files = tree_files(dep, "production")
    assert files["manifests/site.pp"] == b"node default {}\n"
    assert files["modules/apache/manifests/init.pp"] == b"class apache {\n}\n"
    assert files["modules/apache/README.md"] == b"apache 1.0.0\n"
    assert not any(path.startswith("modules/apache/spec") for path in files)  # exclude_spec
    record = json.loads(files[".r10k-deploy.json"])
    assert record["name"] == "production"
    assert record["signature"] == repos["control"].head("production") == result.signature
    assert record["deploy_success"] is True
    assert record["module_deploys"] == [{"name": "apache", "version": "v1.0.0", "sha": repos["v1"]}]
    assert set(record) == {
        "name",
        "signature",
        "started_at",
        "finished_at",
        "deploy_success",
        "module_deploys",
    }
    # the environment-commit and code-commit are real commits in storage
    repo = pygit2.Repository(str(dep.storage.path))
    env_commit = repo[result.environment_commit]
    code_commit = repo[result.code_commit]
    assert code_commit.tree["environments/production"].id == env_commit.tree.id
    assert dep.environments() == {"production": result.environment_commit}
    assert (
        str(repo.lookup_reference("refs/environments/production").target)
        == result.environment_commit
    )


def test_noop_redeploy_makes_no_commit(tmp_path, repos):
    dep = deployer(tmp_path / "data", repos["control"])
    first = dep.deploy("production")
    before = code_log(dep)
    again = dep.deploy("production")
    assert again.skipped
    assert again.environment_commit == first.environment_commit
    assert again.code_commit == first.code_commit
    assert code_log(dep) == before


def test_branch_change_and_module_branch_move_redeploy(tmp_path, repos):
    control, apache = repos["control"], repos["apache"]
    control.commit(
        "production",
        {"Puppetfile": f"mod 'apache', :git => '{apache.url}', :branch => 'main'\n"},
    )
    dep = deployer(tmp_path / "data", control)
    first = dep.deploy("production")
    assert first.module_deploys[0].sha == repos["v2"]
    moved = apache.commit("main", {"README.md": "apache 3\n"})
    second = dep.deploy("production")
    assert not second.skipped
    assert second.signature == first.signature
    assert second.module_deploys[0].sha == moved
    assert tree_files(dep, "production")["modules/apache/README.md"] == b"apache 3\n"
    repo = pygit2.Repository(str(dep.storage.path))
    assert [str(p) for p in repo[second.environment_commit].parent_ids] == [
        first.environment_commit
    ]


def test_control_branch_with_default_branch_fallback(tmp_path, repos):
    control, apache = repos["control"], repos["apache"]
    puppetfile = (
        f"mod 'puppetlabs-apache', :git => '{apache.url}', :branch => :control_branch,\n"
        "  :default_branch => 'main'\n"
    )
    control.commit("dev", {"Puppetfile": puppetfile})
    control.commit("qa", {"Puppetfile": puppetfile}, base="production")
    dep = deployer(tmp_path / "data", control)
    dev = dep.deploy("dev")
    assert dev.module_deploys[0].version == "dev"
    assert tree_files(dep, "dev")["modules/apache/README.md"] == b"apache dev\n"
    qa = dep.deploy("qa")
    assert qa.module_deploys[0].version == "main"
    assert qa.module_deploys[0].sha == repos["v2"]


def test_commit_ref_install_path_moduledir_local_and_exclude_spec(tmp_path, repos):
    control, apache = repos["control"], repos["apache"]
    control.commit(
        "production",
        {
            "Puppetfile": (
                "moduledir 'thirdparty'\n"
                f"mod 'apache', :git => '{apache.url}', :commit => '{repos['v1']}',\n"
                "  :exclude_spec => false\n"
                f"mod 'other/web', :git => '{apache.url}', :ref => 'v1.0.0',\n"
                "  :install_path => 'site'\n"
                "mod 'kept', :local => true\n"
            ),
            "thirdparty/kept/init.pp": "local\n",
            "thirdparty/stray/init.pp": "not in the Puppetfile\n",
        },
    )
    dep = deployer(tmp_path / "data", control)
    dep.deploy("production")
    files = tree_files(dep, "production")
    assert "thirdparty/apache/spec/classes/init_spec.rb" in files
    assert files["site/web/README.md"] == b"apache 1.0.0\n"
    assert files["thirdparty/kept/init.pp"] == b"local\n"  # :local is not purged
    # committed content is kept, as r10k keeps tracked files (the conformance test checks it)
    assert files["thirdparty/stray/init.pp"] == b"not in the Puppetfile\n"
    record = json.loads(files[".r10k-deploy.json"])
    assert {"name": "kept", "version": "0.0.0 (local)", "sha": None} in record["module_deploys"]


def test_unknown_environment_and_name_correction(tmp_path, repos):
    repos["control"].commit("feature/x", {"README": "x\n"})
    dep = deployer(tmp_path / "data", repos["control"])
    with pytest.raises(DeployFailure) as info:
        dep.deploy("nosuchenv")
    assert "cannot be found in any source" in info.value.message
    assert info.value.corrected_name == "nosuchenv"
    # Code Manager's default is invalid_branches: error, so feature/x is skipped
    with pytest.raises(DeployFailure) as info:
        dep.deploy("feature/x")
    assert info.value.environment == "feature/x"
    assert info.value.corrected_name == "feature_x"
    corrected = deployer(tmp_path / "data2", repos["control"])
    corrected.sources = Sources.from_settings(
        {"puppet": SourceSettings(remote=repos["control"].url, invalid_branches="correct")}
    )
    result = corrected.deploy("feature/x")
    assert result.environment == "feature_x"
    assert (
        json.loads(tree_files(corrected, "feature_x")[".r10k-deploy.json"])["name"] == "feature/x"
    )


def test_failing_environment_keeps_last_good_version(tmp_path, repos):
    control, apache = repos["control"], repos["apache"]
    dep = deployer(tmp_path / "data", control)
    good = dep.deploy("production")
    control.commit(
        "production", {"Puppetfile": f"mod 'apache', :git => '{apache.url}', :tag => 'nope'\n"}
    )
    with pytest.raises(DeployFailure) as info:
        dep.deploy("production")
    assert "Could not resolve desired ref 'nope'" in info.value.message
    assert "Unable to manage Puppetfile content 'apache'" in info.value.message
    assert dep.environments() == {"production": good.environment_commit}
    assert dep.storage.code_commit() == good.code_commit


@pytest.mark.parametrize(
    ("puppetfile", "message"),
    [
        ("foo 'bar'\n", "unrecognized declaration 'foo'"),
        ("mod 'a', :local => true\nmod 'a', :local => true\n", "duplicate module names"),
        ("mod 'x', :git => 'ext::sh -c touch% /tmp/gitstate-pwned', :branch => 'm'\n", "ext::sh"),
        (
            "mod 'x', :git => '/r.git', :branch => 'm', :install_path => '../x'\n",
            "outside of containing",
        ),
        (
            "mod 'x', :git => '/r.git', :branch => 'm', :install_path => '/abs'\n",
            "outside of containing",
        ),
        (
            "mod 'x', '1.0.0', :git => '{url}'\n",
            "wrong number of arguments (given 3, expected 1..2)",
        ),
        ("mod 'puppetlabs/apache', '>= 8.3'\n", "not a valid Forge module version"),
    ],
)
def test_puppetfile_errors_fail_the_environment(tmp_path, repos, puppetfile, message):
    control = repos["control"]
    control.commit("production", {"Puppetfile": puppetfile.replace("{url}", repos["apache"].url)})
    dep = deployer(tmp_path / "data", control)
    with pytest.raises(DeployFailure) as info:
        dep.deploy("production")
    assert message in info.value.message
    assert "production" in info.value.message
    assert dep.environments() == {}


def test_ext_transport_is_never_run(tmp_path, repos):
    marker = tmp_path / "pwned"
    control = repos["control"]
    control.commit("production", {"Puppetfile": f"mod 'x', :git => 'ext::touch {marker}'\n"})
    with pytest.raises(DeployFailure):
        deployer(tmp_path / "data", control).deploy("production")
    sources = Sources.from_settings({"puppet": SourceSettings(remote=f"ext::touch {marker}")})
    with pytest.raises(CollectFailed, match="refusing remote URL 'ext::touch"):
        Deployer(tmp_path / "data2", sources).collect()
    assert not marker.exists()


@pytest.mark.parametrize("target", ["/etc/passwd", "../../../outside", "../../.."])
def test_symlink_escaping_a_branch_fails(tmp_path, repos, target):
    control = repos["control"]
    control.commit("production", {"manifests/link": Link(target)})
    dep = deployer(tmp_path / "data", control)
    with pytest.raises(DeployFailure, match="points outside the environment"):
        dep.deploy("production")


def test_symlinks_inside_are_kept_and_module_links_may_reach_the_environment(tmp_path, repos):
    control, apache = repos["control"], repos["apache"]
    apache.commit("linky", {"files/up": Link("../../../manifests/site.pp")}, base="main")
    control.commit(
        "production",
        {
            "data/link": Link("../manifests/site.pp"),
            "Puppetfile": f"mod 'apache', :git => '{apache.url}', :branch => 'linky'\n",
        },
    )
    dep = deployer(tmp_path / "data", control)
    dep.deploy("production")
    files = tree_files(dep, "production")
    assert files["data/link"] == b"-> ../manifests/site.pp"
    assert files["modules/apache/files/up"] == b"-> ../../../manifests/site.pp"
    apache.commit("linky", {"files/up": Link("../../../../etc")})
    with pytest.raises(DeployFailure, match="modules/apache/files/up"):
        dep.deploy("production")


def test_gitlinks_are_skipped(tmp_path, repos):
    control = repos["control"]
    sha = repos["v1"]
    git("update-index", "--add", "--cacheinfo", f"160000,{sha},vendor/sub", cwd=control.work)
    git("commit", "-q", "-m", "submodule", cwd=control.work)
    git("push", "-q", "origin", "production", cwd=control.work)
    dep = deployer(tmp_path / "data", control)
    dep.deploy("production")
    files = tree_files(dep, "production")
    assert not any(path.startswith("vendor") for path in files)
    assert "manifests/site.pp" in files


def test_deleted_branch_is_purged_at_next_collection(tmp_path, repos):
    control = repos["control"]
    control.commit("gone", {"README": "bye\n"})
    dep = deployer(tmp_path / "data", control)
    dep.deploy("gone")
    dep.deploy("production")
    assert set(dep.environments()) == {"gone", "production"}
    control.delete_branch("gone")
    collection = dep.collect()
    assert collection.names() == ["production"]
    dep.deploy("production", collection=collection)  # r10k purges on every deploy
    assert set(dep.environments()) == {"production"}
    code = pygit2.Repository(str(dep.storage.path)).revparse_single(CODE_REF)
    assert "gone" not in code.peel(pygit2.Commit).tree["environments"]
    assert dep.storage.environment_tip("gone") is None


def test_remove_and_purge_directly(tmp_path, repos):
    control = repos["control"]
    control.commit("a", {"README": "a\n"})
    dep = deployer(tmp_path / "data", control)
    collection = dep.collect()
    for env in collection.names():
        dep.deploy(env, collection=collection, purge=False)
    assert dep.remove("a") is not None
    assert dep.remove("a") is None
    assert set(dep.environments()) == {"production"}
    dep.deploy("a", collection=collection, purge=False)
    control.delete_branch("a")
    # an environment published after the collection was made is kept
    assert dep.purge(collection) == []
    assert dep.purge(dep.collect()) == ["a"]


def test_deploy_modules_false_keeps_existing_modules(tmp_path, repos):
    control, apache = repos["control"], repos["apache"]
    dep = deployer(tmp_path / "data", control)
    dep.deploy("production")
    control.commit(
        "production",
        {
            "Puppetfile": f"mod 'apache', :git => '{apache.url}', :branch => 'main'\n",
            "manifests/site.pp": "node default { }\n",
        },
    )
    result = dep.deploy("production", deploy_modules=False)
    files = tree_files(dep, "production")
    assert files["manifests/site.pp"] == b"node default { }\n"
    assert files["modules/apache/README.md"] == b"apache 1.0.0\n"
    assert result.module_deploys[0].sha == repos["v1"]
    # a new environment gets its modules anyway
    control.commit("fresh", {"README": "new\n"})
    dep.deploy("fresh", deploy_modules=False)
    assert "modules/apache/README.md" in tree_files(dep, "fresh")


def test_collect_failed_for_unreachable_source(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    missing = Remote(root, "control")
    missing.bare = tmp_path / "does-not-exist.git"
    dep = deployer(tmp_path / "data", missing)
    with pytest.raises(CollectFailed) as info:
        dep.collect()
    assert "Unable to determine current branches for Git source 'puppet'" in info.value.details
    with pytest.raises(DeployFailure, match="Unable to determine current branches"):
        dep.deploy("production")


def test_collision_between_sources_fails_collection(tmp_path, repos):
    other = Remote(repos["root"], "other")
    other.commit("production", {"README": "other\n"})
    dep = deployer(tmp_path / "data", repos["control"], other)
    with pytest.raises(CollectFailed, match="Environment collision at production"):
        dep.collect()


def test_concurrent_deploys_from_threads_all_land(tmp_path, repos):
    from concurrent.futures import ThreadPoolExecutor

    control = repos["control"]
    for index in range(6):
        control.commit(f"env{index}", {"README": f"{index}\n"}, base="production")
    dep = deployer(tmp_path / "data", control)
    collection = dep.collect()
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda env: dep.deploy(env, collection=collection), collection.names())
        )
    assert set(dep.environments()) == set(collection.names())
    assert {r.environment: r.environment_commit for r in results} == dep.environments()
    # the code ref's history is linear: every publish has the previous tip as parent
    assert len(code_log(dep)) == len(collection.names())


_WORKER = """
import sys
from pathlib import Path
from gitstate.engine.environments import Deployer
from gitstate.engine.sources import Sources
from gitstate.settings import SourceSettings
dep = Deployer(
    Path(sys.argv[1]),
    Sources.from_settings({"puppet": SourceSettings(remote=sys.argv[2])}),
    local_module_sources=[Path(sys.argv[1]).parent],
)
for env in sys.argv[3:]:
    dep.deploy(env, purge=False)
"""


def test_concurrent_deploys_from_processes_all_land(tmp_path, repos):
    control = repos["control"]
    for index in range(6):
        control.commit(f"env{index}", {"README": f"{index}\n"}, base="production")
    datadir = tmp_path / "data"
    deployer(datadir, control).collect()  # create the mirror once
    import sys

    groups = [["env0", "env1", "production"], ["env2", "env3"], ["env4", "env5", "production"]]
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(datadir), control.url, *group])
        for group in groups
    ]
    assert [proc.wait(timeout=120) for proc in procs] == [0, 0, 0]
    dep = deployer(datadir, control)
    assert set(dep.environments()) == {"production", *(f"env{i}" for i in range(6))}
    assert len(code_log(dep)) == 7  # production was deployed once, then skipped


def test_from_config_reads_sources_and_deploy_section(tmp_path, repos):
    from gitstate.config import Config

    config = Config.from_mapping(
        {
            "datadir": str(tmp_path / "data"),
            "sources": {"puppet": {"remote": repos["control"].url, "prefix": "qa"}},
            "deploy": {
                "timeouts": {"fetch": "10s"},
                "forge_url": "http://127.0.0.1:9/",
                "local_module_sources": [str(tmp_path / "remotes")],
            },
        }
    )
    dep = Deployer.from_config(config)
    assert dep.mirrors.timeout == 10.0
    assert dep.local_sources.allowed == ((tmp_path / "remotes").resolve(),)
    assert dep.forge.base_url == "http://127.0.0.1:9"
    assert dep.collect().names() == ["qa_production"]
    assert dep.deploy("qa_production").environment == "qa_production"


def test_export_writes_the_environment_and_links_shared_blobs(tmp_path, repos):
    control = repos["control"]
    control.commit("dev", {"data/link": Link("../manifests/site.pp")})
    dep = deployer(tmp_path / "data", control)
    for env in ("production", "dev"):
        dep.deploy(env)
    links: dict = {}
    out = tmp_path / "out"
    for env, commit in dep.environments().items():
        assert dep.storage.export(commit, out / env, links) == len(dep.storage.files(commit))
    site = out / "production" / "manifests" / "site.pp"
    assert site.read_text() == "node default {}\n"
    assert site.samefile(out / "dev" / "manifests" / "site.pp")
    assert (out / "dev" / "data" / "link").read_text() == "node default {}\n"


def test_collect_sees_new_branches_and_changes_nothing(tmp_path, repos):
    control = repos["control"]
    dep = deployer(tmp_path / "data", control)
    assert dep.collect().names() == ["production"]
    control.commit("b", {"README": "b\n"})
    collection = dep.collect()  # a fresh fetch, never a stale list
    assert collection.names() == ["b", "production"]
    assert collection.environments["b"].sha == control.head("b")
    assert dep.storage.code_commit() is None  # collecting (dry-run) publishes nothing
    dep.prefetch(collection)
    for env in collection.names():
        dep.deploy(env, collection=collection)
    assert set(dep.environments()) == {"b", "production"}


def test_unreachable_module_remote_fails_the_environment_only(tmp_path, repos):
    control, apache = repos["control"], repos["apache"]
    control.commit("dev", {"README": "dev\n"})
    dep = deployer(tmp_path / "data", control)
    good = dep.deploy("production")
    missing = (tmp_path / "missing.git").as_uri()
    control.commit(
        "production", {"Puppetfile": f"mod 'apache', :git => '{missing}', :branch => 'main'\n"}
    )
    collection = dep.collect()
    with pytest.raises(DeployFailure, match="Unable to fetch"):
        dep.deploy("production", collection=collection)
    assert dep.deploy("dev", collection=collection).environment == "dev"
    assert dep.environments()["production"] == good.environment_commit
    assert apache.url  # the module's real remote was never needed


def test_an_old_collection_never_puts_an_older_version_back(tmp_path, repos):
    control = repos["control"]
    dep = deployer(tmp_path / "data", control)
    old = dep.collect()
    newer_sha = control.commit("production", {"manifests/site.pp": "node newer {}\n"})
    newer = dep.collect()
    assert dep.deploy("production", collection=newer).signature == newer_sha
    late = dep.deploy("production", collection=old)
    assert late.signature == newer_sha
    assert late.skipped


def test_fresh_after_reuses_fetches_made_since_the_request(tmp_path, repos):
    import time

    control, apache = repos["control"], repos["apache"]
    control.commit(
        "production", {"Puppetfile": f"mod 'apache', :git => '{apache.url}', :branch => 'main'\n"}
    )
    control.commit("dev", {"README": "dev\n"})
    dep = deployer(tmp_path / "data", control)
    requested = time.time()
    dep.deploy("production", fresh_after=requested)
    moved = apache.commit("main", {"README.md": "moved\n"})
    # deploy-all queued as one deploy per environment: the remotes fetched
    # for the first are not fetched again for the ones queued with it
    assert dep.deploy("production", fresh_after=requested).skipped
    later = dep.deploy("production", fresh_after=time.time())
    assert later.module_deploys[0].sha == moved


@pytest.mark.parametrize("name", ["..", ".git", ".GIT"])
def test_hostile_tree_entry_names_fail_the_environment(tmp_path, repos, name):
    control = repos["control"]
    bare = control.bare
    blob = (
        subprocess.run(
            ["git", "hash-object", "-w", "--stdin"],
            cwd=bare,
            input=b"evil\n",
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .strip()
    )
    inner = b"100644 passwd\0" + bytes.fromhex(blob)
    inner_id = (
        subprocess.run(
            ["git", "hash-object", "-w", "-t", "tree", "--literally", "--stdin"],
            cwd=bare,
            input=inner,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .strip()
    )
    outer = f"40000 {name}\0".encode() + bytes.fromhex(inner_id)
    outer_id = (
        subprocess.run(
            ["git", "hash-object", "-w", "-t", "tree", "--literally", "--stdin"],
            cwd=bare,
            input=outer,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .strip()
    )
    commit = git("commit-tree", outer_id, "-m", "evil", cwd=bare).strip()
    git("update-ref", "refs/heads/evil", commit, cwd=bare)
    dep = deployer(tmp_path / "data", control)
    with pytest.raises(DeployFailure, match="cannot be deployed"):
        dep.deploy("evil")
    assert "evil" not in dep.environments()


def test_lock_files_left_by_a_killed_publisher_are_recovered(tmp_path) -> None:
    import os
    import time as clock

    control = Remote(tmp_path / "remotes", "control")
    control.commit("production", {"Puppetfile": "", "manifests/site.pp": "# one\n"})
    engine = deployer(tmp_path / "data", control)
    first = engine.deploy("production")
    # A deploy worker killed between locking a ref and renaming its lock
    # leaves these behind; later publishes must not fail forever.
    storage = tmp_path / "data" / "storage.git"
    old = clock.time() - 60
    for name in ("refs/heads/code.lock", "refs/environments/production.lock"):
        (storage / name).write_text("")
        os.utime(storage / name, (old, old))
    control.commit("production", {"manifests/site.pp": "# two\n"})
    second = engine.deploy("production")
    assert second.code_commit != first.code_commit
    assert not (storage / "refs/heads/code.lock").exists()
    assert not (storage / "refs/environments/production.lock").exists()


# -- symlink chains (issue 18, item 1) -------------------------------------------------

#: Ten directories deep, then a link back up to whatever holds ``a``.
DEEP = "a/b/c/d/e/f/g/h/i/j"
BACK_UP = Link("/".join([".."] * 10))


def chain(climb: int, then: str) -> Link:
    """A link through ``DEEP/l`` (which is the directory holding ``a``), then up ``climb``."""
    return Link("/".join([DEEP, "l", *[".."] * climb, then]))


def assert_not_published(dep: Deployer, environment: str) -> None:
    assert environment not in dep.environments()
    refs = git("for-each-ref", "--format=%(refname)", cwd=dep.storage.path).split()
    assert f"refs/environments/{environment}" not in refs


@pytest.mark.parametrize(
    ("link", "why"),
    [
        # The repro: the text stays inside, the resolution does not.
        (chain(10, "etc/passwd"), "points outside the environment"),
        (chain(10, "etc"), "points outside the environment"),
        (chain(1, "x"), "points outside the environment"),
    ],
    ids=["to-a-file", "to-a-directory", "just-above-the-root"],
)
def test_a_chain_through_a_link_that_leaves_fails_the_deploy(tmp_path, repos, link, why):
    control = repos["control"]
    control.commit("chained", {f"{DEEP}/l": BACK_UP, "x": link}, base="production")
    dep = deployer(tmp_path / "data", control)
    with pytest.raises(DeployFailure) as info:
        dep.deploy("chained")
    assert f"symlink x -> {link.target} {why}" in info.value.message
    assert "'chained'" in info.value.message
    assert_not_published(dep, "chained")


def test_a_link_loop_fails_the_deploy(tmp_path, repos):
    control = repos["control"]
    control.commit(
        "loop",
        {"one": Link("two"), "two": Link("dir/../one"), "dir/keep": "x\n"},
        base="production",
    )
    dep = deployer(tmp_path / "data", control)
    with pytest.raises(DeployFailure, match=r"symlink one -> two never resolves.*loop"):
        dep.deploy("loop")
    assert_not_published(dep, "loop")


@pytest.mark.parametrize(
    ("install", "climb"),
    [("", 3), (", :install_path => 'vendor/deep'", 4)],
    ids=["in-modules", "under-install-path"],
)
def test_a_chain_inside_a_module_that_leaves_fails_the_deploy(tmp_path, repos, install, climb):
    # The module sits 2 (modules/apache) or 3 (vendor/deep/apache) levels deep;
    # l resolves to the module's root, so `climb` levels up from it is outside.
    control, apache = repos["control"], repos["apache"]
    apache.commit("chained", {f"{DEEP}/l": BACK_UP, "x": chain(climb, "etc/shadow")}, base="main")
    control.commit(
        "production",
        {"Puppetfile": f"mod 'apache', :git => '{apache.url}', :branch => 'chained'{install}\n"},
    )
    dep = deployer(tmp_path / "data", control)
    with pytest.raises(DeployFailure, match=r"/apache/x -> .* points outside the environment"):
        dep.deploy("production")
    assert_not_published(dep, "production")


def test_a_chain_that_stays_inside_deploys(tmp_path, repos):
    control, apache = repos["control"], repos["apache"]
    apache.commit(
        "chained",
        {f"{DEEP}/l": BACK_UP, "up": chain(2, "manifests/site.pp"), "self": Link(".")},
        base="main",
    )
    control.commit(
        "production",
        {
            f"{DEEP}/l": BACK_UP,
            "x": chain(0, "manifests/site.pp"),
            "dangling": Link("nowhere/yet"),
            "Puppetfile": f"mod 'apache', :git => '{apache.url}', :branch => 'chained'\n",
        },
    )
    dep = deployer(tmp_path / "data", control)
    dep.deploy("production")
    files = tree_files(dep, "production")
    assert files["x"] == f"-> {DEEP}/l/manifests/site.pp".encode()
    assert files["modules/apache/up"] == f"-> {DEEP}/l/../../manifests/site.pp".encode()
    assert files["dangling"] == b"-> nowhere/yet"


# -- names no file system takes (issue 18, item 2) --------------------------------------


def test_a_branch_name_too_long_for_a_directory_is_refused_and_others_deploy(tmp_path, repos):
    control = repos["control"]
    long = "l" * 250
    control.commit(long, {"README": "long\n"}, base="production")
    dep = deployer(tmp_path / "data", control)
    with pytest.raises(DeployFailure) as info:
        dep.deploy(long)
    assert info.value.message.startswith(f"Environment '{long}' cannot be deployed: ")
    assert "250 bytes long" in info.value.message
    assert_not_published(dep, long)
    assert dep.deploy("production").environment == "production"
    assert list(dep.environments()) == ["production"]


# -- git modules without a ref (issue 20) -----------------------------------------------


def _no_ref(control: Remote, url: str, extra: str = "") -> None:
    control.commit("production", {"Puppetfile": f"mod 'apache', :git => '{url}'{extra}\n"})


def _module_record(dep: Deployer) -> dict:
    record = json.loads(tree_files(dep, "production")[".r10k-deploy.json"])
    (entry,) = record["module_deploys"]
    return entry


def test_module_without_ref_deploys_the_remotes_default_branch(tmp_path, repos):
    # The apache remote's default branch is main; it has no master, where
    # r10k 3.15 fails ("Could not resolve desired ref 'master'").
    _no_ref(repos["control"], repos["apache"].url)
    dep = deployer(tmp_path / "data", repos["control"])
    dep.deploy("production")
    assert _module_record(dep) == {"name": "apache", "version": "HEAD", "sha": repos["v2"]}
    files = tree_files(dep, "production")
    assert files["modules/apache/README.md"] == b"apache 2\n"


def test_module_without_ref_prefers_master_as_r10k_3_does(tmp_path, repos):
    apache = repos["apache"]
    master = apache.commit("master", {"README.md": "apache master\n"}, base="main")
    _no_ref(repos["control"], apache.url)
    dep = deployer(tmp_path / "data", repos["control"])
    dep.deploy("production")
    assert _module_record(dep) == {"name": "apache", "version": "master", "sha": master}


def test_module_without_ref_follows_a_new_default_branch(tmp_path, repos):
    apache = repos["apache"]
    _no_ref(repos["control"], apache.url)
    dep = deployer(tmp_path / "data", repos["control"])
    dep.deploy("production")
    dev = apache.head("dev")
    git("symbolic-ref", "HEAD", "refs/heads/dev", cwd=apache.bare)
    dep.deploy("production")
    assert _module_record(dep)["sha"] == dev


def test_module_without_ref_uses_default_branch_before_head(tmp_path, repos):
    _no_ref(repos["control"], repos["apache"].url, ", :default_branch => 'dev'")
    dep = deployer(tmp_path / "data", repos["control"])
    dep.deploy("production")
    assert _module_record(dep) == {
        "name": "apache",
        "version": "dev",
        "sha": repos["apache"].head("dev"),
    }


def test_configured_default_ref_still_decides(tmp_path, repos):
    _no_ref(repos["control"], repos["apache"].url)
    dep = deployer(tmp_path / "data", repos["control"], default_ref="dev")
    dep.deploy("production")
    assert _module_record(dep)["version"] == "dev"
    failing = deployer(tmp_path / "data2", repos["control"], default_ref="nope")
    with pytest.raises(DeployFailure, match="Could not determine desired ref"):
        failing.deploy("production")


def test_puppetfile_with_a_byte_order_mark_deploys(tmp_path, repos):
    text = f"\ufeffmod 'apache', :git => '{repos['apache'].url}', :tag => 'v1.0.0'\n"
    repos["control"].commit("production", {"Puppetfile": text})
    dep = deployer(tmp_path / "data", repos["control"])
    dep.deploy("production")
    assert _module_record(dep)["version"] == "v1.0.0"
