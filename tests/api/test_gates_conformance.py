"""gatekeeper's conformance behaviours (reference §8), numbered as there.

Gate G is group ``g``, service ``s``, environments develop and live, with
rules open all day unless a test says otherwise. Queued tickets get no extra
slack here, so lifetimes are exactly gatekeeper's.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from tests.support.gates import ALL_DAY, Clock, GateClient, make_client

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4}$")
DEV = {"g": {"s": ["develop"]}}


@pytest.fixture
def client(tmp_path: Path) -> GateClient:
    c = make_client(
        tmp_path,
        {"rules": {"develop": ALL_DAY, "live": ALL_DAY}, "queued_ticket_slack": 0},
    )
    c.create()
    return c


def error(result, status: int, reason: str) -> None:
    assert result.status_code == status, result.text
    assert result.json == {"status": "error", "reason": reason}


# -- 1..15: services and manual state ---------------------------------------------


def test_01_create_returns_the_document(tmp_path: Path) -> None:
    c = make_client(tmp_path)
    result = c.simulate_post("/api/gates/g/s", json={"environments": ["develop", "live"]})
    assert result.status_code == 200
    doc = result.json
    assert doc["name"] == "s"
    assert doc["group"] == "g"
    assert doc["document_version"] == 2.2
    assert set(doc["environments"]) == {"develop", "live"}
    for env in doc["environments"].values():
        assert env["state"] == "open"
        assert env["message"] == ""
        assert env["message_timestamp"] == ""
        assert env["queue"] == []
        assert STAMP.match(env["state_timestamp"])


def test_02_duplicate_is_refused(client: GateClient) -> None:
    result = client.simulate_post("/api/gates/g/s", json={"environments": ["develop"]})
    error(result, 400, "Service with this name already exists")


def test_03_same_name_in_another_group(client: GateClient) -> None:
    result = client.simulate_post("/api/gates/g2/s", json={"environments": ["develop"]})
    assert result.status_code == 200


def test_04_dotted_names(client: GateClient) -> None:
    result = client.simulate_post("/api/gates/g/a.b", json={"environments": ["develop"]})
    error(result, 400, "Service name not valid. Should not empty or contains dots")
    result = client.simulate_post("/api/gates/a.b/s", json={"environments": ["develop"]})
    error(result, 400, "Group name not valid. Should not empty or contains dots")


@pytest.mark.parametrize(
    "body",
    [
        {"environments": []},
        {"environments": ""},
        {},
        {"environments": {"a": 1}},
        {"environments": [""]},
    ],
)
def test_05_invalid_environments(client: GateClient, body) -> None:
    result = client.simulate_post("/api/gates/g/new", json=body)
    error(result, 400, "Your json contains invalid information. Invalid environments.")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/gates/g/x"),
        ("PUT", "/api/gates/g/s"),
        ("PUT", "/api/gates/g/s/develop"),
        ("PUT", "/api/gates"),
        ("POST", "/api/holidays/"),
    ],
)
def test_06_body_that_is_not_json(client: GateClient, method: str, path: str) -> None:
    result = client.simulate_request(method, path, body=b"{not json")
    error(result, 400, "Json was not valid")


def test_07_not_found(client: GateClient) -> None:
    error(client.simulate_get("/api/gates/x/y"), 404, "Service or Group not found")
    error(client.simulate_get("/api/gates/g/s/nope"), 404, "Environment nope not found.")


def test_08_close_by_hand(client: GateClient) -> None:
    before = client.env()["state_timestamp"]
    client.clock.advance(5)
    result = client.simulate_put("/api/gates/g/s/develop", json={"state": "closed"})
    assert result.status_code == 200
    assert result.json["name"] == "s"
    assert result.json["environments"]["develop"]["state"] == "closed"
    assert result.json["environments"]["live"]["state"] == "open"
    env = client.env()
    assert env["state"] == "closed"
    assert env["state_timestamp"] != before


def test_09_closing_again_keeps_the_timestamp(client: GateClient) -> None:
    client.simulate_put("/api/gates/g/s/develop", json={"state": "closed"})
    first = client.env()["state_timestamp"]
    client.clock.advance(5)
    client.simulate_put("/api/gates/g/s/develop", json={"state": "closed"})
    assert client.env()["state_timestamp"] == first


def test_10_invalid_state(client: GateClient) -> None:
    result = client.simulate_put("/api/gates/g/s/develop", json={"state": "zzz"})
    error(result, 400, "state must be open or closed")


def test_11_messages(client: GateClient) -> None:
    client.simulate_put("/api/gates/g/s/develop", json={"message": "m"})
    env = client.env()
    assert env["message"] == "m"
    assert STAMP.match(env["message_timestamp"])
    live = client.env(env="live")
    assert live["message"] == ""
    assert live["message_timestamp"] == ""
    client.simulate_put("/api/gates/g/s/develop", json={"message": ""})
    env = client.env()
    assert env["message"] == ""
    assert env["message_timestamp"] == ""


def test_12_update_with_a_mapping(client: GateClient) -> None:
    before = client.simulate_get("/api/gates/g/s").json
    result = client.simulate_put(
        "/api/gates/g/s",
        json={"environments": {"develop": {"state": "closed"}, "live": {"message": "m"}}},
    )
    assert result.status_code == 200
    after = client.simulate_get("/api/gates/g/s").json
    assert after["environments"]["develop"]["state"] == "closed"
    assert after["environments"]["develop"]["message"] == ""
    assert after["environments"]["live"]["message"] == "m"
    assert after["environments"]["live"]["state"] == "open"
    assert (
        after["environments"]["live"]["state_timestamp"]
        == before["environments"]["live"]["state_timestamp"]
    )


def test_13_update_replaces_environments(client: GateClient) -> None:
    client.tas(DEV)
    result = client.simulate_put("/api/gates/g/s", json={"environments": ["a", "b"]})
    assert result.status_code == 200
    doc = client.simulate_get("/api/gates/g/s").json
    assert set(doc["environments"]) == {"a", "b"}
    for env in doc["environments"].values():
        assert env["state"] == "open"
        assert env["queue"] == []


def test_14_rename(client: GateClient) -> None:
    client.simulate_put("/api/gates/g/s/develop", json={"message": "keep me"})
    old = client.simulate_get("/api/gates/g/s").json
    assert client.simulate_put("/api/gates/g/s", json={"name": "s2"}).status_code == 200
    new = client.simulate_get("/api/gates/g/s2").json
    assert new == {**old, "name": "s2"}
    error(client.simulate_get("/api/gates/g/s"), 404, "Service or Group not found")


def test_15_delete(client: GateClient) -> None:
    result = client.simulate_delete("/api/gates/g/s")
    assert result.status_code == 200
    assert result.json == {"status": "ok"}
    error(client.simulate_delete("/api/gates/g/s"), 404, "Service or Group not found")


# -- 16..34: test-and-set, queues, lifetimes --------------------------------------


def test_16_take_one_gate(client: GateClient) -> None:
    result = client.tas(DEV, link="L")
    assert result.status_code == 200
    assert result.json["status"] == "ok"
    ticket = result.json["ticket"]
    uuid.UUID(ticket["id"])
    assert STAMP.match(ticket["updated"])
    assert ticket["expiration_date"] == pytest.approx(client.clock() + 720 * 60, abs=2)
    assert ticket["link"] == "L"
    env = client.env()
    assert env["state"] == "closed"
    assert env["queue"][0]["id"] == ticket["id"]
    stored = client.simulate_get("/api/gates/g/s/develop", params={}).json
    assert stored["queue"] == env["queue"]
    manual = client.simulate_put("/api/gates/g/s/develop", json={}).json
    assert manual["environments"]["develop"]["state"] == "open"
    live = client.env(env="live")
    assert live["state"] == "open"
    assert live["queue"] == []


def test_17_resend_own_ticket(client: GateClient) -> None:
    first = client.tas(DEV).json["ticket"]
    client.clock.advance(60)
    again = client.tas(DEV, ticket=first["id"]).json
    assert again["status"] == "ok"
    assert again["ticket"]["id"] == first["id"]
    assert again["ticket"]["expiration_date"] == first["expiration_date"] + 60
    assert again["ticket"]["updated"] != first["updated"]
    assert len(client.env()["queue"]) == 1


def test_18_string_environment(client: GateClient) -> None:
    result = client.tas({"g": {"s": "develop"}})
    assert result.json["status"] == "ok"
    assert client.env()["queue"][0]["id"] == result.json["ticket"]["id"]


def test_19_across_groups(client: GateClient) -> None:
    client.create("g2", "s2")
    for query in ("", "?queue=true"):
        result = client.tas({"g": {"s": ["develop", "live"]}, "g2": {"s2": "live"}}, query)
        assert result.json["status"] == "ok"
        ticket = result.json["ticket"]["id"]
        for group, service, env in (
            ("g", "s", "develop"),
            ("g", "s", "live"),
            ("g2", "s2", "live"),
        ):
            assert client.env(group, service, env)["queue"][0]["id"] == ticket
        client.simulate_delete(f"/api/tickets/{ticket}")


@pytest.mark.parametrize("query", ["", "?queue=true"])
@pytest.mark.parametrize("with_ticket", [False, True])
def test_20_closed_by_hand_is_denied(client: GateClient, query: str, with_ticket: bool) -> None:
    held = client.tas(DEV).json["ticket"]["id"]
    client.simulate_put("/api/gates/g/s/develop", json={"state": "closed"})
    before = client.simulate_get("/api/gates/g/s")
    body = {"ticket": held} if with_ticket else {}
    assert client.tas(DEV, query, **body).json == {"status": "denied"}
    after = client.simulate_get("/api/gates/g/s")
    assert after.json == before.json
    assert after.headers["etag"] == before.headers["etag"]


def test_21_one_closed_gate_denies_all(client: GateClient) -> None:
    client.create("g2", "s2")
    client.simulate_put("/api/gates/g2/s2/live", json={"state": "closed"})
    result = client.tas({"g": {"s": ["develop", "live"]}, "g2": {"s2": "live"}})
    assert result.json == {"status": "denied"}
    for env in ("develop", "live"):
        assert client.env(env=env)["state"] == "open"
        assert client.env(env=env)["queue"] == []


def test_22_time_rules(tmp_path: Path) -> None:
    import datetime as dt

    rules = {"live": [{"days_range": [0, 3], "hours_range": [8, 16]}], "develop": ALL_DAY}
    c = make_client(tmp_path, {"rules": rules})
    c.create()
    live = {"g": {"s": "live"}}
    c.clock.set(dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC))  # Saturday
    assert c.tas(live).json == {"status": "denied"}
    assert c.env(env="live")["state"] == "closed"
    c.clock.set(dt.datetime(2026, 11, 23, 16, 0, tzinfo=dt.UTC))  # Monday 16:00
    assert c.tas(live).json == {"status": "denied"}
    c.clock.set(dt.datetime(2026, 11, 23, 15, 59, tzinfo=dt.UTC))  # Monday 15:59
    assert c.env(env="live")["state"] == "open"
    assert c.tas(live).json["status"] == "ok"


def test_22_no_rules_means_open(tmp_path: Path) -> None:
    # Deliberately unlike gatekeeper 3+, which closed environments without rules.
    c = make_client(tmp_path, {})
    c.create()
    assert c.env()["state"] == "open"
    assert c.tas(DEV).json["status"] == "ok"


def test_23_holidays(client: GateClient) -> None:
    import datetime as dt

    today = dt.datetime.fromtimestamp(client.clock(), dt.UTC).date()
    tomorrow = today + dt.timedelta(days=1)
    body = {
        "holidays": [{"date": tomorrow.isoformat(), "reason": "later", "environments": ["live"]}]
    }
    client.simulate_post("/api/holidays/", json=body)
    assert client.tas({"g": {"s": "live"}}).json["status"] == "ok"
    client.simulate_delete("/api/tickets/" + client.env(env="live")["queue"][0]["id"])
    body = {"holidays": [{"date": today.isoformat(), "reason": "now", "environments": ["live"]}]}
    client.simulate_post("/api/holidays/", json=body)
    assert client.tas({"g": {"s": "live"}}).json == {"status": "denied"}
    assert client.env(env="live")["state"] == "closed"
    assert client.env()["state"] == "open"
    assert client.tas(DEV).json["status"] == "ok"


def test_24_held_gate_denies_newcomers(client: GateClient) -> None:
    t1 = client.tas(DEV).json["ticket"]["id"]
    assert client.tas(DEV).json == {"status": "denied"}
    assert [t["id"] for t in client.env()["queue"]] == [t1]


def _queue_two(client: GateClient) -> tuple[str, dict]:
    t1 = client.tas(DEV).json["ticket"]["id"]
    result = client.tas(DEV, "?queue=true").json
    assert result["status"] == "queued"
    return t1, result["ticket"]


def test_25_queue(client: GateClient) -> None:
    t1, t2 = _queue_two(client)
    assert t2["expiration_date"] == pytest.approx(client.clock() + 120, abs=2)
    assert [t["id"] for t in client.env()["queue"]] == [t1, t2["id"]]


def test_25_queue_false_does_not_queue(client: GateClient) -> None:
    client.tas(DEV)
    for value in ("false", "0", "no"):
        assert client.tas(DEV, f"?queue={value}").json == {"status": "denied"}
    assert len(client.env()["queue"]) == 1


def test_26_queued_resend(client: GateClient) -> None:
    t1, t2 = _queue_two(client)
    client.clock.advance(30)
    again = client.tas(DEV, "?queue=true", ticket=t2["id"]).json
    assert again["status"] == "queued"
    assert again["ticket"]["expiration_date"] == pytest.approx(client.clock() + 120, abs=2)
    client.clock.advance(30)
    assert client.tas(DEV, ticket=t2["id"]).json == {"status": "denied"}
    stored = client.env()["queue"][1]
    assert stored["expiration_date"] == again["ticket"]["expiration_date"]
    # t1, the holder, re-sent without queue: ok.
    assert client.tas(DEV, ticket=t1).json["status"] == "ok"
    assert len(client.env()["queue"]) == 2


def test_27_release_promotes_the_next(client: GateClient) -> None:
    t1, t2 = _queue_two(client)
    assert client.simulate_delete(f"/api/tickets/{t1}").json == {"status": "ok"}
    assert client.tas(DEV).json == {"status": "denied"}
    result = client.tas(DEV, ticket=t2["id"]).json
    assert result["status"] == "ok"
    assert result["ticket"]["expiration_date"] == pytest.approx(client.clock() + 720 * 60, abs=2)


def test_28_expiry(tmp_path: Path) -> None:
    c = make_client(
        tmp_path,
        {
            "rules": {"develop": ALL_DAY},
            "current_ticket_lifetime": 1,
            "queued_ticket_lifetime": 5,
            "queued_ticket_slack": 0,
        },
    )
    c.create()
    t1 = c.tas(DEV).json["ticket"]["id"]
    t2 = c.tas(DEV, "?queue=true").json["ticket"]["id"]
    c.clock.advance(61)
    error(c.tas(DEV, ticket=t1), 404, "Ticket does not exist")
    assert [t["id"] for t in c.env()["queue"]] == [t2]
    assert c.tas(DEV, ticket=t2).json["status"] == "ok"
    assert [t["id"] for t in c.env()["queue"]] == [t2]
    # The write that promoted t2 also dropped t1's record and queue entry.
    store = c.services.store
    assert not [p for p in store.snapshot().paths("tickets") if t1 in p]


def test_29_hold_and_wait(client: GateClient) -> None:
    client.tas(DEV)
    t2 = client.tas({"g": {"s": ["develop", "live"]}}, "?queue=true").json
    assert t2["status"] == "queued"
    live = client.env(env="live")
    assert live["state"] == "closed"
    assert live["queue"][0]["id"] == t2["ticket"]["id"]
    assert client.tas({"g": {"s": "live"}}).json == {"status": "denied"}


def test_30_lifetime_zero(tmp_path: Path) -> None:
    c = make_client(tmp_path, {"current_ticket_lifetime": 0})
    c.create()
    ticket = c.tas({"g": {"s": ["develop", "live"]}}).json["ticket"]
    assert ticket["expiration_date"] == 0
    c.clock.advance(10 * 365 * 86400)
    assert c.env()["state"] == "closed"
    c.simulate_delete(f"/api/tickets/{ticket['id']}")
    for env in ("develop", "live"):
        assert c.env(env=env)["state"] == "open"
        assert c.env(env=env)["queue"] == []


def test_31_unknown_tickets(client: GateClient) -> None:
    error(client.tas(DEV, ticket="unknown"), 404, "Ticket does not exist")
    assert client.simulate_delete("/api/tickets/unknown").json == {"status": "ok"}


def test_32_bad_test_and_set(client: GateClient) -> None:
    reason = "Your json contains invalid information. Could not find gates"
    error(client.simulate_put("/api/gates", json={"ticket": None}), 400, reason)
    error(client.tas({"x": {"s": "develop"}}), 404, "Service or Group not found")
    error(client.tas({"g": {"y": "develop"}}), 404, "Service or Group not found")
    error(client.tas({"g": {"s": "X"}}), 404, "Environment X not found.")


def test_33_release_after_the_gate_is_gone(client: GateClient) -> None:
    ticket = client.tas(DEV).json["ticket"]["id"]
    client.simulate_delete("/api/gates/g/s")
    assert client.simulate_delete(f"/api/tickets/{ticket}").json == {"status": "ok"}
    client.create(envs=["other"])
    ticket = client.tas({"g": {"s": "other"}}).json["ticket"]["id"]
    client.simulate_delete("/api/gates/g/s")
    client.create(envs=["develop"])
    assert client.simulate_delete(f"/api/tickets/{ticket}").json == {"status": "ok"}


def test_34_environment_with_a_queue(client: GateClient) -> None:
    t1, t2 = _queue_two(client)
    env = client.env()
    assert set(env) == {"queue", "message_timestamp", "state", "message", "state_timestamp"}
    assert env["state"] == "closed"
    assert [t["id"] for t in env["queue"]] == [t1, t2["id"]]
    assert set(env["queue"][0]) == {"id", "updated", "expiration_date", "link"}


# -- 35, 36: holidays and health ---------------------------------------------------


def test_35_holidays_replace(client: GateClient) -> None:
    body = {"holidays": [{"date": "2037-05-06", "reason": "R", "environments": ["live"]}]}
    assert client.simulate_post("/api/holidays/", json=body).json == {"status": "ok"}
    listed = client.simulate_get("/api/holidays/").json["holidays"]
    assert [(h["date"], h["reason"], h["environments"]) for h in listed] == [
        ("2037-05-06", "R", ["live"])
    ]
    assert listed[0]["_id"]
    body = {
        "holidays": [
            {"date": "2038-01-01", "reason": "S", "environments": ["develop"]},
            {"date": "2001-01-01", "reason": "past", "environments": ["develop"]},
        ]
    }
    client.simulate_post("/api/holidays/", json=body)
    listed = client.simulate_get("/api/holidays/").json["holidays"]
    assert [h["date"] for h in listed] == ["2038-01-01"]


def test_35_bad_holidays(client: GateClient) -> None:
    for body in (
        {},
        {"holidays": [{"date": "06.05.2037", "reason": "R", "environments": ["live"]}]},
    ):
        result = client.simulate_post("/api/holidays/", json=body)
        assert result.status_code == 400
        assert result.json["status"] == "error"


def test_36_health(client: GateClient) -> None:
    result = client.simulate_get("/internal/health")
    assert result.status_code == 200
    assert result.json == {"status": "ok"}


# -- 38: concurrency in-process (the gunicorn test is in test_gates_linearizable) ----


def test_38_parallel_test_and_set_in_threads(client: GateClient) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def attempt(n: int) -> dict:
        return client.tas(DEV, "?queue=true" if n % 2 else "").json

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(attempt, range(16)))
    statuses = [a["status"] for a in answers]
    assert statuses.count("ok") == 1
    assert statuses.count("queued") + statuses.count("denied") == 15
    order = [t["id"] for t in client.env()["queue"]]
    assert len(order) == 1 + statuses.count("queued")
    assert order[0] == next(a["ticket"]["id"] for a in answers if a["status"] == "ok")


def test_38_no_opposite_orders_on_two_gates(client: GateClient) -> None:
    # t1 holds develop and t2 holds live. If either could now queue for the
    # other's gate, and then the other did the same, each would wait for the
    # other forever; so a known ticket may only join gates that are free.
    t1 = client.tas(DEV).json["ticket"]["id"]
    t2 = client.tas({"g": {"s": "live"}}).json["ticket"]["id"]
    both = {"g": {"s": ["develop", "live"]}}
    assert client.tas(both, "?queue=true", ticket=t2).json == {"status": "denied"}
    assert client.tas(both, "?queue=true", ticket=t1).json == {"status": "denied"}
    assert [t["id"] for t in client.env()["queue"]] == [t1]
    assert [t["id"] for t in client.env(env="live")["queue"]] == [t2]
    # A new ticket joins every gate at once, so it may queue.
    assert client.tas(both, "?queue=true").json["status"] == "queued"
    # A known ticket may still join a gate that is free.
    client.create("g2", "s2")
    answer = client.tas({"g": {"s": "develop"}, "g2": {"s2": "live"}}, ticket=t1).json
    assert answer["status"] == "ok"
    assert client.env("g2", "s2", "live")["queue"][0]["id"] == t1


def test_ticket_expiration_is_a_float_epoch_as_gatekeeper_writes_it(tmp_path: Path) -> None:
    client = make_client(tmp_path, clock=Clock(1_790_000_000.26424))
    client.create()
    ticket = client.tas(DEV, link="L").json["ticket"]
    assert isinstance(ticket["expiration_date"], float)
    assert ticket["expiration_date"] == pytest.approx(1_790_000_000.26424 + 720 * 60, abs=1e-6)
    (queued,) = client.env()["queue"]
    assert queued["expiration_date"] == ticket["expiration_date"]
