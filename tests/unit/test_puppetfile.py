"""The Puppetfile parser: the Ruby subset people write, and every refusal."""

from __future__ import annotations

import pytest

from gitstate.engine.puppetfile import (
    CONTROL_BRANCH,
    DuplicateModules,
    InstallPathOutside,
    InvalidModule,
    PuppetfileSyntaxError,
    UnrecognizedDeclaration,
    parse,
)

FULL = """\
# a comment
forge 'https://forge.example.test'
moduledir 'thirdparty'   # trailing comment

mod 'puppetlabs-stdlib', '9.6.0'
mod "puppetlabs/concat", :latest
mod 'puppetlabs-ntp'
mod 'apache',
  :git => 'https://git.example.test/apache.git',
  :tag => 'v1.0.0'
mod 'nginx', git: 'git@git.example.test:nginx.git', branch: :control_branch, default_branch: 'main'
mod('mysql', { :git => 'file:///srv/mysql.git',
  :commit => '0123456789abcdef0123456789abcdef01234567' })
mod 'site_stuff', :local => true
mod 'custom',
  :git          => '/srv/custom.git',
  :ref          => 'release-1',   # comment inside a declaration
  :install_path => 'site',
  :exclude_spec => false
"""


def test_full_puppetfile():
    pf = parse(FULL)
    assert pf.moduledir == "thirdparty"
    assert pf.forge == "https://forge.example.test"
    mods = {m.name: m for m in pf.modules}
    assert list(mods) == [
        "stdlib",
        "concat",
        "ntp",
        "apache",
        "nginx",
        "mysql",
        "site_stuff",
        "custom",
    ]
    assert mods["stdlib"].kind == "forge" and mods["stdlib"].version == "9.6.0"
    assert mods["stdlib"].forge_name == "puppetlabs-stdlib"
    assert mods["concat"].version == ":latest" and mods["concat"].forge_name == "puppetlabs-concat"
    assert mods["ntp"].version is None
    assert mods["apache"].kind == "git"
    assert (mods["apache"].ref, mods["apache"].ref_kind) == ("v1.0.0", "tag")
    assert mods["apache"].path == "thirdparty/apache"
    assert mods["apache"].line == 8
    assert mods["custom"].line == 15
    assert mods["nginx"].ref == CONTROL_BRANCH and mods["nginx"].default_branch == "main"
    assert mods["mysql"].ref_kind == "commit"
    assert mods["site_stuff"].kind == "local"
    assert mods["custom"].path == "site/custom" and mods["custom"].exclude_spec is False
    assert all(m.exclude_spec for m in pf.modules if m.name != "custom")


def test_empty_puppetfile_and_default_moduledir():
    pf = parse("# nothing\n\n")
    assert pf.modules == () and pf.moduledir == "modules"
    assert parse("mod 'a', :local => true\n").modules[0].path == "modules/a"


def test_unrecognized_declaration_has_r10k_message_and_line():
    with pytest.raises(UnrecognizedDeclaration) as info:
        parse("mod 'a', :local => true\nfoo 'bar'\n", environment="production")
    assert "unrecognized declaration 'foo'" in str(info.value)
    assert info.value.line == 2
    assert info.value.environment == "production"
    assert info.value.declaration == "foo"


def test_duplicates_have_r10k_message():
    text = "mod 'apache', :local => true\nmod 'puppetlabs-apache', '1.0.0'\n"
    with pytest.raises(DuplicateModules) as info:
        parse(text)
    assert str(info.value) == (
        "Puppetfiles cannot contain duplicate module names. "
        "Remove the duplicates of the following modules: apache"
    )
    assert info.value.names == ["apache"]


@pytest.mark.parametrize("path", ["../x", "/etc", "a/../../b", "..", "a\\b"])
def test_install_path_outside_environment(path):
    with pytest.raises(InstallPathOutside) as info:
        parse(f"mod 'x', :git => '/r.git', :branch => 'main', :install_path => '{path}'\n")
    assert "outside of containing environment" in str(info.value)
    assert info.value.module == "x"


