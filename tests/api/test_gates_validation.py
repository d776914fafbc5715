"""Names, bodies and parameters the gates API refuses, always with a 400 and a reason."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from gitstate.gates.validation import MAX_NAME, InvalidName, check_name
from gitstate.web.request import MAX_BODY, BodyTooLarge, read_json
from tests.support.gates import GateClient, make_client


@pytest.fixture
def client(tmp_path: Path) -> GateClient:
    c = make_client(tmp_path)
    c.create()
    return c


def bad(result, fragment: str = "") -> None:
    assert result.status_code == 400, result.text
    assert result.json["status"] == "error"
    assert fragment in result.json["reason"]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "Should not empty or contains dots"),
        ("..", "Should not empty or contains dots"),
        ("a.b", "Should not empty or contains dots"),
        ("a/b", "slashes"),
        ("a\\b", "slashes"),
        ("a\x00b", "control characters"),
        ("a\nb", "control characters"),
        ("x" * (MAX_NAME + 1), "at most"),
        ("-rf", "ASCII letters"),
        ("caf\u00e9", "ASCII letters"),
        ("a b", "ASCII letters"),
    ],
)
def test_unsafe_names(value: str, fragment: str) -> None:
    with pytest.raises(InvalidName) as caught:
        check_name("environment", value)
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("Environment name not valid.")


def test_safe_names() -> None:
    for value in ("live", "shop_cart", "eu-west-1", "A1", "x" * MAX_NAME, "team@x", "v=2"):
        assert check_name("service", value) == value


@pytest.mark.parametrize("path", ["/api/gates/g/a%2Fb", "/api/gates/g/a%00b", "/api/gates/g/.."])
def test_unsafe_path_components_are_400_or_404(client: GateClient, path: str) -> None:
    result = client.simulate_post(path, json={"environments": ["develop"]})
    # An encoded slash splits the path before routing (no such route: 404);
    # anything that reaches the service is refused with a reason.
    assert result.status_code in (400, 404, 405)
    assert result.json["status"] == "error"


def test_control_characters_in_path_are_400(client: GateClient) -> None:
    bad(client.simulate_get("/api/gates/g/a%01b"), "control characters")
    bad(client.simulate_get("/api/gates/g/s/de%0Av"), "control characters")


def test_bad_environment_names_in_bodies(client: GateClient) -> None:
    bad(client.simulate_post("/api/gates/g/n", json={"environments": ["a.b"]}), "Environment")
    bad(client.tas({"g": {"s": ["../x"]}}), "Environment name not valid")
    bad(client.tas({"g.x": {"s": "develop"}}), "Group name not valid")
    bad(client.simulate_put("/api/gates/g/s", json={"name": "a/b"}), "Service name not valid")
    bad(client.simulate_put("/api/gates/g/s", json={"group": ""}), "Group name not valid")
    bad(
        client.simulate_put("/api/gates/g/s", json={"environments": {"x.y": {"state": "open"}}}),
        "Environment name not valid",
    )


def test_oversized_body_declared(client: GateClient) -> None:
    body = json.dumps({"environments": ["develop"], "pad": "x" * (MAX_BODY + 10)})
    bad(client.simulate_post("/api/gates/g/big", body=body), "larger than")


def test_oversized_body_without_length() -> None:
    # A chunked request has no Content-Length: the body is read in a bounded way.
    class Stream:
        data = io.BytesIO(b'{"message": "' + b"x" * (MAX_BODY + 10) + b'"}')

        async def read(self, size: int) -> bytes:
            return self.data.read(size)

    class Request:
        content_length = None
        stream = Stream()

    with pytest.raises(BodyTooLarge):
        asyncio.run(read_json(Request()))  # type: ignore[arg-type]


@pytest.mark.parametrize("body", [b"", b"[1,", b"\xff\xfe", b"nul"])
def test_malformed_json(client: GateClient, body: bytes) -> None:
    bad(client.simulate_put("/api/gates/g/s/develop", body=body), "Json was not valid")


@pytest.mark.parametrize("body", [[], "text", 3, True])
def test_json_that_is_not_an_object(client: GateClient, body: object) -> None:
    bad(client.simulate_put("/api/gates/g/s/develop", json=body))
    bad(client.simulate_put("/api/gates", json=body), "Could not find gates")
    bad(client.simulate_put("/api/gates/g/s", json=body))
    bad(client.simulate_post("/api/holidays/", json=body))


@pytest.mark.parametrize(
    "gates",
    [{}, {"g": {}}, {"g": []}, {"g": {"s": []}}, {"g": {"s": [1]}}, {"g": {"s": None}}, "g"],
)
def test_malformed_gates(client: GateClient, gates: object) -> None:
    bad(client.tas(gates), "Could not find gates")


def test_queue_parameter_must_be_boolean(client: GateClient) -> None:
    result = client.tas({"g": {"s": "develop"}}, "?queue=perhaps")
    assert result.status_code == 400
    assert result.json["status"] == "error"


def test_bad_ticket_values(client: GateClient) -> None:
    for ticket in (5, ["x"], "../../x", "x" * 200):
        result = client.tas({"g": {"s": "develop"}}, ticket=ticket)
        assert result.status_code == 404
        assert result.json == {"status": "error", "reason": "Ticket does not exist"}
    bad(client.tas({"g": {"s": "develop"}}, link=5), "link")
    assert client.simulate_delete("/api/tickets/..%2F..").status_code in (200, 404)


def test_bad_message(client: GateClient) -> None:
    bad(client.simulate_put("/api/gates/g/s/develop", json={"message": 5}), "message")


def test_bad_at(client: GateClient) -> None:
    bad(client.simulate_get("/api/gates/g/s", params={"at": "yesterday"}), "at must be")
    result = client.simulate_get("/api/gates/g/s", params={"at": "0" * 40})
    assert result.status_code == 404


def test_unknown_environment_is_404_everywhere(client: GateClient) -> None:
    for result in (
        client.simulate_get("/api/gates/g/s/nope"),
        client.simulate_put("/api/gates/g/s/nope", json={"state": "closed"}),
        client.simulate_get("/api/gates/g/s/nope/history"),
        client.tas({"g": {"s": ["develop", "nope"]}}),
        client.simulate_put("/api/gates/g/s", json={"environments": {"nope": {}}}),
    ):
        assert result.status_code == 404, result.text
        assert result.json == {"status": "error", "reason": "Environment nope not found."}
