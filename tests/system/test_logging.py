"""JSON logs: a request id echoed, on every line of the request and in its commits."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import falcon.testing
import pytest
import requests

from gitstate.base import logs
from gitstate.base.schema import SettingError, read_section
from gitstate.config import Config
from gitstate.services import Services
from gitstate.settings import LogSettings
from gitstate.web.app import create_app
from tests.support.client import Client
from tests.support.helpers import free_port, wait_for_http


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Route the root logger through gitstate's JSON handler into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    config = logs.dict_config(LogSettings(json=True))
    formatter = logging.config.DictConfigurator(config).configure_custom(
        dict(config["formatters"]["gitstate"])
    )
    handler.setFormatter(formatter)
    handler.addFilter(logs.RequestContext())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@pytest.fixture
def app(tmp_path: Path) -> tuple[falcon.testing.TestClient, Services]:
    config = Config.from_mapping(
        {
            "datadir": str(tmp_path / "data"),
            "state": {"fsync": False},
            "auth": {"enabled": False},
        }
    )
    services = Services(config)
    return Client(create_app(config, services)), services


def test_the_request_id_is_echoed_logged_and_committed(app, captured, monkeypatch) -> None:
    client, services = app
    checked = services.health

    def health() -> tuple[dict, str | None]:
        logging.getLogger("gitstate.test").info("checking health")
        return checked()

    monkeypatch.setattr(services, "health", health)
    answer = client.simulate_get("/internal/health", headers={"X-Request-Id": "req-1234"})
    assert answer.headers["x-request-id"] == "req-1234"
    created = client.simulate_post(
        "/api/gates/grp/svc",
        json={"environments": ["live"]},
        headers={"X-Request-Id": "req-5678", "X-Gitstate-Actor": "alice"},
    )
    assert created.headers["x-request-id"] == "req-5678"

    records = lines(captured)
    inner = [r for r in records if r["message"] == "checking health"]
    assert [r["request_id"] for r in inner] == ["req-1234"]
    access = [r for r in records if r["logger"] == "gitstate.access"]
    assert [(r["request_id"], r["method"], r["path"], r["status"]) for r in access] == [
        ("req-1234", "GET", "/internal/health", 200),
        ("req-5678", "POST", "/api/gates/grp/svc", created.status_code),
    ]
    assert access[1]["actor"] == "alice"
    assert all(isinstance(r["ms"], float) and "time" in r for r in access)
    assert services.store.log(limit=1)[0].request_id == "req-5678"
    # Outside a request, lines have no request id.
    logging.getLogger("gitstate.test").info("idle")
    assert "request_id" not in lines(captured)[-1]


def test_a_request_without_an_id_gets_one_used_everywhere(app, captured) -> None:
    client, services = app
    created = client.simulate_post("/api/gates/grp/svc", json={"environments": ["live"]})
    made = created.headers["x-request-id"]
    assert made
    access = [r for r in lines(captured) if r["logger"] == "gitstate.access"]
    assert access[-1]["request_id"] == made
    assert services.store.log(limit=1)[0].request_id == made


def test_hostile_request_ids_are_cleaned(app) -> None:
    client, _services = app
    answer = client.simulate_get("/internal/health", headers={"X-Request-Id": "a b\tc" + "x" * 500})
    value = answer.headers["x-request-id"]
    assert value.startswith("abc") and len(value) <= 100


def test_logging_settings_are_checked() -> None:
    def read(data: object) -> LogSettings:
        return read_section(LogSettings, data, "logging")

    assert logs.use_json(read({"json": True}))
    assert not logs.use_json(read({"json": False}))
    assert read(None).json is None
    assert read({"level": "debug"}).level == "DEBUG"
    with pytest.raises(SettingError, match=r"^logging\.json: "):
        read({"json": "yes"})
    with pytest.raises(SettingError, match=r"^logging\.level: "):
        read({"level": "chatty"})


def test_gunicorn_and_app_lines_are_json(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gitstate.yaml"
    config.write_text(
        f"datadir: {tmp_path / 'data'}\n"
        f"listen: 127.0.0.1:{port}\n"
        "workers: 2\n"
        "threads: 1\n"
        "state:\n  fsync: false\n"
        "logging:\n  json: true\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    err = (tmp_path / "web.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "gitstate", "web", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=err,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/internal/health", timeout=60)
        answer = requests.get(
            f"{base}/api/gates", headers={"X-Request-Id": "from-the-proxy"}, timeout=30
        )
        assert answer.headers["X-Request-Id"] == "from-the-proxy"
    finally:
        process.terminate()
        process.wait(30)
        err.close()
    records = [json.loads(line) for line in (tmp_path / "web.log").read_text().splitlines()]
    assert any(
        r["logger"] == "gunicorn.error" and "Booting worker" in r["message"] for r in records
    )
    access = [r for r in records if r.get("request_id") == "from-the-proxy"]
    assert [(r["logger"], r["path"], r["status"]) for r in access] == [
        ("gitstate.access", "/api/gates", 200)
    ]
