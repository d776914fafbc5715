"""``gitstate demo`` end to end: real gunicorn, deploy workers, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
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
        # The demo pushes a second version of production (a rollback target):
        # wait (bounded) until that one is deployed too.
        until = time.monotonic() + 300
        while True:
            control = pygit2.Repository(str(directory / "repos" / "control.git"))
            tip = str(control.branches["production"].target)
            production = next(d for d in deployed if d["environment"] == "production")
            versions = git("rev-list", "--count", "production", cwd=control.path).strip()
            done = versions == "2" and production["deploy-signature"] == tip
            if done or time.monotonic() > until:
                break
            time.sleep(0.2)
            deployed = _deployed(base, 3, admin)
        assert (versions, production["deploy-signature"]) == ("2", tip)

        # The config holds the file-sync token, the token file an admin token.
        for secret in ("gitstate.yaml", "token"):
            assert (directory / secret).stat().st_mode & 0o777 == 0o600, secret

        token = ["--token-file", str(directory / "token")]
        refused = _cli(
            "deploy", "production", "--service-url", base, "--token-file", "/nonexistent"
        )
        assert refused.returncode == 1
        assert "/nonexistent does not exist" in refused.stderr
        assert "gitstate token create" in refused.stderr
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


# -- what a person sees, and the hints it prints -----------------------------------------


class _Running:
    """A ``gitstate demo`` whose output is read as it comes."""

    def __init__(self, directory: Path, port: int) -> None:
        self.proc = _start(directory, port)
        self.lines: list[str] = []
        self.reader = threading.Thread(
            target=lambda: self.lines.extend(self.proc.stdout or []), daemon=True
        )
        self.reader.start()

    def until_ready(self) -> str:
        """Wait (bounded) for the hints; return the output so far."""
        until = time.monotonic() + 300  # bounds a broken demo, times nothing
        while not any(line.startswith("Press Ctrl-C") for line in self.lines):
            assert self.proc.poll() is None, "".join(self.lines)
            assert time.monotonic() < until, "".join(self.lines)
            time.sleep(0.2)
        return "".join(self.lines)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)
        self.reader.join(10)
        assert self.proc.returncode == 0, "".join(self.lines)
        return "".join(self.lines)


def _hints(out: str) -> list[str]:
    """Return the commands the demo told the user to try, as printed."""
    block = out.split("\nTry", 1)[1].split("Press Ctrl-C", 1)[0]
    return [line.strip() for line in block.splitlines()[1:] if line.startswith("  ")]


def _run_hints(hints: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Paste the hints, in order, into one bash; stop at the first that fails.

    curl exits 0 on an HTTP error, so it is made to fail on one here: the
    hint itself is run as printed.
    """
    script = "\n".join(
        [
            "set -euo pipefail",
            'curl() { command curl --fail-with-body -sS "$@"; }',
            "trap 'echo \"FAILED: $BASH_COMMAND\" >&2' ERR",
            *hints,
        ]
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("GITSTATE_URL", None)
    env.pop("GITSTATE_TOKEN_FILE", None)
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _terminal_is_for_a_person(out: str) -> None:
    assert not [line for line in out.splitlines() if line.lstrip().startswith("{")], out
    assert "sync failed" not in out, out
    assert "Connection refused" not in out, out
    assert "exited with" not in out, out


def test_the_terminal_is_for_a_person_and_every_hint_works(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    port = free_port()
    demo = _Running(directory, port)
    try:
        out = demo.until_ready()
        _terminal_is_for_a_person(out)
        log_file = directory / "gitstate.log"
        assert f"logs (JSON lines):  {log_file}" in out
        # Said once, though every process that collects branches meets it.
        assert out.count('"feature/login-banner" contained non-word characters') == 1, out
        assert "deployed production at " in out
        assert "compiler: synced " in out
        hints = _hints(out)
        assert any(hint.startswith("gitstate rollback production") for hint in hints)
        work = tmp_path / "first"
        work.mkdir()
        ran = _run_hints(hints, work)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "production rolled back to " in ran.stdout
        assert "remote: gitstate: deployed try_me at " in ran.stderr
        assert "remote: gitstate: removed try_me" in ran.stderr
    finally:
        out = demo.stop()
    _terminal_is_for_a_person(out)
    assert "rolled production back to" in out  # the rollback, as a line on the terminal
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    loggers = {record.get("logger") for record in records}
    assert {"gitstate.access", "gitstate.process.supervisor"} <= loggers
    assert all("process" in record for record in records)

    # Again in the same folder: every hint works a second time.
    demo = _Running(directory, port)
    try:
        out = demo.until_ready()
        _terminal_is_for_a_person(out)
        work = tmp_path / "second"
        work.mkdir()
        ran = _run_hints(_hints(out), work)
        assert ran.returncode == 0, ran.stdout + ran.stderr
    finally:
        demo.stop()
