"""The README's examples stay true: its config loads, its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from ruamel.yaml import YAML

from gitstate.cli.main import build_parser
from gitstate.config import Config
from gitstate.services import Services

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_config_example_loads_into_the_services(tmp_path: Path) -> None:
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", README, re.S) if "datadir:" in b]
    data = YAML(typ="safe").load(block)
    data["datadir"] = str(tmp_path / "data")
    services = Services(Config.from_mapping(data))
    assert services.tokens.settings.enabled is True
    assert services.deploy_guard.gate_of("production") == ("code", "puppet", "production")
    assert services.code_manager.settings.pool_size == 2


def test_every_command_in_the_readme_table_exists() -> None:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if getattr(a, "choices", None)]
    rows = re.findall(r"^\| `gitstate ([a-z-]+)", README, re.M)
    assert len(rows) >= 10
    assert sorted(set(rows) - set(commands.choices)) == []
    # ... and every subcommand is in the table.
    assert sorted(set(commands.choices) - set(rows)) == []
