"""``gitstate demo`` end to end: real gunicorn, deploy workers, the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pygit2
import requests

from tests.support.helpers import free_port, git, wait_for_http


def _start(directory: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gitstate", "demo", "--dir", str(directory), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def _deployed(base: str, count: int, token: str, timeout: float = 300.0) -> list[dict]:
    """Wait (bounded) until ``count`` environments are deployed; return them."""
    until = time.monotonic() + timeout
    while True:
        answer = requests.get(
            f"{base}/code-manager/v1/deploys/status",
            headers={"X-Authentication": token},
            timeout=10,
        )
        if answer.status_code == 503 and time.monotonic() < until:
            time.sleep(0.2)  # busy: a client retries, as Retry-After says
            continue
        assert answer.status_code == 200, answer.text
        deployed = answer.json()["file-sync-storage-status"]["deployed"]
        if len(deployed) >= count or time.monotonic() > until:
            return deployed
        time.sleep(0.2)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gitstate", *args], capture_output=True, text=True, timeout=300
    )


def test_demo_deploys_every_environment_and_the_cli_drives_it(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(directory, port)
    try:
        health = wait_for_http(f"{base}/internal/health")
        assert health.json() == {"status": "ok"}
        anonymous = requests.get(f"{base}/code-manager/v1/deploys/status", timeout=10)
        assert anonymous.status_code == 401  # Code Manager's reads need a token
        admin = (directory / "token").read_text().strip()
        deployed = _deployed(base, 3, admin)
        assert sorted(d["environment"] for d in deployed) == [
            "development",
            "feature_login_banner",
            "production",
        ]
        control = pygit2.Repository(str(directory / "repos" / "control.git"))
        production = next(d for d in deployed if d["environment"] == "production")
        assert production["deploy-signature"] == str(control.branches["production"].target)

        # The config holds the file-sync token, the token file an admin token.
        for secret in ("gitstate.yaml", "token"):
            assert (directory / secret).stat().st_mode & 0o777 == 0o600, secret

        token = ["--token-file", str(directory / "token")]
        refused = _cli(
            "deploy", "production", "--service-url", base, "--token-file", "/nonexistent"
        )
        assert refused.returncode == 1
        assert "Route requires authentication" in refused.stderr
        out = _cli("deploy", "production", "--wait", "--service-url", base, *token)
        assert out.returncode == 0, out.stderr
        first, rest = out.stdout.split("\n", 1)
        assert first == "Found 1 environments."
        (entry,) = json.loads(rest)
        assert entry["status"] == "complete"
        assert entry["deploy-signature"] == production["deploy-signature"]

        dry = _cli("deploy", "--dry-run", "--service-url", base, "--format", "json", *token)
        assert json.loads(dry.stdout) == [
            {"environment": "development"},
            {"environment": "feature_login_banner"},
            {"environment": "production"},
        ]
        status = _cli("status", "--service-url", base, *token)
        assert "deployed: 3" in status.stdout
        unknown = _cli("deploy", "nosuch", "--wait", "--service-url", base, *token)
        assert unknown.returncode == 3
        assert "cannot be found in any source" in unknown.stdout
    finally:
        out = _stop(proc)
    assert "Deployed 3 environments" in out
    history = git("log", "--format=%s", "state", cwd=directory / "data" / "state.git")
    assert "deploy #" in history

    # Run again: the folder is reused, history kept, nothing needs building.
    proc = _start(directory, port)
    try:
        wait_for_http(f"{base}/internal/health")
        assert len(_deployed(base, 3, admin)) == 3
    finally:
        _stop(proc)
    again = git("log", "--format=%s", "state", cwd=directory / "data" / "state.git")
    assert again.endswith(history)


def test_cli_reports_an_unreachable_server(tmp_path: Path) -> None:
    out = _cli("status", "--service-url", f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 1
    assert "cannot reach" in out.stderr
