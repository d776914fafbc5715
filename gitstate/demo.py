"""``gitstate demo``: a complete installation in one folder, on defaults.

The demo folder holds a config file and a datadir with the state repository;
running the demo again reuses them, so the state branch (and its history)
survives restarts.
"""

from __future__ import annotations

from pathlib import Path

from ruamel.yaml import YAML

from gitstate.config import Config
from gitstate.server import serve
from gitstate.store import init_repository

DEFAULT_DIR = "gitstate-demo"


def prepare(directory: Path, port: int) -> tuple[Config, Path]:
    """Create (or reuse) the demo folder and return its config and config path."""
    directory = directory.absolute()
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "gitstate.yaml"
    config = Config.from_mapping(
        {
            "datadir": str(directory / "data"),
            "listen": f"127.0.0.1:{port}",
            "workers": 2,
            "threads": 2,
            # The demo runs on laptops; an unflushed commit there is fine.
            "state": {"fsync": False},
        },
        str(config_path),
    )
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    with config_path.open("w", encoding="utf-8") as stream:
        yaml.dump(config.to_mapping(), stream)
    init_repository(config.state_repo)
    return config, config_path


def run(directory: Path, port: int) -> int:
    """Build the demo folder, then serve until interrupted."""
    config, config_path = prepare(directory, port)
    base = f"http://{config.listen}"
    print(f"gitstate demo in {directory.absolute()}", flush=True)
    print(f"  state repository: {config.state_repo}", flush=True)
    print(f"  health:           curl {base}/internal/health", flush=True)
    print(f"  audit trail:      git --git-dir {config.state_repo} log state", flush=True)
    print("Press Ctrl-C to stop.", flush=True)
    serve(config, str(config_path))
    return 0
