"""Shared set-up for the gate tests (no tests here): an app on a private repo and a fake clock."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import falcon.testing

from gitstate.config import Config
from gitstate.services import Services
from gitstate.web.app import create_app
from tests.support.client import Client

ALL_DAY = [{"days": "mon-sun", "hours": "00:00-24:00"}]


class Clock:
    """A settable clock; ``gates.clock`` is replaced by one of these."""

    def __init__(self, now: float | None = None) -> None:
        self.now = float(int(time.time())) if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, when: dt.datetime) -> None:
        self.now = when.timestamp()


class GateClient(Client):
    """A test client that also carries the services and the clock."""

    services: Services
    clock: Clock

    def tas(self, gates: Any, query: str = "", **body: Any) -> falcon.testing.Result:
        return self.simulate_put(f"/api/gates{query}", json={"gates": gates, **body})

    def create(self, group: str = "g", service: str = "s", envs: Any = None) -> Any:
        result = self.simulate_post(
            f"/api/gates/{group}/{service}", json={"environments": envs or ["develop", "live"]}
        )
        assert result.status_code == 200, result.text
        return result.json

    def env(self, group: str = "g", service: str = "s", env: str = "develop") -> Any:
        result = self.simulate_get(f"/api/gates/{group}/{service}/{env}")
        assert result.status_code == 200, result.text
        return result.json


def make_client(
    tmp_path: Path, gates: dict[str, Any] | None = None, clock: Clock | None = None
) -> GateClient:
    """Build an app whose gates use ``gates`` as config section and a fake clock."""
    section = {"rules": {"develop": ALL_DAY, "live": ALL_DAY}} if gates is None else gates
    config = Config.from_mapping(
        {
            "datadir": str(tmp_path / "data"),
            "state": {"fsync": False},
            "auth": {"enabled": False},
            "gates": section,
        }
    )
    services = Services(config)
    services.gates.clock = clock or Clock()
    client = GateClient(create_app(config, services=services))
    client.services = services
    client.clock = services.gates.clock  # type: ignore[assignment]
    return client


ClientFactory = Callable[..., GateClient]
