"""The web page's server side: static files, the gate listing and the long poll."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from gitstate.config import Config
from gitstate.services import Services
from gitstate.web.app import create_app
from tests.support.client import Client


def _client(tmp_path: Path, **raw: Any) -> tuple[falcon.testing.TestClient, Services]:
    config = Config.from_mapping(
        {
            "datadir": str(tmp_path / "data"),
            "state": {"fsync": False},
            "auth": {"enabled": False},
            **raw,
        }
    )
    services = Services(config)
    return Client(create_app(services=services)), services


@pytest.fixture
def app(tmp_path: Path) -> tuple[falcon.testing.TestClient, Services]:
    return _client(tmp_path, threads=4)


def test_page_and_static_files_are_served_with_a_strict_policy(app) -> None:
    client, _ = app
    page = client.simulate_get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in page.text
    script = client.simulate_get("/static/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in script.text
    style = client.simulate_get("/static/app.css")
    assert style.headers["content-type"].startswith("text/css")
    again = client.simulate_get("/static/app.js", headers={"If-None-Match": script.headers["etag"]})
    assert again.status_code == 304


@pytest.mark.parametrize("name", ["nothing.js", "..%2Fui.py", "ui.py", "%2e%2e"])
def test_only_listed_static_files_are_served(app, name: str) -> None:
    client, _ = app
    assert client.simulate_get(f"/static/{name}").status_code == 404


def test_page_is_public_even_when_reads_need_a_token(tmp_path: Path) -> None:
    client, _ = _client(tmp_path, auth={"enabled": True, "read_requires_token": True})
    assert client.simulate_get("/").status_code == 200
    assert client.simulate_get("/static/app.js").status_code == 200
    assert client.simulate_get("/api/gates").status_code == 401
    assert client.simulate_get("/api/watch").status_code == 401


def test_listing_shows_every_service_with_derived_states_and_reasons(app) -> None:
    client, services = app
    assert client.simulate_get("/api/gates").json == {"commit": None, "services": []}
    client.simulate_post("/api/gates/shop/cart", json={"environments": ["develop", "live"]})
    client.simulate_post("/api/gates/infra/dns", json={"environments": ["live"]})
    client.simulate_put("/api/gates/shop/cart/live", json={"state": "closed", "message": "freeze"})
    taken = client.simulate_put("/api/gates", json={"gates": {"shop": {"cart": "live"}}})
    assert taken.json["status"] == "denied"
    taken = client.simulate_put("/api/gates", json={"gates": {"shop": {"cart": "develop"}}})
    ticket = taken.json["ticket"]["id"]

    listing = client.simulate_get("/api/gates")
    assert listing.status_code == 200
    assert listing.json["commit"] == services.store.head()
    assert listing.headers["etag"].strip('"') == services.store.head()
    docs = listing.json["services"]
    assert [(doc["group"], doc["name"]) for doc in docs] == [("infra", "dns"), ("shop", "cart")]
    cart = docs[1]["environments"]
    assert cart["live"]["state"] == "closed"
    assert cart["live"]["manual_state"] == "closed"
    assert [reason["kind"] for reason in cart["live"]["closed_by"]] == ["manual"]
    assert cart["live"]["message"] == "freeze"
    assert cart["develop"]["state"] == "closed"
    assert cart["develop"]["manual_state"] == "open"
    assert cart["develop"]["closed_by"] == [
        {"kind": "ticket", "detail": f"held by ticket {ticket}"}
    ]
    assert [item["id"] for item in cart["develop"]["queue"]] == [ticket]
    assert docs[0]["environments"]["live"]["closed_by"] == []
    # The listing agrees with gatekeeper's own read of each service.
    single = client.simulate_get("/api/gates/shop/cart").json["environments"]
    assert {env: view["state"] for env, view in single.items()} == {
        env: view["state"] for env, view in cart.items()
    }


def test_listing_names_holidays_and_time_rules(tmp_path: Path) -> None:
    client, _ = _client(
        tmp_path,
        gates={"holidays": [{"date": "2000-01-01", "reason": "old", "environments": ["x"]}]},
    )
    client.simulate_post("/api/gates/shop/cart", json={"environments": ["live"]})
    client.simulate_post(
        "/api/holidays/",
        json={"holidays": [{"date": "2999-01-01", "reason": "far", "environments": ["live"]}]},
    )
    live = client.simulate_get("/api/gates").json["services"][0]["environments"]["live"]
    assert live["closed_by"] == []


def test_watch_answers_at_once_when_the_caller_is_behind(app) -> None:
    client, services = app
    first = client.simulate_get("/api/watch")
    assert first.json == {"commit": None, "changed": False, "retry": 0.0}
    client.simulate_post("/api/gates/shop/cart", json={"environments": ["live"]})
    head = services.store.head()
    behind = client.simulate_get("/api/watch", params={"since": "0" * 40})
    assert behind.json == {"commit": head, "changed": True, "retry": 0.0}
    assert behind.headers["cache-control"] == "no-store"
    current = client.simulate_get("/api/watch", params={"since": head, "timeout": "0"})
    assert current.json == {"commit": head, "changed": False, "retry": 0.0}


def test_a_long_poll_holds_no_thread_and_answers_when_the_branch_moves(
    tmp_path: Path,
) -> None:
    # One thread for blocking work: the poll must not hold it while it waits.
    client, services = _client(tmp_path, threads=1)
    client.simulate_post("/api/gates/shop/cart", json={"environments": ["live"]})
    head = services.store.head()

    async def scenario() -> tuple[Any, Any, Any]:
        async with falcon.testing.ASGIConductor(client.app) as conductor:
            poll = asyncio.create_task(
                conductor.simulate_get("/api/watch", params={"since": head, "timeout": "20"})
            )
            await asyncio.sleep(0.2)
            assert not poll.done()
            # Other requests are answered meanwhile, writes included...
            listing = await conductor.simulate_get("/api/gates")
            change = await conductor.simulate_put(
                "/api/gates/shop/cart/live", json={"state": "closed"}
            )
            # ...and the write wakes the poll.
            return listing, change, await asyncio.wait_for(poll, 20)

    listing, change, answer = asyncio.run(scenario())
    assert listing.status_code == 200
    assert change.status_code == 200, change.text
    assert answer.json["changed"] is True
    assert answer.json["commit"] == services.store.head() != head
