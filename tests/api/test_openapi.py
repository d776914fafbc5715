"""The OpenAPI document: valid, complete, and true to what the app answers.

``openapi-spec-validator`` checks the document itself; a representative
replay of calls on every route, with authentication off and on, goes
through openapi-core, which validates each request (when it is meant to be
valid) and every response, status and body, against the document.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import falcon
import falcon.testing
import pytest
from openapi_spec_validator import validate

from gitstate.cli.sample import SampleRepos
from gitstate.settings import GitHubWebhook, SourceSettings, WebhookSettings
from gitstate.web.app import create_app
from gitstate.web.openapi import build
from tests.support.client import Client
from tests.support.deploy_harness import CM, Running
from tests.support.openapi import FILE_SYNC_TOKEN, Validating, client, sample_config

_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _routes(app: falcon.App) -> dict[str, set[str]]:
    """Return every route template of ``app`` and the methods its resource answers."""
    found: dict[str, set[str]] = {}
    nodes = list(app._router._roots)
    while nodes:
        node = nodes.pop()
        nodes.extend(node.children or ())
        if node.resource is not None:
            found[node.uri_template] = {
                method for method in _METHODS if hasattr(node.resource, f"on_{method}")
            }
    return found


@pytest.fixture
def plain_app(tmp_path: Path) -> falcon.App:
    from gitstate.config import Config

    return create_app(Config.from_mapping({"datadir": str(tmp_path), "state": {"fsync": False}}))


def test_document_is_valid_openapi_3_1(plain_app: falcon.App) -> None:
    validate(build())
    served = Client(plain_app).simulate_get("/openapi.json")
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/json"
    assert served.json["openapi"] == "3.1.0"
    validate(served.json)


def test_every_route_is_documented(plain_app: falcon.App) -> None:
    document = Client(plain_app).simulate_get("/openapi.json").json
    routes = _routes(plain_app)
    assert set(routes) == set(document["paths"])
    for template, methods in routes.items():
        documented = {key for key in document["paths"][template] if key in _METHODS}
        assert documented == methods, template


def test_document_is_public_even_when_reads_need_a_token(tmp_path: Path) -> None:
    from gitstate.config import Config

    config = Config.from_mapping(
        {
            "datadir": str(tmp_path),
            "state": {"fsync": False},
            "auth": {"enabled": True, "read_requires_token": True},
        }
    )
    test = Client(create_app(config))
    assert test.simulate_get("/openapi.json").status_code == 200
    assert test.simulate_get("/api/gates").status_code == 401


@pytest.fixture
def running(tmp_path: Path, sample: SampleRepos) -> Iterator[Running]:
    with Running(sample_config(tmp_path, sample)) as harness:
        yield harness


def _statuses(validating: Validating) -> set[tuple[str, str, int]]:
    return validating.seen


def test_replayed_calls_match_the_document(running: Running) -> None:
    test, checker = client(create_app(services=running.services))
    calls = _replay_without_auth(test, checker)
    assert not checker.problems, "\n".join(checker.problems)
    # The replay reaches every documented status but the unreachable 5xx.
    statuses = {status for _, _, status in checker.seen}
    assert {200, 304, 400, 401, 403, 404, 412, 413} <= statuses, statuses
    assert calls > 50


def _bad(checker: Validating, call, *args, **kwargs) -> falcon.testing.Result:
    """Make a call that breaks the request's documented rules on purpose."""
    checker.check_request = False
    try:
        return call(*args, **kwargs)
    finally:
        checker.check_request = True