def test_moduledir_outside_environment():
    with pytest.raises(InstallPathOutside):
        parse("moduledir '../elsewhere'\n")


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% /tmp/pwned",
        "fd::17",
        "-oProxyCommand=evil",
        "gopher://h/x",
        "ssh://-oX/y",
    ],
)
def test_hostile_urls_are_refused(url):
    with pytest.raises(InvalidModule) as info:
        parse(f"mod 'x', :git => '{url}', :branch => 'main'\n")
    assert url in str(info.value)
    assert info.value.line == 1


def test_conflicting_refs_are_refused():
    with pytest.raises(InvalidModule, match="only one of"):
        parse("mod 'x', :git => '/r.git', :tag => 'a', :branch => 'b'\n")


@pytest.mark.parametrize(
    "text",
    [
        "mod 'x',\n",
        "mod 'x', :git =>\n",
        "mod 'x' :git => 'y'\n",
        "mod 'x', \"#{ENV['X']}\"\n",
        "mod 'x', :git => 'a', :git => 'b'\n",
        "mod 'x'\n  :git => '/r'\n",
        "mod 'x', :git => '/r', 'extra'\n",
    ],
)
def test_syntax_errors(text):
    with pytest.raises(PuppetfileSyntaxError):
        parse(text)


def test_bad_names_and_options():
    with pytest.raises(InvalidModule, match="must match"):
        parse("mod 'a-b-c', :local => true\n")
    with pytest.raises(InvalidModule, match="unsupported option"):
        parse("mod 'a', :svn => 'x'\n")
    with pytest.raises(InvalidModule, match="not supported"):
        parse("mod 'a', type: 'tarball', source: 'x'\n")
    with pytest.raises(InvalidModule, match="author-name"):
        parse("mod 'stdlib', '1.0.0'\n")


def test_type_git_source_spelling_and_double_quotes():
    pf = parse('mod "x", type: "git", source: "/r.git", version: "v1"\n')
    module = pf.modules[0]
    assert (module.kind, module.url, module.ref, module.ref_kind) == (
        "git",
        "/r.git",
        "v1",
        "version",
    )


# -- as r10k 3.15 reads them (issue 20) --------------------------------------------------


def test_a_byte_order_mark_is_skipped_as_ruby_skips_it():
    pf = parse("\ufeff# made on Windows\nmod 'puppetlabs-stdlib', '9.6.0'\n")
    assert [module.name for module in pf.modules] == ["stdlib"]
    assert pf.modules[0].line == 2


@pytest.mark.parametrize("version", [">= 8.3", "1.0", "8", "~> 1.2.3", "01.2.3", "1.2.3.4"])
def test_forge_versions_r10k_refuses_are_refused(version):
    with pytest.raises(InvalidModule) as info:
        parse(f"mod 'puppetlabs/apache', '{version}'\n")
    assert str(info.value).endswith(f"Module version {version} is not a valid Forge module version")
    assert info.value.module == "puppetlabs/apache"


@pytest.mark.parametrize("version", ["8.3.0", "1.0.0-rc.1", "2.0.0+build.7", "0.0.1"])
def test_semantic_versions_are_accepted(version):
    assert parse(f"mod 'puppetlabs/apache', '{version}'\n").modules[0].version == version


@pytest.mark.parametrize(
    ("text", "given"),
    [
        ("mod 'x', '1.0.0', :git => '/r.git'\n", 3),
        ("mod 'puppetlabs/x', '1.0.0', '2.0.0'\n", 3),
        ("mod\n", 0),
    ],
)
def test_wrong_number_of_arguments_has_rubys_message(text, given):
    with pytest.raises(InvalidModule) as info:
        parse(text)
    assert str(info.value).endswith(f"wrong number of arguments (given {given}, expected 1..2)")


def test_unknown_declarations_are_refused_in_r10ks_words():
    with pytest.raises(UnrecognizedDeclaration, match="unrecognized declaration 'foo'"):
        parse("\ufefffoo 'bar'\n")
