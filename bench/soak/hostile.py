"""Hostile inputs fed during the run; each must be refused and leave no trace.

Every probe records an :class:`~bench.soak.load.Op` of kind
``hostile:<name>`` whose ``expected`` says what the answer should be and
whose ``error`` is set when the answer was anything else. Names carry
markers (``zzevil`` where nothing may ever be written; ``zzdeploy`` and
``zzhook`` where a failed deploy record is the audit entry that belongs)
that the checks look for in the state history, the storage refs and the
live directories afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import requests

from bench.soak.cluster import GATE_GROUP, HOSTILE_BRANCHES
from bench.soak.load import WAIT_TIMEOUT, Client, Op

#: Markers that must never appear in the state history or on disk.
NO_TRACE = "zzevil"
#: Markers allowed only in failed deploy records.
DEPLOY_MARKERS = ("zzdeploy", "zzhook")
_BIG = 70 * 1024
_HUGE = 1024 * 1024 + 100


def _expect_4xx(op: Op, response: requests.Response | None, also: str = "") -> None:
    op.expected = "4xx" + (f" or {also}" if also else "")
    if response is None:
        return  # a connection error is judged with the other errors
    if not 400 <= response.status_code < 500:
        op.error = f"expected {op.expected}, got {response.status_code}: {response.text[:200]}"


def _chunks(size: int) -> Iterator[bytes]:
    yield b'{"gates": "'
    for _chunk in range(size // 4096):
        yield b"x" * 4096
    yield b'"}'


def _deep(depth: int) -> bytes:
    """A JSON array nested ``depth`` deep (5000 is past Python's recursion limit)."""
    return b"[" * depth + b"]" * depth


def _probes(client: Client) -> dict[str, Callable[[], None]]:
    tokens = client.tokens
    admin, pipeline, deployer = tokens.admin, tokens.pipeline, tokens.deployer

    def simple(name: str, method: str, path: str, token: str | None = admin, **kw: object):
        def probe() -> None:
            op, response = client.call(f"hostile:{name}", method, path, token=token, **kw)
            _expect_4xx(op, response)

        return probe

    def release_dots() -> None:
        # gatekeeper answers 200 for unknown ids; '..' can name no ticket, so
        # a harmless no-op (no commit; checked by the trace scan) is fine too.
        op, response = client.call(
            "hostile:release-dots", "DELETE", "/api/tickets/%2E%2E", token=pipeline
        )
        _expect_4xx(op, response, "200 no-op")
        if response is not None and response.status_code == 200:
            op.error = None if response.json() == {"status": "ok"} else "unexpected body"

    def deploy_traversal() -> None:
        op, response = client.call(
            "hostile:deploy-traversal",
            "POST",
            "/code-manager/v1/deploys",
            token=deployer,
            json={"environments": ["../../zzdeploy", "..", "a/../../zzdeploy"]},
        )
        _expect_4xx(op, response, "a deploy that fails")
        if response is not None and response.status_code == 200:
            op.error = None
            op.ack = {"type": "must-fail", "entries": response.json()}

    def webhook_traversal() -> None:
        op, response = client.call(
            "hostile:webhook-traversal",
            "POST",
            "/code-manager/v1/webhook",
            params={"type": "github"},
            token=admin,
            headers={"X-GitHub-Event": "push"},
            json={"ref": "refs/heads/../../zzhook", "after": "1" * 40, "deleted": False},
        )
        _expect_4xx(op, response, "OK and a deploy that fails")
        if response is not None and response.status_code == 200:
            op.error = None

    def hostile_branches() -> None:
        op, response = client.call(
            "hostile:hostile-branches",
            "POST",
            "/code-manager/v1/deploys",
            token=deployer,
            json={"environments": sorted(HOSTILE_BRANCHES), "wait": True},
            timeout=WAIT_TIMEOUT,
        )
        op.expected = "200 and every hostile branch failed with an error"
        if response is None:
            return
        if response.status_code != 200:
            op.error = f"expected 200, got {response.status_code}: {response.text[:200]}"
            return
        entries = response.json()
        # A busy server answers wait: true at once (queued, timeout kind):
        # follow such deploys through deploys/status until they finish.
        for index, entry in enumerate(entries):
            if entry.get("status") in ("queued", "deploying") and "id" in entry:
                until = time.monotonic() + WAIT_TIMEOUT
                while time.monotonic() < until:
                    _op, polled = client.call(
                        "read-status",
                        "GET",
                        f"/code-manager/v1/deploys/status?id={entry['id']}",
                        token=deployer,
                    )
                    body = polled.json() if polled is not None and polled.status_code == 200 else {}
                    if body.get("status") in ("failed", "complete"):
                        entries[index] = body
                        break
                    time.sleep(0.5)
        wrong = [
            entry
            for entry in entries
            if entry.get("status") != "failed" or not (entry.get("error") or {}).get("msg")
        ]
        if wrong or len(entries) != len(HOSTILE_BRANCHES):
            op.error = f"hostile branches not all failed: {json.dumps(entries)[:400]}"
        op.ack = {"type": "must-fail", "entries": entries}

    return {
        "gate-group-dots": simple(
            "gate-group-dots",
            "POST",
            f"/api/gates/%2E%2E/{NO_TRACE}",
            json={"environments": ["live"]},
        ),
        "gate-group-slash": simple(
            "gate-group-slash",
            "POST",
            f"/api/gates/..%2F..%2F{NO_TRACE}/x",
            json={"environments": ["live"]},
        ),
        "gate-env-body": simple(
            "gate-env-body",
            "POST",
            f"/api/gates/{GATE_GROUP}/{NO_TRACE}",
            json={"environments": [f"../../{NO_TRACE}"]},
        ),
        "gate-env-path": simple(
            "gate-env-path",
            "PUT",
            f"/api/gates/{GATE_GROUP}/s0/%2E%2E",
            token=pipeline,
            json={"state": "closed", "message": NO_TRACE},
        ),
        "gate-service-rename": simple(
            "gate-service-rename",
            "PUT",
            f"/api/gates/{GATE_GROUP}/s0",
            json={"name": f"../{NO_TRACE}"},
        ),
        "tas-group-dots": simple(
            "tas-group-dots",
            "PUT",
            "/api/gates",
            token=pipeline,
            json={"gates": {"..": {NO_TRACE: "live"}}},
        ),
        "tas-ticket-traversal": simple(
            "tas-ticket-traversal",
            "PUT",
            "/api/gates",
            token=pipeline,
            json={"gates": {GATE_GROUP: {"s0": "live"}}, "ticket": f"../../{NO_TRACE}"},
        ),
        "release-slash": simple(
            "release-slash", "DELETE", f"/api/tickets/..%2F..%2F{NO_TRACE}", token=pipeline
        ),
        "release-dots": release_dots,
        "deploy-traversal": deploy_traversal,
        "webhook-traversal": webhook_traversal,
        "rollback-traversal": simple(
            "rollback-traversal",
            "POST",
            "/code-manager/v1/rollbacks",
            json={"environment": f"../../{NO_TRACE}"},
        ),
        "checkin-traversal": simple(
            "checkin-traversal",
            "POST",
            "/file-sync/v1/check-ins",
            token="soak-file-sync-token",
            json={"name": f"../../{NO_TRACE}", "code_commit": "a" * 40, "environments": {}},
        ),
        "oversized-gates": simple(
            "oversized-gates", "PUT", "/api/gates", token=pipeline, data=b"{" + b" " * _BIG + b"}"
        ),
        "oversized-chunked": simple(
            "oversized-chunked", "PUT", "/api/gates", token=pipeline, data=_chunks(_BIG)
        ),
        "oversized-deploy": simple(
            "oversized-deploy",
            "POST",
            "/code-manager/v1/deploys",
            token=deployer,
            data=b"{" + b" " * _BIG + b"}",
        ),
        "oversized-webhook": simple(
            "oversized-webhook",
            "POST",
            "/code-manager/v1/webhook",
            params={"type": "github"},
            data=b"{" + b" " * _HUGE + b"}",
        ),
        "bad-token": simple(
            "bad-token",
            "PUT",
            f"/api/gates/{GATE_GROUP}/s1/live",
            token=f"gst_{NO_TRACE}",
            json={"state": "closed", "message": NO_TRACE},
        ),
        "expired-token": simple(
            "expired-token",
            "PUT",
            f"/api/gates/{GATE_GROUP}/s1/live",
            token=tokens.expired,
            json={"state": "closed", "message": NO_TRACE},
        ),
        "no-token": simple(
            "no-token",
            "PUT",
            f"/api/gates/{GATE_GROUP}/s1/live",
            token=None,
            json={"state": "closed", "message": NO_TRACE},
        ),
        "no-permission": simple(
            "no-permission",
            "PUT",
            f"/api/gates/{GATE_GROUP}/s1/live",
            token=tokens.viewer,
            json={"state": "closed", "message": NO_TRACE},
        ),
        "webhook-bad-token": simple(
            "webhook-bad-token",
            "POST",
            "/code-manager/v1/webhook",
            params={"type": "github", "token": f"gst_{NO_TRACE}"},
            token=None,
            json={"ref": "refs/heads/production", "after": "1" * 40},
        ),
        "webhook-unsecured-type": simple(
            "webhook-unsecured-type",
            "POST",
            "/code-manager/v1/webhook",
            params={"type": "bitbucket-server"},
            token=None,
            headers={"X-Event-Key": "repo:refs_changed"},
            json={"changes": [{"refId": f"refs/heads/{NO_TRACE}", "type": "UPDATE"}]},
        ),
        "webhook-unsecured-hook": simple(
            "webhook-unsecured-hook",
            "POST",
            "/code-manager/v1/webhook",
            params={"type": "gitstate-hook"},
            token=None,
            json={"updates": [{"ref": f"refs/heads/{NO_TRACE}", "old": "0" * 40, "new": "1" * 40}]},
        ),
        "deep-json-gates": simple(
            "deep-json-gates", "PUT", "/api/gates", token=pipeline, data=_deep(5000)
        ),
        "deep-json-deploy": simple(
            "deep-json-deploy", "POST", "/code-manager/v1/deploys", token=deployer, data=_deep(100)
        ),
        "deep-json-webhook": simple(
            "deep-json-webhook",
            "POST",
            "/code-manager/v1/webhook",
            params={"type": "github"},
            headers={"X-GitHub-Event": "push"},
            data=_deep(5000),
        ),
        "surrogate-message": simple(
            "surrogate-message",
            "PUT",
            f"/api/gates/{GATE_GROUP}/s1/live",
            data=b'{"state": "closed", "message": "\\ud800 ' + NO_TRACE.encode() + b'"}',
        ),
        "hostile-branches": hostile_branches,
    }


def names(client: Client) -> list[str]:
    """Return the name of every probe."""
    return sorted(_probes(client))


def random_probe(client: Client) -> None:
    """Run one probe, chosen with the client's random generator."""
    probes = _probes(client)
    probes[client.rng.choice(sorted(probes))]()


def every_probe(client: Client) -> None:
    """Run every probe once."""
    for _name, probe in sorted(_probes(client).items()):
        probe()
