"""The settings schema: its reference, its defaults, and bad values named by their key."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from gitstate.base.schema import SettingError, rows
from gitstate.config import Config, ConfigError, reference
from gitstate.engine.forge import DEFAULT_FORGE

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def load(**sections: Any) -> Config:
    return Config.from_mapping({"datadir": "/srv/gitstate", **sections})


def test_the_reference_is_generated_from_the_schema() -> None:
    assert DOC.read_text(encoding="utf-8") == reference(), (
        "docs/configuration.md is out of date: run `python -m gitstate.config > "
        "docs/configuration.md`"
    )


def test_every_declared_key_is_in_the_reference() -> None:
    listed = set(re.findall(r"^\| `([^`]+)` \|", DOC.read_text(encoding="utf-8"), re.M))
    assert {
        "deploy.timeouts.fetch",
        "file_sync.reconcile_budget",
        "sources.<name>.remote",
    } <= listed
    assert "file_sync.clients[].live" in listed
    assert "raw" not in listed


def test_the_example_file_uses_only_declared_keys() -> None:
    example = YAML(typ="safe").load(DOC.parent.parent / "deploy" / "gitstate.yaml.example")
    declared = {row.key for row in rows(Config)}

    def keys(data: Any, prefix: str) -> list[str]:
        found = []
        for name, value in data.items():
            key = f"{prefix}{name}"
            if key == "sources":
                found += keys(next(iter(value.values())), "sources.<name>.")
            elif isinstance(value, dict) and value:
                found += keys(value, f"{key}.")
            else:
                found.append(key)
        return found

    assert set(keys(example, "")) - declared == set()
    Config.from_mapping(example)  # and its values are valid


def test_defaults_are_those_gitstate_always_had() -> None:
    config = load()
    assert config.listen == "127.0.0.1:8170"
    assert (config.workers, config.threads) == (4, 8)
    assert (config.state.fsync, config.state.deadline, config.state.stale_lock_after) == (
        True,
        10.0,
        5.0,
    )
    auth = config.auth
    assert (auth.enabled, auth.webhook_authentication, auth.read_requires_token) == (
        True,
        True,
        False,
    )
    assert config.sources == {}
    deploy = config.deploy
    assert (deploy.pool_size, deploy.deploy_ttl, deploy.poll_interval) == (2, 3600.0, 1.0)
    assert deploy.forge_url == DEFAULT_FORGE == "https://forgeapi.puppet.com"
    assert (deploy.default_ref, deploy.fetch_workers, deploy.private_key) == (None, 8, None)
    assert dataclasses.astuple(deploy.timeouts) == (700.0, 600.0, 30.0, 60.0, 10.0)
    assert (deploy.puppetfile_ruby, deploy.ruby) == (False, "/usr/bin/ruby")
    assert dataclasses.astuple(deploy.gates) == (True, "code", "{source}", "{environment}")
    gates = config.gates
    assert (gates.current_ticket_lifetime, gates.queued_ticket_lifetime) == (720 * 60, 2 * 60)
    assert gates.queued_ticket_slack == 5 * 60
    assert (gates.timezone, dict(gates.rules), gates.holidays) == (dt.UTC, {}, ())
    sync = config.file_sync
    assert (sync.token, sync.clients, sync.keep_versions) == (None, (), 3)
    assert (sync.reconcile_interval, sync.reconcile_budget) == (60.0, 0.02)
    assert (sync.long_poll_timeout, sync.check_in_interval) == (30.0, 30.0)
    assert (config.webhooks.github_secret, config.webhooks.gitlab_token) == (None, None)
    assert (config.metrics.enabled, config.metrics.dir) == (True, None)
    assert (config.logging.json, config.logging.level) == (None, "INFO")
    assert (config.maintenance.strategy, config.maintenance.interval) == ("incremental", 3600.0)


@pytest.mark.parametrize(
    ("sections", "key", "words"),
    [
        ({"deploy": {"timeouts": {"fetch": "soon"}}}, "deploy.timeouts.fetch", "not a duration"),
        ({"deploy": {"pool_size": -1}}, "deploy.pool_size", "at least 0"),
        ({"deploy": {"gates": "yes"}}, "deploy.gates", "must be a mapping"),
        ({"state": {"fsync": "no"}}, "state.fsync", "true or false"),
        ({"workers": "many"}, "workers", "must be a number"),
        ({"auth": {"enabled": 1}}, "auth.enabled", "true or false"),
        ({"sources": {"puppet": {"prefix": True}}}, "sources.puppet.remote", "is required"),
        (
            {"sources": {"puppet": {"remote": "/r", "invalid_branches": "fix"}}},
            "sources.puppet.invalid_branches",
            "must be one of error, correct, correct_and_warn",
        ),
        (
            {
                "file_sync": {
                    "clients": [{"name": "a", "live": "/a"}, {"name": "b/c", "live": "/b"}]
                }
            },
            "file_sync.clients[1].name",
            "is not a name",
        ),
        (
            {"file_sync": {"clients": [{"name": "a", "live": "/a"}, {"name": "a", "live": "/b"}]}},
            "file_sync.clients",
            "unique",
        ),
        ({"file_sync": {"reconcile_budget": 2}}, "file_sync.reconcile_budget", "at most 1"),
        ({"file_sync": {"keep_versions": 0}}, "file_sync.keep_versions", "at least 1"),
        ({"gates": {"queued_ticket_lifetime": "2m"}}, "gates.queued_ticket_lifetime", "minutes"),
        ({"gates": {"timezone": "Mars/Olympus"}}, "gates.timezone", "unknown timezone"),
        ({"gates": {"lifetime": 3}}, "gates", "unknown keys ['lifetime']"),
        ({"logging": {"level": "chatty"}}, "logging.level", "must be one of"),
        ({"maintenance": {"interval": 0}}, "maintenance.interval", "above 0"),
        (
            {"webhooks": {"github": {"secret": "s", "secret_file": "/s"}}},
            "webhooks.github.secret",
            "not both",
        ),
        (
            {"webhooks": {"gitlab": {"token_file": "/nonexistent/token"}}},
            "webhooks.gitlab.token_file",
            "cannot read",
        ),
    ],
)
def test_a_bad_value_names_its_key(sections: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(SettingError) as caught:
        load(**sections)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"<config>: {key}: ")
    assert words in str(caught.value)


def test_the_file_is_named_with_the_key(tmp_path: Path) -> None:
    path = tmp_path / "gitstate.yaml"
    path.write_text("datadir: /x\ndeploy:\n  timeouts:\n    fetch: soon\n")
    with pytest.raises(ConfigError) as caught:
        Config.load(path)
    assert str(caught.value) == (
        f"{path}: deploy.timeouts.fetch: not a duration: 'soon' "
        "(use e.g. 30, '30s', '10m', '1h', '1d')"
    )


def test_values_are_read_into_their_types(tmp_path: Path) -> None:
    secret = tmp_path / "github.secret"
    secret.write_text("s3cret\n")
    config = load(
        state={"deadline": "1m"},
        deploy={"timeouts": {"fetch": "10s"}, "deploy_ttl": "2h", "gates": False},
        sources={"puppet": {"remote": " /r ", "ignore_branch_prefixes": "wip"}},
        file_sync={"token": 1234, "clients": [{"name": "primary", "live": "~/live"}]},
        webhooks={"github": {"secret_file": str(secret)}},
        gates={"current_ticket_lifetime": 1.5},
        logging={"json": "auto", "level": "debug"},
    )
    assert config.state.deadline == 60.0
    assert config.deploy.timeouts.fetch == 10.0
    assert config.deploy.deploy_ttl == 7200.0
    assert config.deploy.gates.enabled is False
    assert config.sources["puppet"].ignore_branch_prefixes == ("wip",)
    assert config.file_sync.token == "1234"
    assert config.file_sync.clients[0].live == Path("~/live").expanduser()
    assert config.webhooks.github_secret == b"s3cret"
    assert "s3cret" not in repr(config.webhooks) and "1234" not in repr(config.file_sync)
    assert config.gates.current_ticket_lifetime == 90
    assert (config.logging.json, config.logging.level) == (None, "DEBUG")


def test_the_older_fetch_timeout_still_wins() -> None:
    config = load(deploy={"fetch_timeout": "45s", "timeouts": {"fetch": 10}})
    assert config.deploy.timeouts.fetch == 45.0


def test_null_takes_the_default_and_unknown_keys_only_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = load(listen=None, deploy={"pool_size": None, "shiny": 1}, replicas={"count": 3})
    assert (config.listen, config.deploy.pool_size) == ("127.0.0.1:8170", 2)
    assert "deploy.shiny" in caplog.text and "replicas" in caplog.text
    # A section this gitstate does not know is written back as it was.
    assert config.to_mapping()["replicas"] == {"count": 3}


def test_the_shared_repositories_are_settings() -> None:
    config = load(state={"remote": "git://git.example.com/state.git"}, storage={"remote": "/srv/s"})
    assert config.state.remote == "git://git.example.com/state.git"
    assert config.state.refresh_interval == 1.0
    assert config.storage.remote == "/srv/s"
    assert config.to_mapping()["storage"] == {"remote": "/srv/s"}


def test_environment_variables_win(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GITSTATE_DATADIR", str(tmp_path))
    monkeypatch.setenv("GITSTATE_LISTEN", "0.0.0.0:9000")
    config = Config.from_mapping({})
    assert (config.datadir, config.listen) == (tmp_path, "0.0.0.0:9000")