def _replay_without_auth(test: falcon.testing.TestClient, checker: Validating) -> int:
    calls = 0

    def expect(status: int, result: falcon.testing.Result) -> falcon.testing.Result:
        nonlocal calls
        calls += 1
        assert result.status_code == status, (status, result.status, result.text[:300])
        return result

    # Operations and the page.
    expect(200, test.simulate_get("/internal/health"))
    expect(200, test.simulate_get("/openapi.json"))
    page = expect(200, test.simulate_get("/"))
    expect(304, test.simulate_get("/", headers={"If-None-Match": page.headers["etag"]}))
    expect(200, test.simulate_get("/static/app.js"))
    expect(200, test.simulate_get("/static/app.css"))
    expect(404, test.simulate_get("/static/nothing.js"))
    if "/metrics" in test.simulate_get("/openapi.json").json["paths"]:
        expect(200, test.simulate_get("/metrics"))

    # Gates.
    gates = "/api/gates/shop/cart"
    expect(200, test.simulate_get("/api/gates"))
    expect(404, test.simulate_get(gates))
    created = expect(200, test.simulate_post(gates, json={"environments": ["live", "dev"]}))
    expect(400, test.simulate_post(gates, json={"environments": ["live"]}))
    expect(
        400,
        _bad(checker, test.simulate_post, "/api/gates/sh.op/cart", json={"environments": ["x"]}),
    )
    expect(400, _bad(checker, test.simulate_post, gates, body="{not json"))
    expect(400, _bad(checker, test.simulate_post, gates, body="x" * (65 * 1024)))
    expect(200, test.simulate_get(gates))
    expect(200, test.simulate_get(gates, params={"at": created.headers["etag"].strip('"')}))
    expect(400, test.simulate_get(gates, params={"at": "yesterday-ish"}))
    expect(200, test.simulate_get(f"{gates}/live"))
    expect(404, test.simulate_get(f"{gates}/nowhere"))
    expect(
        200,
        test.simulate_put(
            f"{gates}/live",
            json={"state": "closed", "message": "freeze"},
            headers={"X-Gitstate-Actor": "alice", "X-Request-Id": "r-1"},
        ),
    )
    expect(400, _bad(checker, test.simulate_put, f"{gates}/live", json={"state": "ajar"}))
    expect(
        412,
        test.simulate_put(f"{gates}/live", json={"state": "open"}, headers={"If-Match": '"0abc"'}),
    )
    expect(200, test.simulate_get(f"{gates}/live/history"))
    expect(200, test.simulate_get(f"{gates}/live/history", params={"limit": "1"}))
    expect(400, _bad(checker, test.simulate_get, f"{gates}/live/history", params={"limit": "0"}))
    expect(404, test.simulate_get("/api/gates/shop/none/live/history"))
    taken = expect(
        200, test.simulate_put("/api/gates", json={"gates": {"shop": {"cart": ["dev"]}}})
    )
    assert taken.json["status"] == "ok"
    ticket = taken.json["ticket"]["id"]
    denied = expect(
        200, test.simulate_put("/api/gates", json={"gates": {"shop": {"cart": "live"}}})
    )
    assert denied.json["status"] == "denied"
    queued = expect(
        200,
        test.simulate_put(
            "/api/gates", params={"queue": "true"}, json={"gates": {"shop": {"cart": "dev"}}}
        ),
    )
    assert queued.json["status"] == "queued"
    expect(200, test.simulate_get("/api/gates"))
    expect(
        400, _bad(checker, test.simulate_put, "/api/gates", params={"queue": "perhaps"}, json={})
    )
    expect(400, test.simulate_put("/api/gates", json={"gates": {}}))
    expect(
        404,
        test.simulate_put(
            "/api/gates", json={"gates": {"shop": {"cart": "dev"}}, "ticket": "no-such-ticket"}
        ),
    )
    expect(200, test.simulate_delete(f"/api/tickets/{ticket}"))
    expect(200, test.simulate_delete("/api/tickets/unknown"))
    expect(200, test.simulate_put(gates, json={"environments": {"dev": {"message": "hi"}}}))
    expect(200, test.simulate_put(gates, json={"name": "basket"}))
    expect(404, test.simulate_put(gates, json={"name": "other"}))
    expect(200, test.simulate_delete("/api/gates/shop/basket"))
    expect(404, test.simulate_delete("/api/gates/shop/basket"))
    for path in ("/api/holidays/", "/api/holidays"):
        holidays = {"holidays": [{"date": "2099-12-24", "reason": "Eve", "environments": ["live"]}]}
        expect(200, test.simulate_post(path, json=holidays))
        listed = expect(200, test.simulate_get(path))
        assert listed.json["holidays"][0]["source"] == "api"
        expect(400, _bad(checker, test.simulate_post, path, json={"holidays": "soon"}))
    tip = expect(200, test.simulate_get("/api/watch", params={"timeout": "0"})).json["commit"]
    expect(200, test.simulate_get("/api/watch", params={"since": tip, "timeout": "0.05"}))
    expect(400, _bad(checker, test.simulate_get, "/api/watch", params={"timeout": "-1"}))

    # Code Manager: deploys, status, webhook, rollbacks.
    deploys = f"{CM}/deploys"
    first = expect(200, test.simulate_post(deploys, json={"environments": ["production"]}))
    assert first.json[0]["status"] in ("new", "queued", "deploying", "complete")
    waited = expect(
        200, test.simulate_post(deploys, json={"environments": ["production"], "wait": True})
    )
    assert waited.json[0]["status"] == "complete", waited.json
    expect(200, test.simulate_post(deploys, json={"dry-run": True}))
    expect(400, _bad(checker, test.simulate_post, deploys, json={"wait": "yes"}))
    expect(400, _bad(checker, test.simulate_post, deploys, body="[1, 2"))
    expect(200, test.simulate_get(f"{CM}/deploys/status"))
    expect(200, test.simulate_get(f"{CM}/deploys/status", params={"id": "1"}))
    expect(400, _bad(checker, test.simulate_get, f"{CM}/deploys/status", params={"id": "one"}))
    expect(404, test.simulate_get(f"{CM}/deploys/status", params={"id": "999"}))
    push = {"ref": "refs/heads/development", "after": "1" * 40, "deleted": False}
    expect(200, test.simulate_post(f"{CM}/webhook", params={"type": "github"}, json=push))
    expect(400, _bad(checker, test.simulate_post, f"{CM}/webhook", params={"type": "x"}, json={}))
    expect(400, test.simulate_post(f"{CM}/webhook", params={"type": "gitlab"}, json={}))
    expect(
        413,
        _bad(
            checker,
            test.simulate_post,
            f"{CM}/webhook",
            params={"type": "github"},
            body="x" * (1024 * 1024 + 1),
        ),
    )
    rolled = expect(404, test.simulate_post(f"{CM}/rollbacks", json={"environment": "nowhere"}))
    assert rolled.json["kind"] == "puppetlabs.code-manager/not-found"
    expect(400, _bad(checker, test.simulate_post, f"{CM}/rollbacks", json={"to": "zz"}))

    # The page's reads: environments, the audit trail and one commit, whoami.
    rows = expect(200, test.simulate_get("/api/deploys/environments")).json["environments"]
    assert any(row["environment"] == "production" for row in rows)
    trail = expect(200, test.simulate_get("/api/audit", params={"limit": "3"})).json
    expect(200, test.simulate_get("/api/audit", params={"gate": "shop", "actor": "anonymous"}))
    expect(200, test.simulate_get("/api/audit", params={"before": trail["next"]}))
    expect(200, test.simulate_get(trail["entries"][0]["link"]))
    expect(400, test.simulate_get("/api/audit", params={"since": "soon"}))
    expect(400, _bad(checker, test.simulate_get, "/api/audit", params={"before": "HEAD"}))
    expect(404, test.simulate_get("/api/audit", params={"before": "0" * 40}))
    expect(400, _bad(checker, test.simulate_get, "/api/audit/HEAD"))
    expect(404, test.simulate_get(f"/api/audit/{'0' * 40}"))
    expect(200, test.simulate_get("/api/whoami"))

    # File sync.
    token = {"X-Authentication": FILE_SYNC_TOKEN}
    refs = "/file-sync/v1/git/info/refs"
    expect(200, test.simulate_get(refs, params={"service": "git-upload-pack"}, headers=token))
    expect(401, _bad(checker, test.simulate_get, refs, params={"service": "git-upload-pack"}))
    expect(403, test.simulate_get(refs, params={"service": "git-receive-pack"}, headers=token))
    latest = "/file-sync/v1/latest-commit"
    code = expect(200, test.simulate_get(latest, params={"timeout": "0", "token": FILE_SYNC_TOKEN}))
    want = f"want {code.json['code-commit']}\n"
    negotiation = f"{len(want) + 4:04x}{want}00000009done\n".encode()
    expect(
        200,
        test.simulate_post(
            "/file-sync/v1/git/git-upload-pack",
            body=negotiation,
            headers={**token, "Content-Type": "application/x-git-upload-pack-request"},
        ),
    )
    expect(
        403,
        test.simulate_post(
            "/file-sync/v1/git/git-receive-pack",
            body=b"0000",
            headers={"Content-Type": "application/octet-stream"},
        ),
    )
    expect(400, _bad(checker, test.simulate_get, latest, params={"timeout": "soon"}, headers=token))
    check_in = {"name": "compiler1", "code_commit": None, "environments": {}, "local_edits": []}
    expect(200, test.simulate_post("/file-sync/v1/check-ins", json=check_in, headers=token))
    expect(400, test.simulate_post("/file-sync/v1/check-ins", json={"name": "../x"}, headers=token))
    expect(401, _bad(checker, test.simulate_post, "/file-sync/v1/check-ins", json=check_in))
    return calls


