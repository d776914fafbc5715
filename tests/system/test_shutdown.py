"""Stopping the server answers held long polls instead of cutting them off."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import requests

from gitstate.store.branch import Store
from tests.support.helpers import free_port, wait_for_http


def test_sigterm_answers_a_waiting_long_poll(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gitstate.yaml"
    config.write_text(
        json.dumps(
            {
                "datadir": str(tmp_path / "data"),
                "listen": f"127.0.0.1:{port}",
                "workers": 1,
                "threads": 2,
                "state": {"fsync": False},
            }
        )
    )
    store = Store(tmp_path / "data" / "state.git")
    head = store.transact(
        lambda d: d.put("x.yaml", {"schema_version": 1}), subject="seed", operation="x"
    ).commit
    proc = subprocess.Popen(
        [sys.executable, "-m", "gitstate", "web", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    answers: list[requests.Response | Exception] = []
    try:
        wait_for_http(f"{base}/internal/health")

        def poll() -> None:
            try:
                answers.append(
                    requests.get(
                        f"{base}/api/watch", params={"since": head, "timeout": 25}, timeout=60
                    )
                )
            except requests.RequestException as ex:
                answers.append(ex)

        waiter = threading.Thread(target=poll)
        waiter.start()
        # Let the poll reach the server and start waiting on the unchanged head.
        waiter.join(1.0)
        assert waiter.is_alive()
        proc.send_signal(signal.SIGTERM)
        waiter.join(60)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # gunicorn's graceful wait (10 s) is shorter than the poll (25 s): without
    # the stop flag the worker would be killed and the poll cut off.
    (answer,) = answers
    assert isinstance(answer, requests.Response), answer
    assert answer.status_code == 200
    assert answer.json()["commit"] == head
    assert answer.json()["changed"] is False
