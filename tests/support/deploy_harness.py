"""A Code Manager app with a real deploy worker thread, for tests."""

from __future__ import annotations

import threading
from pathlib import Path

from gitstate.cli.sample import SampleRepos
from gitstate.config import Config
from gitstate.deploys.worker import DeployWorker
from gitstate.services import Services
from gitstate.web.app import create_app
from tests.support.client import Client

CM = "/code-manager/v1"


def deploy_config(tmp_path: Path, sample: SampleRepos, **deploy: object) -> Config:
    """Return a config deploying the sample control repo into ``tmp_path/data``."""
    return Config.from_mapping(
        {
            "datadir": str(tmp_path / "data"),
            "state": {"fsync": False},
            # These tests are about deploys; tests/api/test_auth_web.py covers tokens.
            "auth": {"enabled": False},
            "sources": {"puppet": {"remote": sample.control_url, "invalid_branches": "correct"}},
            "deploy": {
                "timeouts": {"wait": 60},
                "local_module_sources": [str(sample.modules)],
                **deploy,
            },
        }
    )


class Running:
    """An app with one deploy worker thread, as a test harness."""

    def __init__(self, config: Config) -> None:
        self.services = Services(config)
        self.client = Client(create_app(services=self.services))
        code_manager = self.services.code_manager
        self.worker = DeployWorker(
            code_manager.queue,
            code_manager.engine,
            0,
            config.datadir / "locks",
            self.services.deploy_guard,
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