def test_replayed_calls_with_tokens_match_the_document(tmp_path: Path, sample: SampleRepos) -> None:
    with Running(sample_config(tmp_path, sample, webhook_authentication=True)) as harness:
        test, checker = client(create_app(services=harness.services))
        tokens = harness.services.tokens
        reader = tokens.issue("reader", permissions=(), lifetime="1h", actor="root").token
        gates = tokens.issue("gater", permissions=("gates:shop",), lifetime="1h", actor="root")
        as_reader = {"X-Authentication": reader}
        as_gater = {"X-Authentication": gates.token}
        calls = [
            (200, test.simulate_get("/api/gates")),
            (401, test.simulate_post("/api/gates/shop/cart", json={"environments": ["live"]})),
            (
                401,
                test.simulate_post(
                    "/api/gates/shop/cart",
                    json={"environments": ["live"]},
                    headers={"X-Authentication": "not-a-token"},
                ),
            ),
            (
                403,
                test.simulate_post(
                    "/api/gates/shop/cart", json={"environments": ["live"]}, headers=as_reader
                ),
            ),
            (
                200,
                test.simulate_post(
                    "/api/gates/shop/cart", json={"environments": ["live"]}, headers=as_gater
                ),
            ),
            (
                200,
                test.simulate_put(
                    "/api/gates/shop/cart/live",
                    json={"state": "closed"},
                    params={"token": gates.token},
                ),
            ),
            (401, test.simulate_post(f"{CM}/deploys", json={"environments": ["production"]})),
            (
                403,
                test.simulate_post(f"{CM}/deploys", json={"deploy-all": True}, headers=as_reader),
            ),
            (
                200,
                test.simulate_post(
                    f"{CM}/deploys", json={"environments": ["production"]}, headers=as_reader
                ),
            ),
            (401, test.simulate_post(f"{CM}/webhook", params={"type": "github"}, json={})),
            (401, test.simulate_post(f"{CM}/rollbacks", json={"environment": "production"})),
            (403, test.simulate_post("/api/holidays", json={"holidays": []}, headers=as_gater)),
            (401, test.simulate_get(f"{CM}/deploys/status")),
            (200, test.simulate_get(f"{CM}/deploys/status", headers=as_reader)),
            (401, test.simulate_get("/api/deploys/environments")),
            (200, test.simulate_get("/api/deploys/environments", headers=as_reader)),
            (401, test.simulate_get("/api/audit")),
            (200, test.simulate_get("/api/audit", headers=as_reader)),
            (401, test.simulate_get("/api/audit/0123456")),
            (200, test.simulate_get("/api/whoami", headers=as_gater)),
            (401, test.simulate_get("/api/whoami", headers={"X-Authentication": "nope"})),
            (200, test.simulate_get("/internal/health")),
            (200, test.simulate_get("/internal/status.json")),
            (301, test.simulate_get("/gates")),
        ]
        for status, result in calls:
            assert result.status_code == status, (status, result.status, result.text[:300])
        refused = calls[8][1].json
        assert refused[0]["error"]["kind"] == "puppetlabs.rbac/permission-denied"
    assert not checker.problems, "\n".join(checker.problems)


