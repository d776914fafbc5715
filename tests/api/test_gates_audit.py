"""Audit: commit subjects, per-environment history, ?at=, ETag and If-Match."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pygit2
import pytest

from tests.support.gates import GateClient, make_client

ALICE = {"X-Gitstate-Actor": "alice"}
BOB = {"X-Gitstate-Actor": "bob"}


@pytest.fixture
def client(tmp_path: Path) -> GateClient:
    c = make_client(tmp_path)
    c.simulate_post(
        "/api/gates/shop/cart", json={"environments": ["develop", "live"]}, headers=ALICE
    )
    return c


def log(client: GateClient) -> list[pygit2.Commit]:
    repo = pygit2.Repository(str(client.services.config.state_repo))
    walker = repo.walk(repo.references["refs/heads/state"].target)
    return list(walker)


def test_every_change_is_a_commit_naming_gate_change_and_actor(client: GateClient) -> None:
    client.simulate_put("/api/gates/shop/cart/live", json={"state": "closed"}, headers=BOB)
    client.simulate_put(
        "/api/gates/shop/cart/live", json={"message": "freeze for Black Friday"}, headers=BOB
    )
    ticket = client.simulate_put(
        "/api/gates", json={"gates": {"shop": {"cart": "develop"}}}, headers=ALICE
    ).json["ticket"]["id"]
    client.simulate_delete(f"/api/tickets/{ticket}", headers=ALICE)
    subjects = [commit.message.split("\n", 1)[0] for commit in log(client)]
    assert subjects == [
        f"alice releases ticket {ticket[:8]} (shop/cart/develop)",
        f"alice takes shop/cart/develop with new ticket {ticket[:8]}",
        "bob sets the message of shop/cart/live to 'freeze for Black Friday'",
        "bob closes shop/cart/live",
        "alice creates gates shop/cart (develop, live)",
    ]
    newest = log(client)[0]
    assert newest.author.name == "alice"
    assert "Actor: alice" in newest.message
    assert "Operation: gates.release" in newest.message


def test_anonymous_without_header(client: GateClient) -> None:
    client.simulate_put("/api/gates/shop/cart/live", json={"state": "closed"})
    assert log(client)[0].message.startswith("anonymous closes shop/cart/live")


def test_reads_and_denials_never_commit(client: GateClient) -> None:
    client.simulate_put("/api/gates/shop/cart/live", json={"state": "closed"})
    before = len(log(client))
    client.simulate_get("/api/gates/shop/cart")
    client.simulate_get("/api/gates/shop/cart/live")
    client.simulate_get("/api/holidays/")
    client.simulate_get("/api/gates/shop/cart/live/history")
    assert client.tas({"shop": {"cart": "live"}}).json == {"status": "denied"}
    client.simulate_put("/api/gates/shop/cart/live", json={"state": "closed"})
    client.simulate_delete("/api/tickets/unknown")
    assert len(log(client)) == before


def test_expired_tickets_are_ignored_without_a_commit(client: GateClient) -> None:
    client.tas({"shop": {"cart": "develop"}})
    before = len(log(client))
    client.clock.advance(721 * 60)
    env = client.env("shop", "cart", "develop")
    assert env["state"] == "open"
    assert env["queue"] == []
    assert len(log(client)) == before


def test_history_of_one_environment(client: GateClient) -> None:
    client.simulate_put("/api/gates/shop/cart/live", json={"state": "closed"}, headers=BOB)
    client.simulate_put("/api/gates/shop/cart/develop", json={"message": "dev only"}, headers=BOB)
    client.simulate_put("/api/gates/shop/cart/live", json={"message": "why"}, headers=ALICE)
    result = client.simulate_get("/api/gates/shop/cart/live/history")
    assert result.status_code == 200
    history = result.json["history"]
    assert [(h["actor"], h["state"], h["message"]) for h in history] == [
        ("alice", "closed", "why"),
        ("bob", "closed", ""),
        ("alice", "open", ""),
    ]
    assert history[0]["subject"] == "alice sets the message of shop/cart/live to 'why'"
    assert history[0]["operation"] == "gates.set"
    assert dt.datetime.fromisoformat(history[0]["time"]).tzinfo is not None
    assert result.headers["etag"].strip('"') == history[0]["commit"]
    limited = client.simulate_get("/api/gates/shop/cart/live/history", params={"limit": 1})
    assert len(limited.json["history"]) == 1


def test_history_survives_deletion(client: GateClient) -> None:
    client.simulate_delete("/api/gates/shop/cart", headers=BOB)
    history = client.simulate_get("/api/gates/shop/cart/live/history").json["history"]
    assert history[0]["present"] is False
    assert history[0]["actor"] == "bob"
    assert client.simulate_get("/api/gates/nope/none/live/history").status_code == 404


def test_at_a_commit_shows_the_past(client: GateClient) -> None:
    first = client.simulate_get("/api/gates/shop/cart").headers["etag"].strip('"')
    ticket = client.tas({"shop": {"cart": "live"}}).json["ticket"]["id"]
    client.simulate_put("/api/gates/shop/cart/live", json={"message": "later"})
    past = client.simulate_get("/api/gates/shop/cart", params={"at": first})
    assert past.status_code == 200
    assert past.headers["etag"].strip('"') == first
    assert past.json["environments"]["live"]["state"] == "open"
    assert past.json["environments"]["live"]["message"] == ""
    now = client.simulate_get("/api/gates/shop/cart/live")
    assert now.json["queue"][0]["id"] == ticket
    short = client.simulate_get("/api/gates/shop/cart/live", params={"at": first[:10]})
    assert short.json["queue"] == []


def test_at_a_time(client: GateClient) -> None:
    before = dt.datetime(2001, 1, 1, tzinfo=dt.UTC).isoformat()
    result = client.simulate_get("/api/gates/shop/cart", params={"at": before})
    assert result.status_code == 404
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    result = client.simulate_get("/api/gates/shop/cart", params={"at": future})
    assert result.status_code == 200
    assert result.json["name"] == "cart"


def test_etag_and_if_match(client: GateClient) -> None:
    read = client.simulate_get("/api/gates/shop/cart")
    etag = read.headers["etag"]
    assert etag.startswith('"')
    ok = client.simulate_put(
        "/api/gates/shop/cart/live", json={"state": "closed"}, headers={"If-Match": etag}
    )
    assert ok.status_code == 200
    assert ok.headers["etag"] != etag
    stale = client.simulate_put(
        "/api/gates/shop/cart/live", json={"state": "open"}, headers={"If-Match": etag}
    )
    assert stale.status_code == 412
    assert stale.json["status"] == "error"
    assert stale.json["commit"] == ok.headers["etag"].strip('"')
    assert client.env("shop", "cart", "live")["state"] == "closed"
    current = ok.headers["etag"]
    for form in ("*", '"other", W/{}'):
        header = form.format(current)
        result = client.simulate_put(
            "/api/gates/shop/cart/live", json={"message": header}, headers={"If-Match": header}
        )
        assert result.status_code == 200, header
        current = result.headers["etag"]
    t_and_s = client.simulate_put(
        "/api/gates",
        json={"gates": {"shop": {"cart": "develop"}}},
        headers={"If-Match": etag},
    )
    assert t_and_s.status_code == 412
    assert client.env("shop", "cart", "develop")["queue"] == []


def test_if_match_on_every_write(client: GateClient) -> None:
    stale = {"If-Match": '"0000000"'}
    for result in (
        client.simulate_post("/api/gates/a/b", json={"environments": ["x"]}, headers=stale),
        client.simulate_put("/api/gates/shop/cart", json={"name": "x"}, headers=stale),
        client.simulate_delete("/api/gates/shop/cart", headers=stale),
        client.simulate_delete("/api/tickets/x", headers=stale),
        client.simulate_post("/api/holidays/", json={"holidays": []}, headers=stale),
    ):
        assert result.status_code == 412, result.text


def test_a_write_that_changes_nothing_does_not_commit_cleanup(client: GateClient) -> None:
    client.tas({"shop": {"cart": "develop"}})
    client.clock.advance(721 * 60)
    before = len(log(client))
    client.simulate_put("/api/gates/shop/cart", json={})
    client.simulate_put("/api/gates/shop/cart", json={"environments": {"live": {"state": "open"}}})
    client.simulate_put("/api/gates/shop/cart/develop", json={"state": "open"})
    assert len(log(client)) == before
    client.simulate_put("/api/gates/shop/cart/develop", json={"state": "closed"})
    assert "(drops expired ticket" in log(client)[0].message.split("\n", 1)[0]


def test_tickets_follow_a_moved_service(client: GateClient) -> None:
    ticket = client.tas({"shop": {"cart": ["develop", "live"]}}).json["ticket"]["id"]
    moved = client.simulate_put("/api/gates/shop/cart", json={"group": "store", "name": "basket"})
    assert moved.status_code == 200
    assert log(client)[0].message.startswith("anonymous updates gates shop/cart: moves it to")
    assert client.env("store", "basket", "live")["queue"][0]["id"] == ticket
    assert client.tas({"store": {"basket": "live"}}, ticket=ticket).json["status"] == "ok"
    client.simulate_delete(f"/api/tickets/{ticket}")
    for env in ("develop", "live"):
        assert client.env("store", "basket", env)["queue"] == []
        assert client.env("store", "basket", env)["state"] == "open"
    taken = client.simulate_put("/api/gates/store/basket", json={"name": "basket"})
    assert taken.status_code == 200
    client.create("store", "other")
    clash = client.simulate_put("/api/gates/store/other", json={"name": "basket"})
    assert clash.status_code == 400
    assert clash.json["reason"] == "Service with this name already exists"


def test_the_release_check_sees_the_state_the_release_commits_on(tmp_path) -> None:
    """A ticket that joins another group's gate mid-release is checked on that gate too.

    The first look at the ticket (prepared before the writer locks) finds
    one group; meanwhile another process lets the ticket take a second
    gate. The release runs again on the new tip, the check sees both groups
    and refuses, and nothing is written.
    """
    from gitstate.auth import PermissionDenied
    from gitstate.gates.service import Gates
    from gitstate.store.branch import Store

    path = tmp_path / "state.git"
    gates, other = Gates(Store(path)), Gates(Store(path, create=False))
    gates.create("shop", "cart", ["live"], actor="root")
    gates.create("ops", "db", ["live"], actor="root")
    ticket = gates.test_and_set({"shop": {"cart": "live"}}, actor="alice").body["ticket"]["id"]
    seen: list[set[str]] = []
    joined: list[str | None] = []

    def shop_only(groups: set[str]) -> None:
        seen.append(set(groups))
        if len(seen) == 1:
            answer = other.test_and_set({"ops": {"db": "live"}}, ticket, actor="root")
            assert answer.body["status"] == "ok"
            joined.append(answer.commit)
        for group in sorted(groups - {"shop"}):
            raise PermissionDenied("alice", f"gates:{group}", f"change the gates of {group}")

    with pytest.raises(PermissionDenied):
        gates.release(ticket, actor="alice", may_release=shop_only)
    assert seen == [{"shop"}, {"shop", "ops"}]
    assert gates.head() == joined[0]  # the join, and no release after it
    queue = gates.get_environment("ops", "db", "live").body["queue"]
    assert [item["id"] for item in queue] == [ticket]
