"""Config files: defaults, relative datadir, and clear errors naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitstate.config import Config, ConfigError


def test_defaults_and_relative_datadir(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "gitstate.yaml"
    path.parent.mkdir()
    path.write_text("datadir: ../var\n")
    config = Config.load(path)
    assert config.datadir == (tmp_path / "var").resolve()
    assert config.state_repo == (tmp_path / "var" / "state.git").resolve()
    assert config.listen == "127.0.0.1:8170"
    assert config.state.fsync is True


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gitstate.yaml"
    path.write_text("datadir: /srv/one\nlisten: 0.0.0.0:9000\n")
    monkeypatch.setenv("GITSTATE_DATADIR", str(tmp_path / "two"))
    config = Config.load(path)
    assert config.datadir == tmp_path / "two"
    assert config.listen == "0.0.0.0:9000"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen: x\n", "datadir: is required"),
        ("datadir: /x\nworkers: many\n", "workers: must be a number"),
        ("datadir: /x\nstate: [1]\n", "state: must be a mapping"),
        ("datadir: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        Config.load(path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Config.load(tmp_path / "nope.yaml")