def test_collect_failure_is_a_documented_502(tmp_path: Path, sample: SampleRepos) -> None:
    config = sample_config(tmp_path, sample)
    config.sources["puppet"] = SourceSettings(remote=str(tmp_path / "gone.git"))
    test, checker = client(create_app(config))
    result = test.simulate_post(f"{CM}/deploys", json={"deploy-all": True})
    assert result.status_code == 502
    assert result.json["kind"] == "puppetlabs.code-manager/collect-failed"
    assert not checker.problems, "\n".join(checker.problems)


def test_webhook_signature_refusal_is_a_documented_401(tmp_path: Path, sample: SampleRepos) -> None:
    config = sample_config(tmp_path, sample)
    config.webhooks = WebhookSettings(github=GitHubWebhook(secret="s3cret"))
    test, checker = client(create_app(config))
    body = json.dumps({"ref": "refs/heads/development"}).encode()
    wrong = "sha256=" + hmac.new(b"other", body, hashlib.sha256).hexdigest()
    result = test.simulate_post(
        f"{CM}/webhook",
        params={"type": "github"},
        body=body,
        headers={"X-Hub-Signature-256": wrong, "Content-Type": "application/json"},
    )
    assert result.status_code == 401, result.text
    assert not checker.problems, "\n".join(checker.problems)


# -- found by schemathesis ---------------------------------------------------------------------


@pytest.mark.parametrize("environment", ["0" * 255, "../../outside", "a/b", ".hidden", "x..y"])
def test_rollback_refuses_names_no_deploy_could_publish(
    tmp_path: Path, sample: SampleRepos, environment: str
) -> None:
    # A 255-character name made the lock file's name too long (500), and a
    # name with a slash put the lock file outside DATADIR/locks.
    test, checker = client(create_app(sample_config(tmp_path, sample)))
    result = test.simulate_post(f"{CM}/rollbacks", json={"environment": environment})
    assert result.status_code == 400, result.text
    assert result.json["kind"] == "puppetlabs.code-manager/bad-request"
    assert not list(tmp_path.rglob("outside.lock"))
    assert all("request" in problem for problem in checker.problems)
