"""Who may post a webhook, type by type (issue 18, item 4).

Every type is admitted only when a valid token or the type's own secret
vouches for the request, also with ``auth.webhook_authentication: false``;
each type can be turned off. The app runs with authentication on and
webhook authentication off, the mode in which types without a secret used
to be open to anyone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.api.test_webhooks import EVENT_HEADERS, Harness, fixture

SECRET = "shared between gitstate and the git host"
UNAUTHENTICATED = "puppetlabs.code-manager/webhook-unauthenticated"
INVALID = "puppetlabs.code-manager/invalid-webhook-signature"
DISABLED = "puppetlabs.code-manager/webhook-type-disabled"


def _hmac(header: str) -> Callable[[str, bytes], dict[str, str]]:
    def sign(secret: str, body: bytes) -> dict[str, str]:
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return {header: f"sha256={digest}"}

    return sign


def _gitlab(secret: str, body: bytes) -> dict[str, str]:
    return {"X-Gitlab-Token": secret}


def _basic(secret: str, body: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"azure:{secret}".encode()).decode()}


#: Each type that has a secret: its config section, secret key, and how a host proves it.
SIGNED: dict[str, tuple[str, str, Callable[[str, bytes], dict[str, str]]]] = {
    "github": ("github", "secret", _hmac("X-Hub-Signature-256")),
    "gitlab": ("gitlab", "token", _gitlab),
    "bitbucket-server": ("bitbucket_server", "secret", _hmac("X-Hub-Signature")),
    "stash": ("stash", "secret", _hmac("X-Hub-Signature")),
    "tfs-git": ("tfs_git", "secret", _basic),
}
TYPES = [*EVENT_HEADERS, "gitstate-hook"]
SECTION = {kind: kind.replace("-", "_") for kind in TYPES}
HOOK_BODY = json.dumps({"updates": [{"ref": "refs/heads/dev", "old": "0" * 40, "new": "1" * 40}]})


def push(kind: str) -> bytes:
    return HOOK_BODY.encode() if kind == "gitstate-hook" else fixture(f"{kind}-push.json")


def harness(tmp_path: Path, webhooks: dict | None = None, **auth: object) -> Harness:
    return Harness(
        tmp_path, webhooks, auth={"enabled": True, "webhook_authentication": False, **auth}
    )


def post(h: Harness, kind: str, headers: dict[str, str] | None = None, **params: str):
    return h.post(kind, push(kind), {**EVENT_HEADERS.get(kind, {}), **(headers or {})}, **params)


def secured(tmp_path: Path, kind: str) -> Harness:
    section, key, _ = SIGNED[kind]
    return harness(tmp_path, {section: {key: SECRET}})


def deploy_token(h: Harness) -> str:
    issued = h.services.tokens.issue("ci", permissions=["deploy:*"], lifetime="1h", actor="root")
    return issued.token


@pytest.mark.parametrize("kind", TYPES)
def test_no_secret_and_no_token_is_refused_saying_how_to_configure(
    tmp_path: Path, kind: str
) -> None:
    h = harness(tmp_path)
    result = post(h, kind)
    assert result.status_code == 401, result.text
    assert result.json["kind"] == UNAUTHENTICATED
    details = result.json["details"]
    assert details["type"] == kind
    assert "token" in details["configure"]
    if kind in SIGNED:
        assert f"webhooks.{SIGNED[kind][0]}.{SIGNED[kind][1]}" in details["configure"]
    assert h.queued() == []


@pytest.mark.parametrize("kind", TYPES)
def test_a_token_with_deploy_permission_is_accepted(tmp_path: Path, kind: str) -> None:
    h = harness(tmp_path)
    result = post(h, kind, {"X-Authentication": deploy_token(h)})
    assert result.status_code == 200, result.text
    assert "dev" in h.queued()


@pytest.mark.parametrize("kind", list(SIGNED))
def test_the_right_secret_is_accepted(tmp_path: Path, kind: str) -> None:
    h = secured(tmp_path, kind)
    result = post(h, kind, SIGNED[kind][2](SECRET, push(kind)))
    assert result.status_code == 200, result.text
    assert "dev" in h.queued()


@pytest.mark.parametrize("kind", list(SIGNED))
def test_a_wrong_secret_is_refused_even_with_a_token(tmp_path: Path, kind: str) -> None:
    h = secured(tmp_path, kind)
    wrong = SIGNED[kind][2]("not the secret", push(kind))
    for headers in (wrong, {**wrong, "X-Authentication": deploy_token(h)}):
        result = post(h, kind, headers)
        assert result.status_code == 401, result.text
        assert result.json["kind"] == INVALID
        assert result.json["details"]["reason"] == "mismatch"
    assert h.queued() == []


@pytest.mark.parametrize("kind", list(SIGNED))
def test_a_configured_secret_not_presented_is_refused(tmp_path: Path, kind: str) -> None:
    result = post(secured(tmp_path, kind), kind)
    assert result.status_code == 401, result.text
    assert result.json["kind"] == INVALID
    assert result.json["details"]["reason"] == "missing"


@pytest.mark.parametrize("kind", list(SIGNED))
def test_a_secret_of_another_type_does_not_vouch(tmp_path: Path, kind: str) -> None:
    other = next(name for name in SIGNED if SIGNED[name][2] is not SIGNED[kind][2])
    h = secured(tmp_path, other)
    result = post(h, kind, SIGNED[kind][2](SECRET, push(kind)))
    assert result.status_code == 401, result.text
    assert result.json["kind"] == UNAUTHENTICATED


def test_a_basic_password_in_another_scheme_is_refused(tmp_path: Path) -> None:
    h = secured(tmp_path, "tfs-git")
    for value in (
        "Bearer " + SECRET,
        "Basic not-base64!",
        "Basic " + base64.b64encode(b"x").decode(),
    ):
        result = post(h, "tfs-git", {"Authorization": value})
        assert result.status_code == 401, (value, result.text)


@pytest.mark.parametrize("kind", TYPES)
def test_a_disabled_type_is_refused_even_with_a_token(tmp_path: Path, kind: str) -> None:
    h = harness(tmp_path, {SECTION[kind]: {"enabled": False}})
    result = post(h, kind, {"X-Authentication": deploy_token(h)})
    assert result.status_code == 403, result.text
    assert result.json["kind"] == DISABLED
    assert result.json["details"] == {
        "type": kind,
        "setting": f"webhooks.{SECTION[kind]}.enabled",
    }
    assert h.queued() == []


def test_false_is_short_for_disabled(tmp_path: Path) -> None:
    h = harness(tmp_path, {"bitbucket": False})
    assert post(h, "bitbucket", {"X-Authentication": deploy_token(h)}).status_code == 403
    assert post(h, "github", {"X-Authentication": deploy_token(h)}).status_code == 200


def test_with_webhook_authentication_on_a_secret_does_not_replace_the_token(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, {"github": {"secret": SECRET}}, auth={"enabled": True})
    signature = SIGNED["github"][2](SECRET, push("github"))
    assert post(h, "github", signature).status_code == 401
    token = {"X-Authentication": deploy_token(h)}
    assert post(h, "github", {**signature, **token}).status_code == 200


def test_with_authentication_off_altogether_types_without_secret_stay_open(
    tmp_path: Path,
) -> None:
    # No tokens exist then and every API write is open; a configured secret
    # is still checked.
    h = Harness(tmp_path, {"gitlab": {"token": SECRET}})
    assert post(h, "bitbucket").status_code == 200
    assert post(h, "gitlab").status_code == 401
    assert post(h, "gitlab", {"X-Gitlab-Token": SECRET}).status_code == 200
