"""``gitstate demo`` serves health from real gunicorn workers and reuses its folder."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from gitstate.store import Store
from tests.helpers import free_port, wait_for_http


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


def test_demo_serves_health_and_reuses_its_folder(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    port = free_port()
    proc = _start(directory, port)
    try:
        answer = wait_for_http(f"http://127.0.0.1:{port}/internal/health")
        assert answer.status_code == 200
        assert answer.json() == {"status": "ok"}
        assert answer.headers["X-Gitstate-State"] == "none"
        missing = wait_for_http(f"http://127.0.0.1:{port}/no/such/thing")
        assert missing.status_code == 404
        assert missing.json()["status"] == "error"
    finally:
        out = _stop(proc)
    assert "health:" in out
    assert (directory / "data" / "state.git" / "HEAD").exists()

    # State written while the demo is down is there when it comes back.
    store = Store(directory / "data" / "state.git", create=False)
    done = store.transact(
        lambda d: d.put("note.yaml", {"schema_version": 1}), subject="note", operation="x"
    )
    proc = _start(directory, port)
    try:
        answer = wait_for_http(f"http://127.0.0.1:{port}/internal/health")
        assert answer.headers["X-Gitstate-State"] == done.commit
    finally:
        _stop(proc)
