"""Puppetfiles that use Ruby, evaluated by the real system Ruby when allowed."""

from __future__ import annotations

import json
import shutil

import pytest

from gitstate.config import Config
from gitstate.engine.environments import Deployer, DeployFailure
from gitstate.engine.puppetfile import InstallPathOutside, InvalidModule, UnrecognizedDeclaration
from gitstate.engine.puppetfile_ruby import PuppetfileRubyError, RubyEvaluator
from tests.support.deploy_fixtures import Remote, deployer, module_files, tree_files

RUBY = shutil.which("ruby") or "/usr/bin/ruby"
pytestmark = pytest.mark.skipif(shutil.which("ruby") is None, reason="needs the system Ruby")

#: The kind of Puppetfile people write when they know r10k evaluates Ruby.
RUBY_PUPPETFILE = """\
def default_branch
  'main'
end

base = '{root}'
mod 'apache', :git => "#{{base}}/apache.git", :branch => default_branch
%w[ntp].each do |name|
  mod name, git: base + "/#{{name}}.git", tag: 'v1.0.0'
end
"""


@pytest.fixture
def repos(tmp_path):
    root = tmp_path / "remotes"
    root.mkdir()
    apache = Remote(root, "apache", "main")
    apache_sha = apache.commit("main", module_files("apache", "1.0.0"))
    ntp = Remote(root, "ntp", "main")
    ntp_sha = ntp.commit("main", module_files("ntp", "1.0.0"))
    ntp.tag("v1.0.0", "main")
    control = Remote(root, "control")
    control.commit(
        "production",
        {
            "manifests/site.pp": "node default {}\n",
            "Puppetfile": RUBY_PUPPETFILE.format(root=root.as_uri()),
        },
    )
    return {"control": control, "apache": apache_sha, "ntp": ntp_sha}


def test_ruby_puppetfile_is_refused_by_default_saying_how_to_allow_it(tmp_path, repos):
    dep = deployer(tmp_path / "data", repos["control"])
    with pytest.raises(DeployFailure) as info:
        dep.deploy("production")
    assert "set deploy.puppetfile_ruby: true" in info.value.message
    assert dep.environments() == {}


def test_ruby_puppetfile_deploys_when_allowed(tmp_path, repos):
    dep = deployer(tmp_path / "data", repos["control"], puppetfile_ruby=RubyEvaluator(RUBY))
    dep.deploy("production")
    files = tree_files(dep, "production")
    assert files["modules/apache/manifests/init.pp"] == b"class apache {\n}\n"
    assert files["modules/ntp/manifests/init.pp"] == b"class ntp {\n}\n"
    record = json.loads(files[".r10k-deploy.json"])
    assert record["module_deploys"] == [
        {"name": "apache", "version": "main", "sha": repos["apache"]},
        {"name": "ntp", "version": "v1.0.0", "sha": repos["ntp"]},
    ]


def test_the_setting_is_off_by_default_and_builds_the_evaluator(tmp_path):
    assert Config.from_mapping({"datadir": str(tmp_path)}).deploy.puppetfile_ruby is False
    config = Config.from_mapping(
        {
            "datadir": str(tmp_path),
            "deploy": {"puppetfile_ruby": True, "ruby": RUBY, "timeouts": {"puppetfile": 3}},
        }
    )
    evaluator = Deployer.from_config(config).puppetfile_ruby
    assert evaluator == RubyEvaluator(RUBY, 3.0)


# -- the same checks as parsed Puppetfiles ------------------------------------------------


def evaluate(text: str, timeout: float = 10.0):
    return RubyEvaluator(RUBY, timeout).evaluate(text)


def test_urls_built_in_ruby_are_checked_like_written_ones():
    with pytest.raises(InvalidModule, match="refusing remote URL 'ext::sh -c id'"):
        evaluate("helper = 'ext' + '::'\nmod 'x', :git => helper + 'sh -c id'\n")


def test_install_paths_built_in_ruby_are_checked():
    with pytest.raises(InstallPathOutside) as info:
        evaluate("up = '..'\nmod 'x', :git => '/r.git', :install_path => \"#{up}/x\"\n")
    assert info.value.line == 2


def test_forge_versions_and_arity_are_checked():
    with pytest.raises(InvalidModule, match="not a valid Forge module version"):
        evaluate("v = '>= ' + '8.3'\nmod 'puppetlabs/apache', v\n")
    with pytest.raises(InvalidModule, match=r"wrong number of arguments \(given 3"):
        evaluate("mod 'x', '1.0.0', :git => '/r.git'\n")


def test_unknown_declarations_keep_r10ks_words():
    with pytest.raises(UnrecognizedDeclaration) as info:
        evaluate("x = 1\nfoo 'bar'\n")
    assert info.value.declaration == "foo"
    assert info.value.line == 2


def test_ruby_errors_name_the_line():
    with pytest.raises(PuppetfileRubyError) as info:
        evaluate("mod 'a', :local => true\nraise 'no thanks'\n")
    assert "no thanks" in str(info.value)
    assert info.value.line == 2


# -- the fence ----------------------------------------------------------------------------


def test_a_puppetfile_that_never_ends_is_stopped():
    with pytest.raises(PuppetfileRubyError, match="did not finish evaluating"):
        evaluate("loop { }\n", timeout=1)


def test_no_network(tmp_path):
    with pytest.raises(PuppetfileRubyError, match="require 'socket' is not allowed"):
        evaluate("require 'socket'\nTCPSocket.new('192.0.2.1', 80)\n")
    with pytest.raises(PuppetfileRubyError, match="uninitialized constant"):
        evaluate("TCPSocket.new('192.0.2.1', 80)\n")


def test_no_writes_and_no_commands(tmp_path):
    target = tmp_path / "written"
    for text in (
        f"File.write('{target}', 'x')\n",
        f"File.open('{target}', 'w') {{ |f| f.puts 'x' }}\n",
        f"system('touch {target}')\n",
        f"`touch {target}`\n",
    ):
        with pytest.raises(PuppetfileRubyError, match="not allowed"):
            evaluate(text)
    assert not target.exists()


def test_the_puppetfile_is_read_from_stdin_not_from_the_environment(tmp_path):
    # Relative paths resolve in an empty scratch directory, not the deploy's.
    with pytest.raises(PuppetfileRubyError, match="No such file"):
        evaluate("x = File.read('Puppetfile')\n")
