"""Tokens in the state branch: hashed, audited, expiring, revocable."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gitstate.auth import (
    InvalidToken,
    PermissionDenied,
    Principal,
    TokenExpired,
    TokenRequestError,
    TokenRevoked,
    Tokens,
    Unauthenticated,
)
from gitstate.store.branch import Store
from tests.support.helpers import git


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(state_path: Path, clock: Clock) -> Tokens:
    return Tokens(Store(state_path), clock=clock)


def test_issued_token_verifies_to_its_user_and_permissions(tokens: Tokens) -> None:
    issued = tokens.issue(
        "alice", permissions=["deploy:production", "gates:shop"], lifetime="1h", actor="root"
    )
    assert issued.token.startswith("gst_")
    assert len(issued.token) >= 4 + 43  # 256 bits, base64url
    principal = tokens.verify(issued.token)
    assert principal.user == "alice"
    assert principal.allows("deploy:production")
    assert not principal.allows("deploy:development")
    assert principal.allows("gates:shop")
    assert not principal.allows("admin")


def test_only_a_hash_is_stored_and_issuing_is_audited(tokens: Tokens, state_path: Path) -> None:
    issued = tokens.issue("alice", permissions=["admin"], lifetime=0, actor="root")
    everything = git("log", "-p", "--all", "--format=%an %s", cwd=state_path)
    assert issued.token not in everything
    assert issued.token[4:] not in everything
    assert f"root issued token {issued.token_id} for alice (admin; without expiry)" in everything


def test_expired_token_is_refused_with_its_kind(tokens: Tokens, clock: Clock) -> None:
    issued = tokens.issue("bob", permissions=["deploy:*"], lifetime="30m", actor="root")
    clock.now += 29 * 60
    assert tokens.verify(issued.token).user == "bob"
    clock.now += 2 * 60
    with pytest.raises(TokenExpired) as caught:
        tokens.verify(issued.token)
    assert caught.value.kind == "puppetlabs.rbac/token-expired"
    assert caught.value.status == 401
    assert str(caught.value) == "The provided token has expired."


def test_revoked_and_unknown_tokens_are_refused(tokens: Tokens, state_path: Path) -> None:
    issued = tokens.issue("carol", permissions=["gates:*"], actor="root")
    record = tokens.revoke(issued.token_id, actor="root")
    assert record["revoked_by"] == "root"
    with pytest.raises(TokenRevoked) as caught:
        tokens.verify(issued.token)
    assert caught.value.status == 401
    with pytest.raises(InvalidToken):
        tokens.verify("gst_" + "A" * 43)
    with pytest.raises(Unauthenticated):
        tokens.verify(None)
    log = git("log", "-1", "--format=%s", "state", cwd=state_path)
    assert log.strip() == f"root revoked token {issued.token_id} of carol"


def test_list_shows_records_without_secrets(tokens: Tokens, clock: Clock) -> None:
    first = tokens.issue("alice", permissions=["admin"], actor="root")
    clock.now += 1
    tokens.issue("bob", permissions=[], actor="root")
    listed = tokens.list()
    assert [record["user"] for record in listed] == ["alice", "bob"]
    assert listed[0]["id"] == first.token_id
    assert all(first.token not in str(record) for record in listed)


@pytest.mark.parametrize(
    ("user", "permissions", "lifetime", "message"),
    [
        ("alice", ["root"], "1h", "unknown permission"),
        ("alice", ["deploy:../x"], "1h", "unknown permission"),
        ("al ice", ["admin"], "1h", "user name"),
        ("alice", ["admin"], "soon", "not a duration"),
        ("alice", ["admin"], "20000d", "between"),
    ],
)
def test_bad_requests_are_refused_and_write_nothing(
    tokens: Tokens, user: str, permissions: list[str], lifetime: str, message: str
) -> None:
    with pytest.raises(TokenRequestError, match=message):
        tokens.issue(user, permissions=permissions, lifetime=lifetime, actor="root")
    assert tokens.store.head() is None


def test_revoke_needs_an_unambiguous_id(tokens: Tokens) -> None:
    with pytest.raises(TokenRequestError):
        tokens.revoke("zz", actor="root")
    with pytest.raises(TokenRequestError, match="0 tokens"):
        tokens.revoke("deadbeef", actor="root")


def test_permission_denied_names_what_was_refused() -> None:
    principal = Principal("dave", frozenset({"deploy:development"}))
    principal.require("deploy:development", "deploy development")
    with pytest.raises(PermissionDenied) as caught:
        principal.require("deploy:production", "deploy production")
    assert caught.value.status == 403
    assert caught.value.kind == "puppetlabs.rbac/permission-denied"
    assert "deploy:production" in str(caught.value)
    assert Principal("root", frozenset({"admin"})).allows("gates:anything")


def test_cli_issues_lists_and_revokes(tmp_path: Path) -> None:
    import sys

    config = tmp_path / "gitstate.yaml"
    config.write_text("datadir: data\n")
    out = tmp_path / "token"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gitstate", "token", *args, "--config", str(config)],
            capture_output=True,
            text=True,
        )

    created = cli(
        "create", "--user", "ci", "--permission", "deploy:*", "--lifetime", "2h", "--out", str(out)
    )
    assert created.returncode == 0, created.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    token = out.read_text().strip()
    tokens = Tokens(Store(tmp_path / "data" / "state.git", create=False))
    principal = tokens.verify(token)
    assert (principal.user, principal.allows("deploy:production")) == ("ci", True)
    listed = cli("list")
    assert principal.token_id in listed.stdout
    assert token not in listed.stdout
    assert cli("revoke", principal.token_id).returncode == 0
    with pytest.raises(TokenRevoked):
        tokens.verify(token)
    bad = cli("create", "--user", "x", "--permission", "root")
    assert bad.returncode == 1
    assert "unknown permission" in bad.stderr
