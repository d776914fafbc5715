"""Branch → environment naming, exactly as r10k does it."""

from __future__ import annotations

import logging

import pytest

from gitstate.base.schema import SettingError, read_section
from gitstate.engine import sources
from gitstate.engine.sources import (
    ENVIRONMENT_NAME_MAX,
    Branch,
    EnvironmentCollision,
    Source,
    Sources,
    correct_name,
    environment_name_problem,
)
from gitstate.settings import SourceSettings


def settings(data: dict) -> SourceSettings:
    return read_section(SourceSettings, data, "sources.puppet")


def name(branch: str, **config: object) -> str | None:
    source = Source.from_settings(
        str(config.pop("name", "puppet")), settings({"remote": "/r", **config})
    )
    found = source.name_branch(branch)
    return found.environment if found else None


def test_correct_replaces_non_word_characters_one_for_one():
    assert name("feature/foo-bar", invalid_branches="correct") == "feature_foo_bar"
    assert name("a..b", invalid_branches="correct") == "a__b"


def test_correction_is_ascii_only():
    assert name("café", invalid_branches="correct") == "caf_"
    assert correct_name("naïve/x") == "na_ve_x"


def test_error_mode_is_the_default_and_skips_with_r10k_message(caplog):
    with caplog.at_level(logging.ERROR, logger="gitstate.engine.sources"):
        assert name("feature/foo-bar") is None
    assert (
        'Environment "feature/foo-bar" contained non-word characters, ignoring it.' in caplog.text
    )
    assert name("production") == "production"


def test_correct_and_warn_warns_once_per_branch(caplog, monkeypatch):
    monkeypatch.setattr(sources, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="gitstate.engine.sources"):
        for _ in range(3):  # three deploys in one process
            assert name("a-b", invalid_branches="correct_and_warn") == "a_b"
        assert name("c-d", invalid_branches="correct_and_warn") == "c_d"
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said == [
        'Environment "a-b" contained non-word characters, correcting name to a_b',
        'Environment "c-d" contained non-word characters, correcting name to c_d',
    ]


def test_prefixes():
    assert name("dev", name="qa", prefix=True) == "qa_dev"
    assert name("dev", name="qa", prefix="app1") == "app1_dev"
    assert name("dev", name="qa", prefix=False) == "dev"
    # the prefix itself is not corrected
    assert name("a-b", prefix="x-y", invalid_branches="correct") == "x-y_a_b"


def test_strip_component_string_and_regex():
    assert name("env/prod", strip_component="env/") == "prod"
    assert name("env/prod", strip_component="/^env\\//") == "prod"
    assert name("other/prod", strip_component="env/", invalid_branches="correct") == "other_prod"


def test_record_name_is_the_stripped_uncorrected_branch():
    source = Source.from_settings(
        "s", settings({"remote": "/r", "strip_component": "env/", "invalid_branches": "correct"})
    )
    assert source.name_branch("env/a-b") == Branch("s", "env/a-b", "a-b", "a_b")


def test_ignore_branch_prefixes():
    assert name("wip_thing", ignore_branch_prefixes=["wip", "tmp"]) is None
    assert name("main", ignore_branch_prefixes=["wip"]) == "main"


def test_collision_between_sources_fails_everything():
    sources = Sources.from_settings(
        {
            "one": SourceSettings(remote="/a"),
            "two": SourceSettings(remote="/b"),
            "three": SourceSettings(remote="/c", prefix=True),
        }
    )
    with pytest.raises(EnvironmentCollision) as info:
        sources.environments(
            {"one": ["production"], "two": ["production"], "three": ["production"]}
        )
    assert str(info.value) == (
        "Environment collision at production between two:production and one:production"
    )
    assert info.value.environment == "production"


def test_environments_sorted_and_skipping_invalid():
    sources = Sources.from_settings({"puppet": SourceSettings(remote="/a")})
    found = sources.environments({"puppet": ["b", "a", "x/y"]})
    assert list(found) == ["a", "b"]


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({}, "remote"),
        ({"remote": "/r", "invalid_branches": "fix"}, "invalid_branches"),
        ({"remote": "/r", "prefix": 3}, "prefix"),
        ({"remote": "/r", "strip_component": 5}, "strip_component"),
        ({"remote": "/r", "strip_component": "/(/"}, "strip_component"),
        ({"remote": "/r", "ignore_branch_prefixes": [1]}, "ignore_branch_prefixes"),
    ],
)
def test_bad_config_names_the_key(config, key):
    with pytest.raises(SettingError) as info:
        settings(config)
    assert info.value.key == f"sources.puppet.{key}"
    assert str(info.value).startswith(f"sources.puppet.{key}: ")


# -- names no file system takes (issue 18, item 2) --------------------------------------

LONG = "l" * 250


def test_a_name_too_long_for_a_directory_is_refused_in_error_mode(caplog):
    with caplog.at_level(logging.ERROR, logger="gitstate.engine.sources"):
        assert name(LONG) is None
    assert "cannot be a directory (the name is 250 bytes long" in caplog.text
    assert "ignoring it" in caplog.text


@pytest.mark.parametrize("mode", ["correct", "correct_and_warn"])
def test_a_name_too_long_is_skipped_with_a_warning_when_correcting(caplog, mode):
    # No correction r10k knows shortens a name; a cut name could take another's place.
    with caplog.at_level(logging.WARNING, logger="gitstate.engine.sources"):
        assert name(LONG, invalid_branches=mode) is None
        assert name(LONG.replace("l", "/", 1), invalid_branches=mode) is None
    assert "no correction makes it one; skipping it" in caplog.text


def test_the_longest_name_leaves_room_for_the_suffixes_and_counts_the_prefix():
    assert ENVIRONMENT_NAME_MAX + len(".") + len(".swap-4194304") <= 255
    fits = "f" * ENVIRONMENT_NAME_MAX
    assert name(fits) == fits
    assert name("f" * (ENVIRONMENT_NAME_MAX + 1)) is None
    assert name(fits[:-3], name="abc", prefix=True) is None  # "abc_" + 238 > the limit
    assert name(fits[:-4], name="abc", prefix=True) == "abc_" + fits[:-4]


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\0b", ".hidden", "-x", "é" * 121])
def test_names_no_directory_takes(bad):
    assert environment_name_problem(bad) is not None


def test_refused_names_are_reported_by_environments():
    sources = Sources.from_settings(
        {"puppet": settings({"remote": "/r", "invalid_branches": "correct"})}
    )
    refused: dict[str, str] = {}
    found = sources.environments({"puppet": ["production", LONG]}, refused)
    assert list(found) == ["production"]
    assert list(refused) == [LONG]
