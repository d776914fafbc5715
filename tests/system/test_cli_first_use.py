"""What a person meets first on the command line: help, tokens, lifetimes.

Every test runs the real ``gitstate`` command in a subprocess, with the
private HOME the conftest gives each test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from gitstate.auth import Tokens
from gitstate.base.times import parse_iso
from gitstate.store.branch import Store


def _gitstate(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gitstate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        # Wide enough that argparse does not wrap --help lines.
        env={**os.environ, "COLUMNS": "400", **(env or {})},
        cwd=cwd,
    )


def test_help_shows_the_defaults_and_their_environment_variables() -> None:
    env = {"GITSTATE_URL": "", "GITSTATE_TOKEN_FILE": ""}
    for command in ("deploy", "status", "rollback", "gate list"):
        shown = _gitstate(*command.split(), "--help", env=env)
        assert shown.returncode == 0, shown.stderr
        text = shown.stdout
        assert "default: http://127.0.0.1:8170" in text, command
        assert "default: ~/.gitstate/token" in text, command
        assert "$GITSTATE_URL" in text, command
        assert "$GITSTATE_TOKEN_FILE" in text, command


def test_environment_variables_set_the_defaults(tmp_path: Path) -> None:
    token = tmp_path / "my-token"
    env = {"GITSTATE_URL": "http://127.0.0.1:1", "GITSTATE_TOKEN_FILE": str(token)}
    shown = _gitstate("deploy", "--help", env=env)
    text = shown.stdout
    assert "default: http://127.0.0.1:1;" in text
    assert f"default: {token};" in text
    # Used, not only shown: nothing listens on port 1.
    out = _gitstate("status", env=env)
    assert out.returncode == 1
    assert "cannot reach http://127.0.0.1:1" in out.stderr
    # A flag wins over the environment.
    out = _gitstate("status", "--service-url", "http://127.0.0.1:2", env=env)
    assert "cannot reach http://127.0.0.1:2" in out.stderr


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "gitstate.yaml"
    config.write_text("datadir: data\nstate: {fsync: false}\n")
    return config


def test_a_lifetime_needs_a_unit(tmp_path: Path) -> None:
    config = _config(tmp_path)
    bare = _gitstate("token", "create", "--user", "ci", "--lifetime", "5", "--config", str(config))
    assert bare.returncode == 2
    assert "lifetime '5' has no unit" in bare.stderr
    for unit in ("30m", "12h", "7d", "1y", "300s"):
        assert unit in bare.stderr
    assert not (tmp_path / "data" / "state.git").exists() or "issued" not in _log(tmp_path)

    for given, seconds in (("30m", 1800), ("12h", 43200), ("7d", 604800), ("1y", 31536000)):
        made = _gitstate(
            "token", "create", "--user", "ci", "--lifetime", given, "--config", str(config)
        )
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip().splitlines()[-1]
        tokens = Tokens(Store(tmp_path / "data" / "state.git", create=False))
        record = next(r for r in tokens.list() if r["id"] == tokens.verify(token).token_id)
        lasts = parse_iso(record["expires_at"]) - parse_iso(record["created_at"])
        assert abs(lasts.total_seconds() - seconds) < 1, given
    never = _gitstate("token", "create", "--user", "ci", "--lifetime", "0", "--config", str(config))
    assert never.returncode == 0, never.stderr


def _log(tmp_path: Path) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(tmp_path / "data" / "state.git"), "log", "--format=%s", "state"],
        capture_output=True,
        text=True,
    ).stdout


def test_token_list_marks_expired_tokens(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert _gitstate("token", "list", "--config", str(config)).returncode == 0  # makes the repo
    store = Store(tmp_path / "data" / "state.git", create=False)
    hours_ago = Tokens(store, clock=lambda: time.time() - 7200)
    old = hours_ago.issue("old", permissions=[], lifetime="1h", actor="test")
    current = Tokens(store).issue("new", permissions=[], lifetime="1h", actor="test")
    forever = Tokens(store).issue("root", permissions=["admin"], lifetime=0, actor="test")
    listed = _gitstate("token", "list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    line = {
        word: next(line for line in listed.stdout.splitlines() if line.startswith(word))
        for word in (old.token_id, current.token_id, forever.token_id)
    }
    assert "EXPIRED" in line[old.token_id]
    assert "EXPIRED" not in line[current.token_id]
    assert "expires 20" in line[current.token_id]
    assert line[forever.token_id].endswith("never expires")
    assert datetime.now(UTC).year >= 2024  # the clock the test relies on is sane


def test_a_missing_token_file_is_named_with_how_to_make_one(tmp_path: Path) -> None:
    import http.server
    import threading

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.dumps(
                {
                    "kind": "puppetlabs.rbac/user-unauthenticated",
                    "msg": "Route requires authentication",
                }
            ).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        out = _gitstate("deploy", "production", "--service-url", url)
        assert out.returncode == 1
        home = os.environ["HOME"]
        assert f"~/.gitstate/token ({home}/.gitstate/token) does not exist" in out.stderr
        assert "gitstate token create" in out.stderr
        assert "--out ~/.gitstate/token" in out.stderr
        assert "Route requires authentication" not in out.stderr
        empty = tmp_path / "empty"
        empty.write_text("\n")
        out = _gitstate("deploy", "production", "--service-url", url, "--token-file", str(empty))
        assert f"{empty} is empty" in out.stderr
    finally:
        server.shutdown()
