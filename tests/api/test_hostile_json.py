"""Bodies shaped to hurt the parser are refused with a 400, and nothing is written.

Deep nesting used to raise ``RecursionError`` inside ``json.loads`` (a 500
on every JSON endpoint), and a lone UTF-16 surrogate in a gate message
reached the YAML encoder and answered 503.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.gates import GateClient, make_client

#: Deep enough that json.loads itself gives up (past the recursion limit).
DEEPER_THAN_PYTHON = 5000
#: Parsed by json.loads, but deeper than any endpoint takes.
DEEPER_THAN_ALLOWED = 100


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def nested_object(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.fixture
def client(tmp_path: Path) -> GateClient:
    return make_client(tmp_path)


ENDPOINTS = [
    ("PUT", "/api/gates", {}),
    ("POST", "/api/gates/g/s", {}),
    ("POST", "/code-manager/v1/deploys", {}),
    ("POST", "/code-manager/v1/webhook", {"type": "github"}),
]


@pytest.mark.parametrize("method, path, params", ENDPOINTS)
@pytest.mark.parametrize(
    "body",
    [
        nested(DEEPER_THAN_PYTHON),
        nested_object(DEEPER_THAN_PYTHON),
        nested(DEEPER_THAN_ALLOWED),
        nested_object(DEEPER_THAN_ALLOWED),
    ],
    ids=["array-5000", "object-5000", "array-100", "object-100"],
)
def test_deep_nesting_is_a_400_that_says_so(
    client: GateClient, method: str, path: str, params: dict[str, str], body: bytes
) -> None:
    before = client.services.store.head()
    result = client.simulate_request(
        method,
        path,
        params=params,
        body=body,
        headers={"Content-Type": "application/json", "X-GitHub-Event": "push"},
    )
    assert result.status_code == 400, result.text
    assert "nested deeper than 64 levels" in result.text
    assert client.services.store.head() == before


def test_shallow_nesting_is_still_read(client: GateClient) -> None:
    client.create()
    result = client.tas({"g": {"s": ["develop"]}})
    assert result.status_code == 200, result.text
    assert result.json["status"] == "ok"


@pytest.mark.parametrize("where", ["message", "key"])
def test_a_lone_surrogate_is_a_400_and_the_gate_is_unchanged(
    client: GateClient, where: str
) -> None:
    client.create()
    before = client.services.store.head()
    body = (
        b'{"state": "closed", "message": "half \\ud800 a pair"}'
        if where == "message"
        else b'{"state": "closed", "\\udfff": 1}'
    )
    result = client.simulate_put(
        "/api/gates/g/s/develop", body=body, headers={"Content-Type": "application/json"}
    )
    assert result.status_code == 400, result.text
    assert result.json["status"] == "error"
    assert "surrogate" in result.json["reason"]
    assert client.services.store.head() == before
    assert client.env()["state"] == "open"
